"""Watch hub, start batching and the time-threshold ticker (the provider's background work).

Change notification: a poller reads every group's version from the DB at
once after this process's own writes and after every change another
process made: on PostgreSQL a thread LISTENs on ``CHANGE_CHANNEL`` (every
write of any replica or admin command NOTIFYs at commit), with a poll every
``PG_POLL_INTERVAL`` as a fallback while that connection is down; on SQLite
(one server, admin commands on the same file) a poll every
``POLL_INTERVAL``. Either way a change reaches watchers within ~0.2 s.
Watchers wait on one asyncio Event per group (no thread per watcher).

Replicas: start batches are per process, but every start is in the
database before its batch runs, so one replica's epoch lists the starts
that reached the others within the window (``Provider.start``). The timers
run on one replica at a time (``TimerLeadership``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError
from starlette.concurrency import run_in_threadpool

from provider import linkremove, membership
from provider.encoding import GzipCache
from provider.errors import ProviderFault
from provider.service import Opened, Provider
from provider.store import CHANGE_CHANNEL, SERVER_APPLICATION, TIMER_LOCK_KEY, Store

log = logging.getLogger("grouptun.provider")

POLL_INTERVAL = 0.2
PG_POLL_INTERVAL = 5.0  # LISTEN/NOTIFY tells us at once; this only covers a lost listening connection
LISTEN_RECONNECT = 1.0
START_WINDOW = 0.2
TICK_INTERVAL = 1.0
MAX_CHALLENGES_PER_EPOCH = 256


@dataclass
class _GroupState:
    version: int = 0
    archive: bytes | None = None
    compact: bytes | None = None  # the same version's compact form (the full one where none is stored)
    event: asyncio.Event = field(default_factory=asyncio.Event)

    def form(self, compact: bool) -> bytes | None:
        return self.compact if compact else self.archive


class Hub:
    """Per-group archive cache and change events, fed by polling the DB."""

    def __init__(self, provider: Provider, gzip: GzipCache | None = None) -> None:
        self.provider = provider
        self.gzip = gzip if gzip is not None else GzipCache()
        self.groups: dict[str, _GroupState] = {}
        self._kick = asyncio.Event()
        self.released = False  # the server is stopping: long-polls answer "unchanged" at once

    def release(self) -> None:
        """End every parked long-poll now (server shutdown) and every later one at once."""
        self.released = True
        for state in self.groups.values():
            state.event.set()

    def kick(self) -> None:
        self._kick.set()

    async def refresh(self) -> None:
        versions = await run_in_threadpool(self.provider.store.group_versions)
        for name, version in versions.items():
            state = self.groups.setdefault(name, _GroupState())
            if state.version != version:
                state.version, state.archive, state.compact = await run_in_threadpool(
                    self.provider.store.archive_forms, name)
                for form in (False, True):  # once per version and form, before the fan-out (provider/encoding.py)
                    if state.form(form) is not None:
                        await run_in_threadpool(self.gzip.body, (name, form), state.version, state.form(form))
                state.event.set()
                state.event = asyncio.Event()

    async def run(self) -> None:
        store = self.provider.store
        listener, interval = None, POLL_INTERVAL
        if store.postgres:
            loop = asyncio.get_running_loop()
            listener = ChangeListener(store, lambda: loop.call_soon_threadsafe(self._kick.set))
            listener.start()
            interval = PG_POLL_INTERVAL
        try:
            while True:
                self._kick.clear()
                try:
                    await self.refresh()
                except Exception:  # noqa: BLE001 -- keep notifying; the DB may be briefly locked
                    log.exception("change poll failed")
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._kick.wait(), interval)
        finally:
            if listener is not None:
                listener.stop()

    def current(self, group: str, compact: bool = False) -> tuple[int, bytes] | None:
        """(version, archive in the form asked for) as this hub last read them (None: nothing yet); the
        caller checks the version."""
        state = self.groups.get(group)
        raw = None if state is None else state.form(compact)
        return None if raw is None else (state.version, raw)

    async def wait_change(self, group: str, version: int, timeout: float,
                          compact: bool = False) -> tuple[int, bytes] | None:
        """(newer version, its archive in the form asked for) as soon as there is one; None after ``timeout``
        or at shutdown."""
        deadline = time.monotonic() + timeout
        while True:
            state = self.groups.setdefault(group, _GroupState())
            # Only a newer version answers: a member that saw a version this database does
            # not have (restored from an older backup) waits for the next change.
            if state.version > version and state.form(compact) is not None:
                return state.version, state.form(compact)
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.released:
                return None
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(state.event.wait(), remaining)


class ChangeListener:
    """A thread LISTENing on ``CHANGE_CHANNEL`` on a psycopg connection of its own; ``kick()`` per notification
    (and once per (re)connection: changes made while it was not listening). Reconnects every
    ``LISTEN_RECONNECT`` seconds while the database is away; ``stop()`` ends it within about that time."""

    def __init__(self, store: Store, kick: Callable[[], None]) -> None:
        _args, self._params = store.engine.dialect.create_connect_args(store.engine.url)
        self._name = store.application or SERVER_APPLICATION
        self._kick = kick
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="provider-listen", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()

    def _notify(self) -> None:
        try:
            self._kick()
        except RuntimeError:  # the event loop closed under us: the server is stopping
            self._stopped.set()

    def _run(self) -> None:
        import psycopg  # noqa: PLC0415 -- PostgreSQL only

        while not self._stopped.is_set():
            try:
                with psycopg.connect(**{"connect_timeout": 10, **self._params}, autocommit=True,
                                     application_name=self._name) as conn:
                    conn.execute(f"LISTEN {CHANGE_CHANNEL}")
                    self._notify()
                    while not self._stopped.is_set():
                        if any(True for _ in conn.notifies(timeout=LISTEN_RECONNECT, stop_after=256)):
                            self._notify()
            except psycopg.Error as exc:
                log.warning("change listener: %s (reconnecting; polling meanwhile)", exc)
                self._stopped.wait(LISTEN_RECONNECT)


class TimerLeadership:
    """Whether this process runs the timers (thresholds, retention): on PostgreSQL the replica holding a
    session advisory lock (``TIMER_LOCK_KEY``) on a connection of its own; when that replica dies its
    connection goes, and the next replica to ask takes over. SQLite: always (one server per state dir)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._conn: Connection | None = None

    def held(self) -> bool:
        if not self.store.postgres:
            return True
        if self._conn is not None:
            try:
                self._conn.execute(text("SELECT 1"))
                self._conn.commit()
                return True
            except DBAPIError:
                self.release()
        conn = self.store.engine.connect()
        try:
            got = conn.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": TIMER_LOCK_KEY}).scalar_one()
            conn.commit()  # end the implicit transaction; the session lock outlives it
        except DBAPIError:
            conn.invalidate()
            conn.close()
            raise
        if not got:
            conn.close()
            return False
        self._conn = conn
        return True

    def release(self) -> None:
        """Drop the lock with its connection (invalidated: a pooled connection would keep the lock)."""
        if self._conn is not None:
            self._conn.invalidate()
            self._conn.close()
            self._conn = None


class StartBatcher:
    """Starts within START_WINDOW of the first one share one new epoch -- of different members only.

    A member already in the collecting batch with another challenge (a
    second daemon of the same member, PROTOCOL.md 4) opens the next batch:
    each start of a member gets an epoch of its own for its new instance.
    A group's batches run one after another, in arrival order, so the
    member's latest start is the one its last epoch names.
    """

    def __init__(self, provider: Provider, hub: Hub) -> None:
        self.provider, self.hub = provider, hub
        self.pending: dict[str, tuple[dict[str, bytes], asyncio.Future]] = {}  # group -> collecting batch
        self._last: dict[str, asyncio.Future] = {}  # group -> the batch that runs last

    async def start(self, group: str, member: str, challenge: bytes) -> Opened | None:
        batch = self.pending.get(group)
        if (batch is None or len(batch[0]) >= MAX_CHALLENGES_PER_EPOCH
                or batch[0].get(member, challenge) != challenge):
            batch = self._new_batch(group)
        batch[0][member] = challenge
        # In the database at once, not when the batch runs: an epoch another replica opens within the
        # window lists it (Provider.start records it again then, for callers without a batcher).
        await run_in_threadpool(self.provider.record_starts, group, {member: challenge})
        return await asyncio.shield(batch[1])

    def _new_batch(self, group: str) -> tuple[dict[str, bytes], asyncio.Future]:
        loop = asyncio.get_running_loop()
        batch, after = ({}, loop.create_future()), self._last.get(group)
        self.pending[group] = batch
        self._last[group] = batch[1]
        loop.call_later(START_WINDOW, lambda: asyncio.ensure_future(self._run(group, batch, after)))
        return batch

    async def _run(self, group: str, batch, after: asyncio.Future | None) -> None:
        if after is not None:
            await asyncio.wait([after])  # its outcome is its own waiters'
        if self.pending.get(group) is batch:
            del self.pending[group]
        starts, future = batch
        try:
            opened = await run_in_threadpool(self.provider.start, group, dict(starts))
            future.set_result(opened)
        except Exception as exc:  # noqa: BLE001 -- handed to every waiter
            future.set_exception(exc)
            future.add_done_callback(lambda f: f.exception())  # waiters may all be gone
        if self._last.get(group) is future:
            del self._last[group]
        self.hub.kick()


async def tick(provider: Provider, hub: Hub) -> None:
    """Open epochs whose time threshold passed (members also ask; whoever is first wins); remove expired
    members; prune the audit log.

    Only on the replica that holds the timers (``TimerLeadership``); the others ask again every tick,
    so when that one dies another takes over within a tick."""
    leadership = TimerLeadership(provider.store)
    try:
        while True:
            await asyncio.sleep(TICK_INTERVAL)
            try:
                leading = await run_in_threadpool(leadership.held)
            except Exception:  # noqa: BLE001 -- the database may be away; ask again next tick
                log.exception("timer leadership")
                continue
            if leading:
                await _run_timers(provider, hub)
    finally:
        leadership.release()


async def _run_timers(provider: Provider, hub: Hub) -> None:
    try:
        for group in await run_in_threadpool(provider.due_for_time_rekey):
            if await run_in_threadpool(provider.time_rekey, group):  # False: a member's rekey came first
                hub.kick()
    except ProviderFault as exc:
        log.warning("time rekey: %s", exc.reason)
    except Exception:  # noqa: BLE001 -- the ticker must survive a locked DB
        log.exception("time rekey failed")
    try:  # temporary members whose time ended: a new epoch without them (provider/membership.py)
        if await run_in_threadpool(membership.expire_due, provider):
            hub.kick()
    except Exception:  # noqa: BLE001 -- as above; the next tick tries again
        log.exception("member expiry failed")
    try:  # removals of our members from partners' groups the owner has not confirmed (provider/linkremove.py)
        if await run_in_threadpool(linkremove.retry_due, provider):
            hub.kick()
    except Exception:  # noqa: BLE001 -- as above; the row stays and the next tick tries again
        log.exception("link removal retry failed")
    try:
        await run_in_threadpool(provider.audit_pruner.maybe_prune)  # bounded: provider/retention.py
    except Exception:  # noqa: BLE001 -- as above; the next due run tries again
        log.exception("audit pruning failed")
