"""Datagrams sealed for one member, copied by an outsider to another (issue 14, defect 1).

A sender's sequence space is shared by all its receivers, so alice's datagram to carol is fresh and
authentic at bob too. PROTOCOL.md 5-6: bob drops it as ``not_for_me`` (inner destination, or the
receiver index of a keepalive) on every receive path, and nothing but his replay window changes:
not alice's endpoint, not her last_seen, not the rx counters, not the epoch switch, no rekey request.
"""

from __future__ import annotations

import ipaddress

import pytest

from grouptun.core import counters as C
from grouptun.core import wire
from grouptun.core.session import Session

from .builders import NETWORKS, endpoint, ipv4, ipv6, material, open_run, seal_run, v4, v6

ATTACKER = ("192.0.2.66", 4444)
BUF = 65536 + 4096


def observed(session: Session, sender: str = "alice") -> tuple:
    """What a copied datagram must not move at ``session`` (besides the drop counters)."""
    peer = session.peer(sender)
    state = session._keyring.current
    return (peer.endpoint, peer.last_seen, peer.rx_packets, peer.rx_bytes, state.send_started,
            frozenset(session._requests), frozenset(state.raised))


def sealed_for(sender: Session, packets: list[bytes], now: float = 1.0) -> tuple[bytes, int]:
    """``packets`` (one destination, one size) sealed back to back as one GRO buffer: (bytes, stride)."""
    data, seg, endpoints = seal_run(sender, packets, now)
    assert endpoints
    return data, seg


def keepalives(sender: Session, now: float) -> dict:
    """The keepalives ``sender`` seals at ``now``, by receiver endpoint."""
    return dict(sender.on_timer(now))


@pytest.mark.parametrize("suite", [1, 2])
@pytest.mark.parametrize("version", [4, 6])
def test_copied_datagram_dropped_as_not_for_me_and_moves_nothing_but_the_window(group, suite, version):
    sessions, net = group(suite, rekey_after_packets=1)  # a copy at n >= 1 must not ask for a rekey
    a, b, c = sessions["alice"], sessions["bob"], sessions["carol"]
    to_carol = ipv4(v4(1), v4(3)) if version == 4 else ipv6(v6(1), v6(3))
    a.on_tun_packet(to_carol, 1.0)
    (dest, datagram), = a.on_tun_packet(to_carol, 1.0)
    assert dest == endpoint("carol")
    before = observed(b)
    assert b.on_datagram(datagram, ATTACKER, 5.0) is None
    assert b.drops[C.NOT_FOR_ME] == 1 and b.drops.total() == 1
    assert observed(b) == before and b.take_requests() == set()
    assert b.peer("alice").endpoint == endpoint("alice") and b.peer("alice").last_seen is None
    # ... while carol, whom it was sealed for, takes it
    assert c.on_datagram(datagram, endpoint("alice"), 5.0) == to_carol
    # the replay window did move: the same copy again is a replay
    assert b.on_datagram(datagram, ATTACKER, 6.0) is None and b.drops[C.REPLAY] == 1
    # and alice's genuine traffic to bob is untouched
    to_bob = ipv4(v4(1), v4(2)) if version == 4 else ipv6(v6(1), v6(2))
    assert net.deliver("alice", a.on_tun_packet(to_bob, 7.0), 7.0) == ["bob"]
    assert b.peer("alice").last_seen == 7.0 and b.peer("alice").rx_packets == 1


def test_the_destination_rule_own_broadcast_multicast_and_nothing_else(group):
    sessions, _ = group()
    b = sessions["bob"]
    receiver = b._keyring.current.receiver(0)  # alice is index 0
    subnet = NETWORKS[0].broadcast_address
    fits = [v4(2), subnet, ipaddress.IPv4Address("255.255.255.255"), ipaddress.IPv4Address("224.0.0.251")]
    for destination in fits:
        assert receiver.misfit(wire.BYTE0_DATA, ipv4(v4(1), destination)) is None, destination
    for destination in (v6(2), ipaddress.IPv6Address("ff02::1")):
        assert receiver.misfit(wire.BYTE0_DATA, ipv6(v6(1), destination)) is None, destination
    for destination in (v4(3), v4(1), v4(99), ipaddress.IPv4Address("192.0.2.1")):
        assert receiver.misfit(wire.BYTE0_DATA, ipv4(v4(1), destination)) == C.NOT_FOR_ME, destination
    assert receiver.misfit(wire.BYTE0_DATA, ipv6(v6(1), v6(3))) == C.NOT_FOR_ME
    assert receiver.misfit(wire.BYTE0_DATA, ipv4(v4(3), v4(2))) == C.INNER  # source first
    assert receiver.misfit(wire.BYTE0_KEEPALIVE, wire.keepalive_body(1)) is None  # bob is index 1
    assert receiver.misfit(wire.BYTE0_KEEPALIVE, wire.keepalive_body(2)) == C.NOT_FOR_ME


def test_broadcast_still_reaches_everyone_on_the_batch_path(group):
    sessions, _ = group()
    a, b = sessions["alice"], sessions["bob"]
    packets = [ipv4(v4(1), NETWORKS[0].broadcast_address, b"x" * 30)] * 3
    data, seg = sealed_for(a, packets)
    got = open_run(b, data, seg, endpoint("alice"), 1.0)
    assert [bytes(p) for p in got] == packets and b.drops.total() == 0


def test_keepalive_names_its_receiver_and_a_copy_is_not_for_me(group):
    sessions, _ = group()
    a, b = sessions["alice"], sessions["bob"]
    sent = keepalives(a, 0.5)
    assert b.on_datagram(sent[endpoint("carol")], ATTACKER, 0.5) is None
    assert b.drops[C.NOT_FOR_ME] == 1 and b.drops.total() == 1
    assert b.peer("alice").endpoint == endpoint("alice") and b.peer("alice").last_seen is None
    assert b.on_datagram(sent[endpoint("bob")], endpoint("alice"), 0.6) is None  # a keepalive: no packet
    assert b.peer("alice").last_seen == 0.6 and b.drops.total() == 1


def test_copied_keepalive_on_the_batch_path(group):
    sessions, _ = group()
    a, b = sessions["alice"], sessions["bob"]
    copy = keepalives(a, 0.5)[endpoint("carol")]
    got = open_run(b, copy, len(copy), ATTACKER, 0.5)
    assert got == [] and b.drops[C.NOT_FOR_ME] == 1
    assert b.peer("alice").endpoint == endpoint("alice") and b.peer("alice").last_seen is None


def test_a_copy_does_not_start_sending_on_a_new_epoch(group):
    sessions, _ = group()
    a, b = sessions["alice"], sessions["bob"]
    a.install_epoch(material("alice", 2, switch_delay=0.0), 10.0)
    b.install_epoch(material("bob", 2, switch_delay=50.0), 10.0)
    sessions["carol"].install_epoch(material("carol", 2), 10.0)
    (_, datagram), = a.on_tun_packet(ipv4(v4(1), v4(3)), 11.0)
    assert wire.decode(datagram).epoch == 2
    assert b.on_datagram(datagram, ATTACKER, 11.0) is None and b.drops[C.NOT_FOR_ME] == 1
    assert b._keyring.current.send_started is None
    assert wire.decode(b.on_tun_packet(ipv4(v4(2), v4(1)), 12.0)[0][1]).epoch == 1  # still on 1
    (_, genuine), = a.on_tun_packet(ipv4(v4(1), v4(2)), 12.0)
    assert b.on_datagram(genuine, endpoint("alice"), 12.0) is not None
    assert wire.decode(b.on_tun_packet(ipv4(v4(2), v4(1)), 12.1)[0][1]).epoch == 2


def test_copied_batch_dropped_per_datagram_and_moves_nothing(group):
    sessions, _ = group()
    a, b = sessions["alice"], sessions["bob"]
    copies, seg = sealed_for(a, [ipv4(v4(1), v4(3), bytes([k]) * 40) for k in range(4)])
    before = observed(b)
    got = open_run(b, copies, seg, ATTACKER, 2.0)
    assert got == [] and b.drops[C.NOT_FOR_ME] == 4 and b.drops.total() == 4
    assert observed(b) == before
    # mixed: copies and genuine packets in one receive; only bob's move anything
    mine, _ = sealed_for(a, [ipv4(v4(1), v4(2), bytes([k]) * 40) for k in range(2)])
    theirs, _ = sealed_for(a, [ipv4(v4(1), v4(3), bytes([k]) * 40) for k in range(2)])
    got = open_run(b, theirs[:seg] + mine + theirs[seg:], seg, endpoint("alice"), 3.0)
    assert len(got) == 2 and b.drops[C.NOT_FOR_ME] == 6
    assert b.peer("alice").rx_packets == 2 and b.peer("alice").last_seen == 3.0


@pytest.mark.parametrize("version", [4, 6])
def test_copied_long_run_moves_nothing(group, version):
    sessions, _ = group()
    a, b = sessions["alice"], sessions["bob"]
    make = (lambda k: ipv4(v4(1), v4(3), bytes([k]) * 100)) if version == 4 else \
        (lambda k: ipv6(v6(1), v6(3), bytes([k]) * 100))
    copies, stride = sealed_for(a, [make(k) for k in range(16)])
    before = observed(b)
    assert open_run(b, copies, stride, ATTACKER, 2.0) == []  # one stream by its headers, every packet refused
    assert b.drops[C.NOT_FOR_ME] == 16 and b.drops.total() == 16
    assert observed(b) == before
    assert b._keyring.current.receivers[0].window.top == 15  # the window alone moved
