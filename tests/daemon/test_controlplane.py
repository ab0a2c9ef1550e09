"""Control path against a fake provider with real crypto: start rule, refusals, backoff, watch."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time

import pytest

from grouptun.control.backoff import Backoff
from grouptun.control.plane import ControlPlane
from grouptun.core.session import Session
from grouptun.cli.status import format_status
from grouptun.control.credmigrate import SaltProof
from grouptun.errors import (EpochRejected, InstanceSuperseded, LoopUnavailable, ProviderError, ProviderRefused,
                             StateDirFull)
from grouptun.control.statefile import EpochStateFile

from .fakes import FakeProvider, FullDisk, proof


class DirectPort:
    """SessionPort without an event loop; remembers what the statefile said at install time.

    Installs of the epochs in ``stalled`` time out as LoopPort's do when the
    loop never got to them: the material is wiped, nothing is installed.
    """

    def __init__(self, session: Session, statefile: EpochStateFile, group_id: bytes) -> None:
        self.session, self.statefile, self.group_id = session, statefile, group_id
        self.recorded_at_install: list[tuple[int, int]] = []
        self.extra_requests: set[str] = set()
        self.stalled: set[int] = set()
        self.stopped_sending = False

    def install(self, material) -> None:
        self.recorded_at_install.append((material.epoch, self.statefile.highest(self.group_id)))
        if material.epoch in self.stalled:
            material.wipe_secrets()
            raise LoopUnavailable("event loop did not answer within 10 s")
        self.session.install_epoch(material, time.monotonic())

    def take_requests(self) -> set[str]:
        out = self.session.take_requests() | self.extra_requests
        self.extra_requests = set()
        return out

    def packets_sent(self) -> dict[int, int]:
        return self.session.packets_sent()

    def update_endpoints(self, members) -> None:
        self.session.update_endpoints(members)

    def stop_sending(self) -> None:
        self.stopped_sending = True
        self.session.close()


class StopAfter(threading.Event):
    """A stop event that records each backoff delay and sets itself after ``n`` waits."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n, self.delays = n, []

    def wait(self, timeout=None):
        self.delays.append(timeout)
        if len(self.delays) >= self.n:
            self.set()
        return self.is_set()


@pytest.fixture
def world(tmp_path):
    provider = FakeProvider(["alice", "bob"])
    statefile = EpochStateFile(tmp_path / "epochs.json")
    session = Session("alice")
    port = DirectPort(session, statefile, provider.group_id)

    def make(**kw) -> ControlPlane:
        args = dict(client=provider.client("alice"), port=port, kem=provider.members["alice"].kem,
                    proof=proof(), pinned=provider.keys, group_id=provider.group_id,
                    member="alice", statefile=statefile, endpoints=lambda: ["127.0.0.1:51000"],
                    watch_timeout=0.05, backoff=Backoff(0.01, 0.04))
        args.update(kw)
        return ControlPlane(**args)

    return provider, statefile, session, port, make


def held_epochs(session: Session) -> list[int]:
    return sorted(e["epoch"] for e in session.status(time.monotonic())["epochs"])


def test_start_installs_an_epoch_listing_our_challenge_after_recording_it(world):
    provider, statefile, session, port, make = world
    cp = make()
    challenge = bytes(range(32))
    assert cp.start_once(challenge)
    assert ("alice", "start", challenge) in provider.calls
    assert held_epochs(session) == [1]
    assert statefile.highest(provider.group_id) == 1
    assert port.recorded_at_install == [(1, 1)]  # on disk BEFORE the session got it
    assert cp.state.epoch == 1 and cp.state.phase == "running" and cp.state.provider_ok


def test_start_refuses_an_epoch_without_our_challenge(world):
    provider, statefile, session, port, make = world
    provider.open_epoch([b"\x07" * 32])  # somebody else's start
    cp = make()
    with pytest.raises(EpochRejected) as info:
        cp.accept(provider.signed, challenge=b"\x01" * 32)
    assert info.value.step == "challenge"
    assert held_epochs(session) == [] and statefile.highest(provider.group_id) == -1


def test_never_an_epoch_at_or_below_the_recorded_one(world):
    provider, statefile, session, port, make = world
    statefile.record(provider.group_id, 5)
    cp = make()
    with pytest.raises(EpochRejected) as info:
        cp.start_once(b"\x02" * 32)  # the fake opens epoch 1 <= 5
    assert info.value.step == "epoch"
    assert held_epochs(session) == []


@pytest.mark.parametrize("tamper,step", [
    ("signature", "signature"), ("capsule", "capsule"), ("salt", "salt"), ("key_check", "key_check")])
def test_refusals_name_their_step_and_change_nothing(world, tamper, step):
    provider, statefile, session, port, make = world
    provider.tamper = tamper
    cp = make()
    with pytest.raises(EpochRejected) as info:
        cp.start_once(b"\x03" * 32)
    assert info.value.step == step
    assert held_epochs(session) == [] and statefile.highest(provider.group_id) == -1


def test_other_group_is_refused(world):
    provider, statefile, session, port, make = world
    cp = make(group_id=b"\xee" * 16)
    with pytest.raises(EpochRejected) as info:
        cp.start_once(b"\x04" * 32)
    assert info.value.step == "group_id"


def test_wrong_authenticator_is_a_refusal_by_the_provider(world):
    provider, statefile, session, port, make = world
    cp = make(proof=SaltProof(bytearray(32)))
    with pytest.raises(ProviderRefused):
        cp.start_once(b"\x05" * 32)
    assert held_epochs(session) == []


def test_run_logs_refusals_counts_them_and_backs_off(world, caplog):
    provider, statefile, session, port, make = world
    provider.tamper = "capsule"
    cp = make()
    stop = StopAfter(3)
    with caplog.at_level(logging.WARNING, logger="grouptun.control"):
        cp.run(stop)
    assert cp.state.refusals == {"capsule": 3}
    assert sum("refused at step 'capsule'" in r.getMessage() for r in caplog.records) == 3
    assert held_epochs(session) == []


def test_backoff_is_exponential_jittered_and_bounded():
    b = Backoff(base=1.0, cap=8.0)
    delays = [b.next() for _ in range(40)]
    for k, d in enumerate(delays):
        ceiling = min(8.0, 2.0 ** k)
        assert ceiling / 2 <= d <= ceiling
    assert max(delays) <= 8.0
    b.reset()
    assert b.next() <= 1.0


def test_provider_outage_keeps_the_epoch_and_backs_off_within_the_cap(world, caplog):
    provider, statefile, session, port, make = world
    cp = make()
    assert cp.start_once(b"\x06" * 32)
    provider.down = True
    stop = StopAfter(8)
    with caplog.at_level(logging.WARNING, logger="grouptun.control"):
        cp.run(stop)  # run() starts with a fresh challenge; the provider is down so it only backs off
    assert len(stop.delays) == 8 and max(stop.delays) <= 0.04
    assert not cp.state.provider_ok and "unreachable" in cp.state.last_error
    assert held_epochs(session) == [1]  # the data plane keeps its epoch
    assert sum("provider trouble" in r.getMessage() for r in caplog.records) == 1  # logged once, not per retry


def test_watch_installs_the_next_epoch_and_keeps_the_previous(world):
    provider, statefile, session, port, make = world
    cp = make()
    assert cp.start_once(b"\x08" * 32)
    provider.open_epoch()
    cp.step()
    assert held_epochs(session) == [1, 2]
    assert statefile.highest(provider.group_id) == 2
    assert port.recorded_at_install[-1] == (2, 2)


def test_same_epoch_new_version_installs_nothing(world):
    provider, statefile, session, port, make = world
    cp = make()
    assert cp.start_once(b"\x09" * 32)
    assert cp.accept(provider.signed) is False  # re-delivery of what we hold
    assert held_epochs(session) == [1] and len(port.recorded_at_install) == 1


def test_the_daemon_runs_on_compact_archives_and_still_takes_a_full_one(world):
    """PROTOCOL.md 2.2: start and watch answer the compact form (FakeClient, like ProviderClient(compact=True));
    it installs like the full one, and a provider that predates it (full archives only) is followed too."""
    provider, statefile, session, port, make = world
    cp = make()
    assert cp.start_once(b"\x0b" * 32)
    assert cp.archive is not None and cp.archive.compact and cp.archive.member("alice").kem_public is None
    assert cp.archive.member("alice").kem_matches(provider.members["alice"].kem_public)
    provider.serve_compact = False
    provider.open_epoch()
    cp.step()
    assert held_epochs(session) == [1, 2] and not cp.archive.compact
    provider.serve_compact = True
    provider.tamper = "signature"  # the compact form is held to the same signature step
    provider.open_epoch()
    with pytest.raises(EpochRejected, match="signature"):
        cp.accept(provider.served())
    assert held_epochs(session) == [1, 2]


def test_requests_are_forwarded_and_reports_sent(world):
    provider, statefile, session, port, make = world
    cp = make()
    assert cp.start_once(b"\x0a" * 32)
    port.extra_requests = {"rekey:time"}
    cp.step()
    assert ("alice", "rekey", "time") in provider.calls
    reports = [c for c in provider.calls if c[1] == "report"]
    assert reports and reports[0][2] == ("127.0.0.1:51000",) and 1 in reports[0][3]
    assert held_epochs(session) == [1, 2]  # the fake opened epoch 2 on rekey; watch delivered it


def test_failed_rekey_request_is_kept_for_the_next_round(world):
    provider, statefile, session, port, make = world
    cp = make()
    assert cp.start_once(b"\x0b" * 32)
    port.extra_requests = {"rekey:packets"}
    provider.down = True
    with pytest.raises(ProviderError):
        cp.step()
    provider.down = False
    cp.step()
    assert ("alice", "rekey", "packets") in provider.calls


def test_refused_rekey_and_report_do_not_block_the_watch(world, caplog):
    provider, statefile, session, port, make = world
    cp = make()
    assert cp.start_once(b"\x0c" * 32)
    client = cp.client

    def refuse(*args):
        raise ProviderRefused(429, "rate limited")

    client.rekey = refuse
    client.report = refuse
    port.extra_requests = {"rekey:time"}
    provider.open_epoch()  # meanwhile somebody else's rekey opened epoch 2
    with caplog.at_level(logging.WARNING, logger="grouptun.control"):
        cp.step()
    assert held_epochs(session) == [1, 2]
    assert any("not granted" in r.getMessage() for r in caplog.records)
    assert cp.requests.pending == set()


# --- groups below 2 members (PROTOCOL.md 1, 4) ------------------------------------------------


def wait_until(predicate, bound: float = 20.0) -> bool:
    """Poll ``predicate`` (bounded); the bound is a liveness limit, not a timing assertion."""
    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def solo_control(provider: FakeProvider, statefile: EpochStateFile, session: Session, **kw) -> ControlPlane:
    args = dict(client=provider.client("alice"), port=DirectPort(session, statefile, provider.group_id),
                kem=provider.members["alice"].kem, proof=proof(), pinned=provider.keys,
                group_id=provider.group_id, member="alice", statefile=statefile,
                endpoints=lambda: ["127.0.0.1:51000"], watch_timeout=0.05, backoff=Backoff(0.01, 0.04),
                request_interval=0.01)
    return ControlPlane(**{**args, **kw})


@pytest.fixture
def solo(tmp_path):
    provider = FakeProvider(["alice"])
    statefile = EpochStateFile(tmp_path / "epochs.json")
    session = Session("alice")
    return provider, statefile, session, solo_control(provider, statefile, session)


def test_one_member_group_waits_quietly_then_installs_the_epoch_listing_its_challenge(solo, caplog):
    provider, statefile, session, cp = solo
    stop = threading.Event()
    thread = threading.Thread(target=cp.run, args=(stop,))
    with caplog.at_level(logging.INFO, logger="grouptun.control"):
        thread.start()
        try:
            assert wait_until(lambda: cp.state.phase == "waiting for members")
            assert wait_until(lambda: sum(c[1] == "watch" for c in provider.calls) >= 5)  # a few rounds
            provider.add_member("bob")  # the group's first epoch lists the pending challenge
            assert wait_until(lambda: held_epochs(session) == [1])
        finally:
            stop.set()
            thread.join(10)
    starts = [c for c in provider.calls if c[1] == "start"]
    assert len(starts) == 1 and starts[0][2] in provider.current.challenges
    assert cp.state.phase == "running" and cp.state.refusals == {}
    messages = [r.getMessage() for r in caplog.records]
    assert sum("waiting for a second member" in m for m in messages) == 1  # once, not per attempt
    assert not any(r.levelno >= logging.WARNING for r in caplog.records)


def test_epoch_without_our_challenge_makes_the_daemon_start_again(solo):
    provider, statefile, session, cp = solo
    challenge = b"\x21" * 32
    assert cp.start_once(challenge) is False and cp.state.phase == "waiting for members"
    assert cp.start_once(challenge) is False  # the epoch-less archive: still waiting
    provider.pending.clear()  # as after a provider restart: our pending challenge is lost
    provider.add_member("bob")
    assert cp.start_once(challenge) is False  # epoch 1 does not list it: not used
    assert held_epochs(session) == [] and statefile.highest(provider.group_id) == -1
    assert cp.start_once(challenge) is True  # a new start: epoch 2 lists it
    assert held_epochs(session) == [2]
    assert [c[1] for c in provider.calls].count("start") == 2


@pytest.mark.parametrize("fault", ["expired", "group_id"])
def test_waiting_start_checks_expiry_and_group_before_recording_an_epoch(solo, fault):
    """An epoch without our challenge, met while waiting, passes the same checks as accept() before use."""
    provider, statefile, session, _ = solo
    applied = []
    kw = {"wall": lambda: time.time() + 7200} if fault == "expired" else {"group_id": b"\xee" * 16}
    cp = solo_control(provider, statefile, session, on_archive=applied.append, **kw)
    challenge = b"\x26" * 32
    assert cp.start_once(challenge) is False and cp.state.phase == "waiting for members"
    provider.pending.clear()  # our challenge is lost: the group's first epoch will not list it
    provider.add_member("bob")
    with pytest.raises(EpochRejected) as info:
        cp.start_once(challenge)
    assert info.value.step == fault
    assert cp.archive is None and cp.state.archive_version is None and applied == []


def test_start_with_a_challenge_never_takes_an_epoch_less_archive(solo):
    provider, statefile, session, cp = solo
    with pytest.raises(EpochRejected) as info:
        cp.accept(provider.signed, challenge=b"\x22" * 32)
    assert info.value.step == "challenge"


# --- endpoints from the archive without a new epoch ---------------------------------------------


def test_session_update_endpoints_changes_only_named_known_peers():
    provider = FakeProvider(["alice", "bob"])
    session = Session("alice")
    from grouptun.core.archive import verify_archive  # noqa: PLC0415
    from grouptun.control.epochaccept import build_material, open_secrets  # noqa: PLC0415

    provider.open_epoch()
    archive = verify_archive(provider.signed, provider.keys)
    ss, salt = open_secrets(archive, "alice", provider.members["alice"].kem, provider.capsules[(1, "alice")],
                            provider.salts[(1, "alice")])
    session.install_epoch(build_material(archive, "alice", ss, salt), 0.0)
    from grouptun.core.session import MemberInfo  # noqa: PLC0415

    assert session.update_endpoints([
        MemberInfo("bob", 7, (), ("127.0.0.1", 7000)),      # index ignored: by name
        MemberInfo("alice", 0, (), ("127.0.0.1", 1)),       # ourselves: ignored
        MemberInfo("nobody", 3, (), ("127.0.0.1", 2)),      # unknown: ignored
    ]) == 1
    assert session.peer("bob").endpoint == ("127.0.0.1", 7000)
    assert session.update_endpoints([MemberInfo("bob", 1, (), None)]) == 0  # unknown endpoint: kept
    assert session.peer("bob").endpoint == ("127.0.0.1", 7000)
    assert session.status(0.0)["members"][1]["index"] in (0, 1)  # indices untouched


def test_archive_endpoint_change_reaches_the_running_session_roamed_kept_otherwise(world):
    provider, statefile, session, port, make = world
    cp = make()
    assert cp.start_once(b"\x23" * 32)
    assert session.peer("bob").endpoint == ("127.0.0.1", 51001)
    session.peer("bob").endpoint = ("127.0.0.1", 6000)  # as if bob roamed (authenticated packets)
    provider.publish()  # a new archive version, nothing changed for bob
    cp.step()
    assert session.peer("bob").endpoint == ("127.0.0.1", 6000)  # roamed endpoint kept
    provider.endpoints["bob"] = ("127.0.0.1:7000",)  # bob re-reported: the archive changes, same epoch
    provider.publish()
    cp.step()
    assert held_epochs(session) == [1]
    assert session.peer("bob").endpoint == ("127.0.0.1", 7000)


# --- rekey requests do not wait behind the long-poll --------------------------------------------


def test_rekey_request_is_forwarded_while_the_watch_is_parked(world):
    provider, statefile, session, port, make = world
    cp = make(watch_timeout=30.0, request_interval=0.05)
    provider.watch_cap = 30.0
    stop = threading.Event()
    thread = threading.Thread(target=cp.run, args=(stop,))
    thread.start()
    try:
        assert wait_until(lambda: held_epochs(session) == [1])
        provider.hold_watch.set()  # from now on the long-poll answers nothing for 30 s
        assert wait_until(lambda: provider.watching == 1)
        asked = time.monotonic()
        port.extra_requests = {"rekey:packets"}
        assert wait_until(lambda: ("alice", "rekey", "packets") in provider.calls, bound=10.0)
        print(f"rekey request reached the provider {1000 * (time.monotonic() - asked):.0f} ms after it was raised")
        assert provider.rekeys_during_watch == ["packets"]  # it did not wait for the long-poll to end
        assert not provider.release_watch.is_set()
    finally:
        stop.set()
        provider.release_watch.set()
        thread.join(10)
    assert not thread.is_alive()


# --- wire epoch collisions (PROTOCOL.md 5) ------------------------------------------------------


def test_epoch_with_the_held_wire_value_is_refused_and_a_rekey_requested(world):
    provider, statefile, session, port, make = world
    cp = make()
    assert cp.start_once(b"\x24" * 32)
    provider.open_epoch(number=1 + 2**16)  # same wire value as epoch 1
    with pytest.raises(EpochRejected) as info:
        cp.step()
    assert info.value.step == "epoch" and "wire value" in str(info.value)
    assert held_epochs(session) == [1] and statefile.highest(provider.group_id) == 1  # nothing recorded
    assert not any(c[1] == "capsule" and c[2] == 1 + 2**16 for c in provider.calls)  # refused before fetching
    cp.step()  # forwards the rekey; the fake opens the next number, which the watch installs
    assert ("alice", "rekey", "wire-collision") in provider.calls
    assert held_epochs(session) == [1, 2 + 2**16]


def test_report_carries_only_the_newest_epochs(world):
    """The session remembers ~10 epochs; the provider bounds a report body (it needs the current one)."""
    provider, statefile, session, port, make = world
    cp = make()
    assert cp.start_once(b"\x25" * 32)
    port.packets_sent = lambda: {e: e * 10 for e in range(1, 11)}
    cp.service_requests()
    report = [c for c in provider.calls if c[1] == "report"][-1]
    assert report[3] == {7: 70, 8: 80, 9: 90, 10: 100}


def test_salt_is_fetched_only_after_the_capsule_opened_and_data_id_matched():
    # PROTOCOL.md 2 order: the credential goes to the provider (salt request)
    # only for an epoch whose capsule opened to the published data_id.
    from grouptun.core.archive import verify_archive  # noqa: PLC0415
    from grouptun.control.epochaccept import open_secrets  # noqa: PLC0415

    provider = FakeProvider(["alice", "bob"])
    provider.open_epoch()
    archive = verify_archive(provider.signed, provider.keys)
    kem = provider.members["alice"].kem
    fetched = []

    def fetch_salt():
        fetched.append(1)
        return provider.salts[(1, "alice")]

    with pytest.raises(EpochRejected):
        open_secrets(archive, "alice", kem, provider.capsules[(1, "bob")], fetch_salt)  # not ours
    assert fetched == []
    ss, salt = open_secrets(archive, "alice", kem, provider.capsules[(1, "alice")], fetch_salt)
    assert fetched == [1] and len(ss) == 32 and len(salt) == 32


def test_a_capsule_that_does_not_open_sends_no_salt_request(world):
    provider, statefile, session, port, make = world
    provider.tamper = "capsule"
    cp = make()
    with pytest.raises(EpochRejected) as info:
        cp.start_once(b"\x09" * 32)
    assert info.value.step == "capsule"
    assert [c for c in provider.calls if c[1] == "capsule"]
    assert not [c for c in provider.calls if c[1] == "salt"]  # the credential never left


# --- install timeouts (the event loop did not take the epoch) -----------------------------------


def test_install_timeout_counts_the_recorded_epoch_as_held_and_asks_for_the_next(world):
    provider, statefile, session, port, make = world
    cp = make()
    assert cp.start_once(b"\x27" * 32)
    port.stalled = {2}
    provider.open_epoch()
    with pytest.raises(LoopUnavailable):
        cp.watch_once()
    assert statefile.highest(provider.group_id) == 2 and held_epochs(session) == [1]
    assert cp.held_epoch == 2  # epoch 2 can never be installed again: the statefile holds it
    cp.watch_once()  # the long-poll hands the same archive back: recorded, not refused as "not newer"
    assert cp.archive.epoch.epoch == 2 and cp.state.refusals == {}
    provider.endpoints["bob"] = ("127.0.0.1:7000",)  # bob re-reported: a new version of epoch 2's archive
    provider.publish()
    assert cp.accept(provider.signed) is False  # recorded, not refused as "not newer than 2"
    assert session.peer("bob").endpoint == ("127.0.0.1", 7000) and cp.state.refusals == {}
    cp.service_requests()
    assert ("alice", "rekey", "install-timeout") in provider.calls
    cp.watch_once()  # the fake opened epoch 3 on that rekey
    assert held_epochs(session) == [1, 3] and cp.held_epoch == 3


def test_install_timeout_at_start_starts_again_without_a_rekey(world):
    provider, statefile, session, port, make = world
    port.stalled = {1}
    cp = make()
    challenge = b"\x28" * 32
    with pytest.raises(LoopUnavailable):
        cp.start_once(challenge)
    assert cp.held_epoch == 1 and statefile.highest(provider.group_id) == 1 and held_epochs(session) == []
    assert cp.start_once(challenge)  # each start opens a new epoch: 2 lists the challenge
    assert held_epochs(session) == [2]
    cp.service_requests()
    assert not [c for c in provider.calls if c[1] == "rekey"]


def test_run_logs_a_stalled_loop_without_a_traceback_and_retries(world, caplog):
    provider, statefile, session, port, make = world
    port.stalled = {1, 2}
    cp = make()
    stop = StopAfter(2)
    with caplog.at_level(logging.INFO, logger="grouptun.control"):
        cp.run(stop)
    stalled = [r for r in caplog.records if "did not answer" in r.getMessage()]
    assert len(stalled) == 2 and all(r.levelno == logging.WARNING and not r.exc_info for r in stalled)
    assert "did not answer" in cp.state.last_error and len(stop.delays) == 2
    assert held_epochs(session) == [] and statefile.highest(provider.group_id) == 2


# --- request forwarding beside the watch ----------------------------------------------------------


class GatedRekey:
    """A client whose rekey call parks until released (a slow provider), counting the calls."""

    def __init__(self, inner) -> None:
        self.inner, self.rekeys = inner, []
        self.entered, self.release = threading.Event(), threading.Event()

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def rekey(self, reason: str) -> None:
        self.rekeys.append(reason)
        self.entered.set()
        assert self.release.wait(20), "never released"  # a hang guard, not a timing assert
        self.inner.rekey(reason)


def test_a_slow_rekey_call_holds_no_lock_and_a_concurrent_one_is_not_sent_twice(world):
    provider, statefile, session, port, make = world
    client = GatedRekey(provider.client("alice"))
    cp = make(client=client)
    assert cp.start_once(b"\x31" * 32)
    port.extra_requests = {"rekey:auth-failures"}
    first = threading.Thread(target=cp.service_requests, name="gt-cp-rekey")
    first.start()
    try:
        assert client.entered.wait(20)
        # While the provider call is under way the watch thread's lock is free ...
        assert cp.requests.lock.acquire(blocking=False)
        cp.requests.lock.release()
        cp.requests.queue("fetch")  # ... so it queues requests without waiting
        # ... and the same request, taken again meanwhile, is not forwarded a second time.
        port.extra_requests = {"rekey:auth-failures"}
        cp.service_requests()
    finally:
        client.release.set()
        first.join(20)
    assert not first.is_alive()
    assert client.rekeys == ["auth-failures"]
    assert [c for c in provider.calls if c[1] == "rekey"] == [("alice", "rekey", "auth-failures")]
    cp.service_requests()
    assert client.rekeys == ["auth-failures"]  # answered: nothing left pending


def test_a_failed_rekey_call_stays_pending_and_is_sent_again(world):
    provider, statefile, session, port, make = world
    cp = make()
    assert cp.start_once(b"\x32" * 32)
    port.extra_requests = {"rekey:auth-failures"}
    real = cp.client.rekey

    def down(reason):
        raise ProviderError("provider unreachable")

    cp.client.rekey = down
    with pytest.raises(ProviderError):
        cp.service_requests()
    cp.client.rekey = real
    cp.service_requests()
    assert [c for c in provider.calls if c[1] == "rekey"] == [("alice", "rekey", "auth-failures")]


# --- one running instance per member (PROTOCOL.md 4; issue 14, defect 2) ------------------------


def test_a_start_of_our_member_elsewhere_stops_sending_and_ends_the_control_path(world, caplog):
    """The second daemon of a copied config: the first installs nothing of it, stops sending, exits 76."""
    provider, statefile, session, port, make = world
    superseded = []
    cp = make(on_superseded=superseded.append)
    stop = threading.Event()
    thread = threading.Thread(target=cp.run, args=(stop,))
    with caplog.at_level(logging.INFO, logger="grouptun.control"):
        thread.start()
        try:
            assert wait_until(lambda: held_epochs(session) == [1])
            provider.client("bob").start(b"\x0b" * 32)  # another member's start: not ours to mind
            assert wait_until(lambda: held_epochs(session) == [1, 2])
            assert session.sending_epoch(time.monotonic() + 60) is not None
            provider.start_elsewhere("alice")  # epoch 3 names alice's new instance
            thread.join(20)
            assert not thread.is_alive()  # the control path ended by itself: stop was never set
        finally:
            stop.set()
            thread.join(10)
    assert [type(e) for e in superseded] == [InstanceSuperseded] and superseded[0].exit_code == 76
    assert port.stopped_sending and session.sending_epoch(time.monotonic() + 60) is None
    assert held_epochs(session) == [] and statefile.highest(provider.group_id) == 2
    assert not any(c[0] == "alice" and c[1] in ("capsule", "salt") and c[2] == 3 for c in provider.calls)
    assert cp.state.phase == "superseded" and "started elsewhere" in cp.state.last_error
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "'alice' was started elsewhere" in errors[0]


def test_a_re_signed_archive_naming_another_instance_also_stops_us(world):
    """Not only new epochs: any archive accepted after the start must still name our instance."""
    provider, statefile, session, port, make = world
    cp = make()
    assert cp.start_once(b"\x41" * 32)
    provider.publish()
    cp.watch_once()  # same epoch, same instance: recorded
    assert not port.stopped_sending
    provider.instances["alice"] = bytes(32)
    provider.publish()
    with pytest.raises(InstanceSuperseded):
        cp.watch_once()
    provider.instances["alice"] = None  # null is "not ours" too
    provider.publish()
    with pytest.raises(InstanceSuperseded):
        cp.accept(provider.signed)


def test_a_new_epoch_naming_another_instance_is_never_fetched_nor_recorded(world):
    provider, statefile, session, port, make = world
    cp = make()
    assert cp.start_once(b"\x42" * 32)
    provider.start_elsewhere("alice")
    with pytest.raises(InstanceSuperseded):
        cp.accept(provider.signed)
    assert held_epochs(session) == [1] and statefile.highest(provider.group_id) == 1
    assert ("alice", "capsule", 2) not in provider.calls
    fresh = make()  # a control path that made no start has no instance: nothing is its to install
    with pytest.raises(EpochRejected) as info:
        fresh.accept(provider.signed)
    assert info.value.step == "instance"


# --- a full state dir at an epoch switch (issue 14, defect 6) ------------------------------------


def test_a_full_state_dir_backs_off_like_an_unreachable_provider_and_status_says_so(tmp_path, caplog):
    provider, disk = FakeProvider(["alice", "bob"]), FullDisk()
    statefile = EpochStateFile(tmp_path / "epochs.json", write=disk.write)
    session = Session("alice")
    cp = ControlPlane(client=provider.client("alice"), port=DirectPort(session, statefile, provider.group_id),
                      kem=provider.members["alice"].kem, proof=proof(), pinned=provider.keys,
                      group_id=provider.group_id, member="alice", statefile=statefile, endpoints=lambda: [],
                      watch_timeout=0.05, backoff=Backoff(1.0, 60.0, rng=lambda: 1.0))
    assert cp.start_once(b"\x51" * 32)
    disk.full = True
    provider.open_epoch()  # the epoch switch finds the disk full
    stop = StopAfter(6)
    with caplog.at_level(logging.INFO, logger="grouptun.control"):
        cp.run(stop)  # a fresh start: every attempt fetches the salt, then cannot record
    assert stop.delays == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0]  # grows as for an unreachable provider
    assert disk.refused == 6 and [c[1] for c in provider.calls].count("salt") == 1 + 6
    assert held_epochs(session) == [1] and statefile.highest(provider.group_id) == 1
    assert cp.state.state_dir_full and "state dir full" in cp.state.last_error
    assert sum(r.levelno == logging.ERROR and "state dir full" in r.getMessage() for r in caplog.records) == 1
    text = format_status({"control": dataclasses.asdict(cp.state)})
    assert "state dir full" in text and "retrying in 32 s" in text
    disk.full = False
    assert cp.start_once(b"\x52" * 32)  # room again: the next attempt records and installs
    assert not cp.state.state_dir_full and "state dir full" not in format_status(
        {"control": dataclasses.asdict(cp.state)})
    cp.status.contact_ok()
    assert cp.backoff.attempt == 0  # provider answers reset the backoff again


def test_statefile_says_state_dir_full_only_for_a_full_disk(tmp_path):
    disk = FullDisk()
    sf = EpochStateFile(tmp_path / "epochs.json", write=disk.write)
    sf.record(b"\x00" * 16, 1)
    disk.full = True
    with pytest.raises(StateDirFull, match="state dir full"):
        sf.record(b"\x00" * 16, 2)
    assert sf.highest(b"\x00" * 16) == 1 and EpochStateFile(tmp_path / "epochs.json").highest(b"\x00" * 16) == 1


def test_a_refused_call_reaches_the_status_line_and_the_recovery_clears_it(world, caplog):
    provider, statefile, session, port, make = world
    provider.refusing = ProviderRefused(401, "signature not valid")
    troubles = []
    cp = make(on_trouble=troubles.append)
    with caplog.at_level(logging.WARNING, logger="grouptun.control"):
        cp.run(StopAfter(2))
    assert troubles == ["provider refused (401): signature not valid"] * 2
    assert any(r.levelno >= logging.WARNING and "401" in r.getMessage() for r in caplog.records)
    provider.refusing = None
    assert cp.start_once(b"\x06" * 32)
    assert troubles[-1] is None and held_epochs(session) == [1]
