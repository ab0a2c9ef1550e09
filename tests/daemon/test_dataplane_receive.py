"""The daemon's receive paths against issue 14's datagrams, with the shared fakes.

Devices: ``plain`` (TUN and socket without offloads: runs of one), ``batched`` (virtio-net TUN,
socket without GRO) and ``gro`` (GRO receives: runs of one sender, short and long; long ones are
judged by their headers at once, core.run.VECTOR_MIN).

- defect 4: an empty datagram is counted as ``short`` and the rest of the drain goes on;
- defect 1: alice's datagrams for carol, copied by an outsider to bob, reach no TUN, are counted
  ``not_for_me`` and leave alice's endpoint and last_seen at bob as they were.
"""

from __future__ import annotations

import pytest

from grouptun.core import counters as C
from grouptun.core.run import VECTOR_MIN
from grouptun.core.session import Session
from grouptun.data.plane import DataPlane
from grouptun.data.offload.vnet import VNET_HDR_LEN
from tests.core.builders import endpoint, material, seal_run

from .fakes import FakeNetwork, FakeUdp, GsoUdp, QueueTun, VnetTun, ipv4_packet

ATTACKER = ("192.0.2.66", 4444)
PATHS = ["plain", "batched", "gro"]
ADDRESS = {"alice": "10.77.0.1", "bob": "10.77.0.2", "carol": "10.77.0.3"}


def session(name: str) -> Session:
    s = Session(name)
    s.install_epoch(material(name), 0.0)
    return s


def bob_on(path: str):
    """bob's Session and DataPlane on ``path``: (session, tun, udp, data plane)."""
    bob = session("bob")
    if path == "plain":
        tun, udp = QueueTun(), FakeUdp(FakeNetwork(), endpoint("bob"))
    elif path == "batched":
        tun, udp = VnetTun(), FakeUdp(FakeNetwork(), endpoint("bob"))
    else:
        tun, udp = VnetTun(), GsoUdp({}, endpoint("bob"))
    plane = DataPlane(bob, tun, udp, clock=lambda: 5.0)
    return bob, tun, udp, plane


def sealed(sender: Session, to: str, count: int, tag: int = 0) -> tuple[bytes, int, list[bytes]]:
    """``count`` equal-size UDP packets from ``sender`` to member ``to``: (GRO buffer, stride, packets)."""
    packets = [ipv4_packet(ADDRESS[sender.own_name], ADDRESS[to], bytes([tag + k]) * 64) for k in range(count)]
    data, stride, endpoints = seal_run(sender, packets)
    assert endpoints
    return data, stride, packets


def receive(udp, data: bytes, stride: int, source) -> None:
    """``data`` arrives: one GRO receive, or one datagram at a time without GRO."""
    if isinstance(udp, GsoUdp):
        udp.inbox.append((data, stride, source))
    elif not data:
        udp.inbox.append((b"", source))
    else:
        udp.inbox.extend((data[at:at + stride], source) for at in range(0, len(data), stride))


def on_tun(tun) -> list[bytes]:
    return [w[VNET_HDR_LEN:] for w in tun.written] if isinstance(tun, VnetTun) else list(tun.written)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("where", ["first", "between", "last"])
def test_empty_datagram_is_short_and_the_drain_goes_on(path, where):
    alice = session("alice")
    bob, tun, udp, plane = bob_on(path)
    one, stride, first = sealed(alice, "bob", 3)
    two, _, second = sealed(alice, "bob", 3, tag=10)
    arrivals = [(one, stride), (two, stride)]
    arrivals.insert({"first": 0, "between": 1, "last": 2}[where], (b"", 0))
    for data, seg in arrivals:
        receive(udp, data, seg, endpoint("alice"))
    plane.on_udp_readable()
    assert plane.counters["internal_errors"] == 0
    assert bob.drops[C.SHORT] == 1 and bob.drops.total() == 1
    assert on_tun(tun) == first + second  # in order, the coalescer flushed
    assert bob.peer("alice").rx_packets == 6


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("count", [1, 5, VECTOR_MIN + 4])
def test_copied_datagrams_reach_no_tun_and_redirect_nothing(path, count):
    alice = session("alice")
    bob, tun, udp, plane = bob_on(path)
    copies, stride, _ = sealed(alice, "carol", count)
    receive(udp, copies, stride, ATTACKER)
    plane.on_udp_readable()
    peer = bob.peer("alice")
    assert on_tun(tun) == [] and plane.counters["internal_errors"] == 0
    assert bob.drops[C.NOT_FOR_ME] == count and bob.drops.total() == count
    assert (peer.endpoint, peer.last_seen, peer.rx_packets) == (endpoint("alice"), None, 0)
    if path == "gro":
        assert plane.counters["rx_runs"] == 1  # one run, however long
    # bob's own packets from alice still arrive, and only they move her endpoint
    genuine, stride, packets = sealed(alice, "bob", count, tag=50)
    receive(udp, genuine, stride, ("127.0.0.1", 41999))
    plane.on_udp_readable()
    assert on_tun(tun) == packets and peer.endpoint == ("127.0.0.1", 41999) and peer.last_seen == 5.0


@pytest.mark.parametrize("path", PATHS)
def test_copied_keepalive_moves_nothing_and_bobs_own_counts(path):
    alice = session("alice")
    bob, tun, udp, plane = bob_on(path)
    sent = dict(alice.on_timer(1.0))
    copy = sent[endpoint("carol")]
    receive(udp, copy, len(copy), ATTACKER)
    plane.on_udp_readable()
    peer = bob.peer("alice")
    assert bob.drops[C.NOT_FOR_ME] == 1 and (peer.endpoint, peer.last_seen) == (endpoint("alice"), None)
    own = sent[endpoint("bob")]
    receive(udp, own, len(own), endpoint("alice"))
    plane.on_udp_readable()
    assert peer.last_seen == 5.0 and bob.drops.total() == 1 and on_tun(tun) == []
