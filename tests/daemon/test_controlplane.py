"""Control path against a fake provider with real crypto: start rule, refusals, backoff, watch."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from grouptun.controlplane import Backoff, ControlPlane
from grouptun.core.session import Session
from grouptun.errors import EpochRejected, ProviderError, ProviderRefused
from grouptun.statefile import EpochStateFile

from .fakes import CREDENTIAL, FakeProvider


class DirectPort:
    """SessionPort without an event loop; remembers what the statefile said at install time."""

    def __init__(self, session: Session, statefile: EpochStateFile, group_id: bytes) -> None:
        self.session, self.statefile, self.group_id = session, statefile, group_id
        self.recorded_at_install: list[tuple[int, int]] = []
        self.extra_requests: set[str] = set()

    def install(self, material) -> None:
        self.recorded_at_install.append((material.epoch, self.statefile.highest(self.group_id)))
        self.session.install_epoch(material, time.monotonic())

    def take_requests(self) -> set[str]:
        out = self.session.take_requests() | self.extra_requests
        self.extra_requests = set()
        return out

    def packets_sent(self) -> dict[int, int]:
        return self.session.packets_sent()


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
                    credential=bytearray(CREDENTIAL), pinned=provider.keys, group_id=provider.group_id,
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


def test_wrong_credential_is_a_refusal_by_the_provider(world):
    provider, statefile, session, port, make = world
    cp = make(credential=bytearray(b"wrong credential"))
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
    assert cp._pending == set()
