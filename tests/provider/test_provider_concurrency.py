"""Concurrent rekey requests: the coalescing decision is taken inside the epoch's transaction.

The interleaving that used to open two epochs (both requests read the old
epoch, then both open one) is forced with a barrier behind every
``store.read()``: no timing is asserted; the barrier's timeout only bounds a
hang.
"""

from __future__ import annotations

import contextlib
import threading
import time

import pytest
from sqlalchemy import func, select, text

from provider.store import Store
from provider.tables import epochs
from provider_helpers import STORE_KINDS, fresh_store
from test_provider_epochs import Fixture

BOUND = 20.0  # seconds: a deadlock guard, never reached when the code is right


@contextlib.contextmanager
def _reads_meet(store):
    """While inside: after each read transaction, wait until the other thread finished one too."""
    original, barrier = store.read, threading.Barrier(2)

    @contextlib.contextmanager
    def read():
        with original() as conn:
            yield conn
        barrier.wait(BOUND)

    store.read = read
    try:
        yield
    finally:
        store.read = original


def _race(fx: Fixture, call) -> list:
    """Run ``call()`` in two threads at once; their results (exceptions re-raised here)."""
    results: list = [None, None]
    start = threading.Barrier(2)

    def body(k: int) -> None:
        start.wait(BOUND)
        try:
            results[k] = call()
        except BaseException as exc:  # noqa: BLE001 -- handed to the test thread
            results[k] = exc

    threads = [threading.Thread(target=body, args=(k,), name=f"gt-prov-race-{k}") for k in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(BOUND * 3)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return results


def _epoch_count(fx: Fixture) -> int:
    with fx.store.read() as conn:
        return conn.execute(select(func.count()).select_from(epochs)).scalar_one()


@pytest.fixture(params=STORE_KINDS)
def fx(request):
    fixture = Fixture(fresh_store(request.param, request))
    fixture.enroll("alice")
    fixture.enroll("bob")
    yield fixture
    fixture.store.close()


def test_two_concurrent_member_rekeys_open_exactly_one_epoch(fx):
    fx.clock.t += 60  # the first epoch is old enough for a member rekey
    before = _epoch_count(fx)
    with _reads_meet(fx.store):
        opened = _race(fx, lambda: fx.provider.member_rekey("lan", "alice", "auth-failures"))
    assert sorted(opened) == [False, True]
    assert _epoch_count(fx) == before + 1
    rekeys = [r for r in fx.audit() if r.action == "rekey"]
    assert len(rekeys) == 1  # the coalesced request wrote nothing (its transaction rolled back)


def test_time_rekey_after_a_member_rekey_opens_nothing(fx):
    fx.clock.t += 61  # past rekey_after_seconds (60)
    assert fx.provider.due_for_time_rekey() == ["lan"]
    assert fx.provider.member_rekey("lan", "bob", "auth-failures")
    epoch = fx.archive().epoch.epoch
    assert fx.provider.time_rekey("lan") is False  # the ticker's read was stale: not due any more
    assert fx.archive().epoch.epoch == epoch
    fx.clock.t += 61
    assert fx.provider.time_rekey("lan") is True


def test_two_concurrent_time_rekeys_open_exactly_one_epoch(fx):
    fx.clock.t += 61
    before = _epoch_count(fx)
    assert _race(fx, lambda: fx.provider.time_rekey("lan")) in ([True, False], [False, True])
    assert _epoch_count(fx) == before + 1


def test_postgres_writers_of_two_engines_take_turns(pg_server):
    """Two Stores (the server and an admin CLI process) serialise their writes on the advisory lock."""
    first = Store(None, url=pg_server.new_database())
    first.create_schema()
    second = Store(None, url=first.engine.url)
    holding, release, wrote = threading.Event(), threading.Event(), threading.Event()

    def hold() -> None:
        with first.write():
            holding.set()
            assert release.wait(BOUND)

    def write() -> None:
        with second.write():
            wrote.set()

    threads = [threading.Thread(target=hold, name="gt-prov-hold"), threading.Thread(target=write, name="gt-prov-w")]
    threads[0].start()
    try:
        assert holding.wait(BOUND)
        threads[1].start()
        waiting = 0
        for _ in range(200):  # bounded: until PostgreSQL shows the second writer queued on the lock
            with first.engine.connect() as conn:
                waiting = conn.execute(text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                                            "AND NOT granted")).scalar_one()
            if waiting:
                break
            time.sleep(0.05)
        assert waiting == 1 and not wrote.is_set()
    finally:
        release.set()
        for t in threads:
            if t.is_alive() or t.ident is not None:
                t.join(BOUND)
        second.close()
        first.close()
    assert wrote.is_set()
