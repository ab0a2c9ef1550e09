"""The Session's API for the run path (core.run): each call on its own,
and a check that that module uses it instead of reaching into the Session's private state."""

from __future__ import annotations

import ast
from pathlib import Path

from grouptun.core import counters as C, run
from grouptun.core.session import FETCH_INTERVAL, Session
from grouptun.core.peers import ROAM_HOLD
from grouptun.core.wire import wire_epoch

from .builders import endpoint, material


def _private_session_uses(path: Path) -> list[str]:
    """``session._x`` / ``self._session._x`` attribute reads in a module's source."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.Attribute) or not node.attr.startswith("_"):
            continue
        owner = node.value
        name = owner.id if isinstance(owner, ast.Name) else owner.attr if isinstance(owner, ast.Attribute) else ""
        if name in ("session", "_session"):
            found.append(f"{path.name}:{node.lineno} {name}.{node.attr}")
    return sorted(found)


def test_the_run_path_uses_no_private_session_state():
    assert _private_session_uses(Path(run.__file__)) == []


def test_the_checker_would_catch_a_private_use(tmp_path):
    sample = tmp_path / "bad.py"
    sample.write_text("def f(session, x):\n    session._keyring.sending(1)\n    x._session._rekey(1)\n")
    assert _private_session_uses(sample) == ["bad.py:2 session._keyring", "bad.py:3 _session._rekey"]


def _bob(epochs=(1,)) -> Session:
    bob = Session("bob")
    for epoch in epochs:
        bob.install_epoch(material("bob", epoch), float(epoch - 1))
    return bob


def test_empty_session_has_no_epoch_and_counts_unknown_ones():
    bob = Session("bob")
    assert bob.sending_epoch(0.0) is None and bob.epoch_for_wire(1, 0.0) is None
    bob.count_unknown_epoch(2, 0.0)
    assert bob.drops[C.UNKNOWN_EPOCH] == 1 and bob.take_requests() == set()  # no epoch: nothing is "next"


def test_epoch_for_wire_hides_the_previous_epoch_after_its_grace():
    bob = _bob((1, 2))
    old, new = bob._keyring.previous, bob._keyring.current
    assert bob.epoch_for_wire(new.wire, 1.5) is new and bob.epoch_for_wire(old.wire, 1.5) is old
    assert bob.sending_epoch(1.5) is old  # switch_delay (2 s) not over yet
    assert bob.sending_epoch(3.0) is new
    assert bob.epoch_for_wire(old.wire, 3.0 + new.grace) is None
    assert bob.epoch_for_wire(wire_epoch(new.wire + 5), 3.0) is None


def test_fetch_requested_for_the_next_epoch_at_most_once_per_interval():
    bob = _bob()
    following = wire_epoch(bob._keyring.current.wire + 1)
    bob.count_unknown_epoch(wire_epoch(following + 1), 0.0)  # not the next one: counted only
    assert bob.take_requests() == set()
    bob.count_unknown_epoch(following, 1.0)
    bob.count_unknown_epoch(following, 1.0 + FETCH_INTERVAL / 2)
    assert bob.take_requests() == {"fetch"}
    bob.count_unknown_epoch(following, 1.0 + FETCH_INTERVAL / 2)
    assert bob.take_requests() == set()
    bob.count_unknown_epoch(following, 1.0 + FETCH_INTERVAL)
    assert bob.take_requests() == {"fetch"} and bob.drops[C.UNKNOWN_EPOCH] == 5


def test_rekey_requested_once_per_reason_and_only_for_the_current_epoch():
    bob = _bob((1, 2))
    old, new = bob._keyring.previous, bob._keyring.current
    bob.request_rekey(old, "time")
    assert bob.take_requests() == set()
    bob.request_rekey(new, "time")
    bob.request_rekey(new, "time")
    bob.request_rekey(new, "packets")
    assert bob.take_requests() == {"rekey:time", "rekey:packets"}
    bob.request_rekey(new, "time")
    assert bob.take_requests() == set()


def test_auth_failures_are_counted_per_epoch():
    bob = _bob()
    state = bob._keyring.current
    bob.count_auth_failure(state)
    bob.count_auth_failure(state)
    assert bob.drops[C.AUTH] == 2 and state.auth_failures == 2 and bob.take_requests() == set()


def test_record_authenticated_roams_starts_sending_and_asks_for_a_rekey():
    bob = _bob((1, 2))
    new = bob._keyring.current
    assert bob.sending_epoch(0.5) is not new  # within switch_delay
    alice_index = next(m.index for m in new.by_index if m.name == "alice")
    roamed = ("127.0.0.1", 50000)
    peer = bob.record_authenticated(new, alice_index, new.rekey_after_packets, roamed, 0.75)
    assert peer is bob.peer("alice") and peer.endpoint == roamed and peer.last_seen == 0.75
    assert peer.rx_packets == 0  # the caller's to add
    assert bob.sending_epoch(0.75) is new and new.send_started == 0.75
    assert bob.take_requests() == {"rekey:packets"}
    peer = bob.record_authenticated(new, alice_index, 0, endpoint("alice"), 0.8)
    assert peer.endpoint == roamed and bob.take_requests() == set()  # the new endpoint spoke 0.05 s ago: held
    peer = bob.record_authenticated(new, alice_index, 1, endpoint("alice"), 0.75 + ROAM_HOLD)
    assert peer.endpoint == endpoint("alice")  # silent for ROAM_HOLD: the next source takes over
