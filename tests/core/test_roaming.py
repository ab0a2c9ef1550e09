"""The roaming rule (core.peers) against a racer: an outsider that resends copies of a member's
datagrams from its own address, faster than the originals arrive (RFC 9000 section 9.3.3).

Both receive forms are checked: one datagram (``on_datagram``) and a run (``open_run``).
"""

from __future__ import annotations

import pytest

from grouptun.core import counters as C
from grouptun.core.peers import ROAM_HOLD

from .builders import endpoint, ipv4, v4

RACER = ("192.0.2.66", 51820)
MOVED = ("192.0.2.7", 51820)


def _one(session, datagram, source, now):
    return session.on_datagram(datagram, source, now) is not None


def _batch(session, datagram, source, now):
    data = memoryview(bytes(datagram))
    out = memoryview(bytearray(len(data) + 15))
    return bool(session.open_run(data, len(data), source, now, out).packets(out))


FORMS = pytest.mark.parametrize("receive", [_one, _batch], ids=["datagram", "run"])


def _from_alice(sessions, now):
    (_, datagram), = sessions["alice"].on_tun_packet(ipv4(v4(1), v4(2)), now)
    return datagram


@FORMS
def test_copies_that_win_the_race_do_not_take_an_active_members_endpoint(group, receive):
    sessions, _ = group()
    bob = sessions["bob"]
    assert receive(bob, _from_alice(sessions, 1.0), endpoint("alice"), 1.0)
    for k in range(20):  # every datagram raced: the copy first, the original a few ms later
        now = 1.1 + k * 0.1
        datagram = _from_alice(sessions, now)
        assert receive(bob, datagram, RACER, now)  # fresh and authentic: delivered, but no move
        assert not receive(bob, datagram, endpoint("alice"), now + 0.003)  # the duplicate
    peer = bob.peer("alice")
    assert peer.endpoint == endpoint("alice")
    assert (peer.roams, peer.roams_held) == (0, 20)
    assert bob.drops[C.REPLAY] == 20
    assert bob.on_tun_packet(ipv4(v4(2), v4(1)), 5.0)[0][0] == endpoint("alice")


@FORMS
def test_a_move_won_by_a_racer_after_silence_is_undone_by_the_original(group, receive):
    sessions, _ = group()
    bob = sessions["bob"]
    assert receive(bob, _from_alice(sessions, 1.0), endpoint("alice"), 1.0)
    datagram = _from_alice(sessions, 10.0)  # alice was silent for 9 s: the copy may move the endpoint
    assert receive(bob, datagram, RACER, 10.0)
    assert bob.peer("alice").endpoint == RACER
    assert not receive(bob, datagram, endpoint("alice"), 10.002)
    peer = bob.peer("alice")
    assert peer.endpoint == endpoint("alice") and (peer.roams, peer.roams_undone) == (1, 1)


@FORMS
def test_a_member_that_really_moved_takes_over_once_its_old_address_is_silent(group, receive):
    sessions, _ = group()
    bob = sessions["bob"]
    assert receive(bob, _from_alice(sessions, 1.0), endpoint("alice"), 1.0)
    assert receive(bob, _from_alice(sessions, 1.5), MOVED, 1.5)
    assert bob.peer("alice").endpoint == endpoint("alice")  # its old address spoke 0.5 s ago
    assert receive(bob, _from_alice(sessions, 1.0 + ROAM_HOLD), MOVED, 1.0 + ROAM_HOLD)
    assert bob.peer("alice").endpoint == MOVED
    assert bob.on_tun_packet(ipv4(v4(2), v4(1)), 3.0)[0][0] == MOVED


@FORMS
def test_a_forged_duplicate_proves_nothing(group, receive):
    sessions, _ = group()
    bob = sessions["bob"]
    assert receive(bob, _from_alice(sessions, 1.0), endpoint("alice"), 1.0)
    datagram = _from_alice(sessions, 10.0)
    assert receive(bob, datagram, RACER, 10.0)
    forged = bytearray(datagram)
    forged[-1] ^= 1
    assert not receive(bob, forged, endpoint("alice"), 10.002)
    assert bob.peer("alice").endpoint == RACER and bob.peer("alice").roams_undone == 0
    assert bob.drops[C.REPLAY] == 1 and bob.drops[C.AUTH] == 0


@FORMS
def test_duplicates_are_authenticated_only_while_contested_and_from_a_known_endpoint(group, receive, monkeypatch):
    sessions, _ = group()
    bob = sessions["bob"]
    datagram = _from_alice(sessions, 1.0)
    assert receive(bob, datagram, endpoint("alice"), 1.0)
    state = bob._keyring.current
    receiver = state.receivers[0]  # alice is index 0
    opened = []
    real = receiver.cipher

    class Counting:
        def __getattr__(self, name):
            return getattr(real, name)

        def open_into(self, *args):
            opened.append(args)
            return real.open_into(*args)

    monkeypatch.setattr(receiver, "cipher", Counting())
    assert not receive(bob, datagram, endpoint("alice"), 1.2)  # a network duplicate: no contest, no crypto
    assert opened == []
    raced = _from_alice(sessions, 1.3)
    assert receive(bob, raced, RACER, 1.3)
    opened.clear()
    assert not receive(bob, raced, ("192.0.2.99", 1), 1.31)  # a third address is no evidence
    assert opened == []
    assert not receive(bob, raced, endpoint("alice"), 1.32)
    assert len(opened) == 1
    assert not receive(bob, raced, endpoint("alice"), 1.3 + ROAM_HOLD + 0.1)  # the contest is over
    assert len(opened) == 1


def test_status_reports_roaming(group):
    sessions, _ = group()
    bob = sessions["bob"]
    bob.on_datagram(_from_alice(sessions, 1.0), RACER, 1.0)
    alice = next(m for m in bob.status(1.5)["members"] if m["name"] == "alice")
    assert alice["roaming"] == {"moved": 1, "held": 0, "undone": 0} and alice["endpoint"] == "192.0.2.66:51820"
