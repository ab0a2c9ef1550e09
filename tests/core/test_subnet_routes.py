"""Subnet routes (grouptun extension): prefixes approved behind a member, in the core's one rule.

The send path routes a destination inside bob's prefix to bob; bob accepts it (its own prefix is
a local destination) and may send from inside it; everyone else accepts inner sources from bob
only inside his approved prefixes (:func:`grouptun.core.inner.misfit`).
"""

from __future__ import annotations

import ipaddress

import pytest

from grouptun.core import counters as C
from grouptun.core.inner import PrefixMap, misfit
from grouptun.core.session import Session
from grouptun.errors import EpochRejected

from .builders import FakeNet, endpoint, ipv4, ipv6, material, v4, v6

LAN4, LAN6 = "192.168.5.0/24", "fd99:5::/64"
LAN_HOST4 = ipaddress.IPv4Address("192.168.5.7")
LAN_HOST6 = ipaddress.IPv6Address("fd99:5::7")
OUTSIDE4 = ipaddress.IPv4Address("192.168.9.1")
BOB_ROUTES = {"bob": (LAN4, LAN6)}


def sessions(views: dict[str, dict] | None = None) -> tuple[dict[str, Session], FakeNet]:
    """alice, bob, carol; ``views``: name -> the routes that member's archive shows (default BOB_ROUTES)."""
    views = views or {}
    out = {}
    for name in ("alice", "bob", "carol"):
        session = Session(name, keepalive_interval=10.0)
        session.install_epoch(material(name, 1, 1, routes=views.get(name, BOB_ROUTES)), 0.0)
        out[name] = session
    return out, FakeNet(out)


def test_misfit_widens_sources_and_destinations_by_prefixes_only():
    nets = PrefixMap([(ipaddress.ip_network(LAN4), True)])
    sources, local = frozenset({v4(2).packed}), frozenset({v4(1).packed})
    assert misfit(ipv4(LAN_HOST4, v4(1)), sources, local) == C.INNER  # no prefixes: the old rule
    assert misfit(ipv4(LAN_HOST4, v4(1)), sources, local, source_prefixes=nets) is None
    assert misfit(ipv4(OUTSIDE4, v4(1)), sources, local, source_prefixes=nets) == C.INNER
    assert misfit(ipv4(v4(2), LAN_HOST4), sources, local) == C.NOT_FOR_ME
    assert misfit(ipv4(v4(2), LAN_HOST4), sources, local, local_prefixes=nets) is None
    assert misfit(ipv4(v4(2), OUTSIDE4), sources, local, local_prefixes=nets) == C.NOT_FOR_ME


def test_prefix_map_longest_prefix_first_and_family_apart():
    table = PrefixMap([(ipaddress.ip_network("10.0.0.0/8"), "wide"), (ipaddress.ip_network("10.1.0.0/16"), "narrow"),
                       (ipaddress.ip_network("::/0"), "six")])
    assert table.lookup(ipaddress.ip_address("10.1.2.3").packed) == "narrow"
    assert table.lookup(ipaddress.ip_address("10.2.2.3").packed) == "wide"
    assert table.lookup(ipaddress.ip_address("11.0.0.1").packed) is None
    assert table.lookup(ipaddress.ip_address("fd00::1").packed) == "six"


@pytest.mark.parametrize("family", [4, 6])
def test_packet_for_the_lan_goes_to_the_gateway_and_back(family):
    s, net = sessions()
    a, b = s["alice"], s["bob"]
    host, own_a = (LAN_HOST4, v4(1)) if family == 4 else (LAN_HOST6, v6(1))
    build = ipv4 if family == 4 else ipv6
    out = a.on_tun_packet(build(own_a, host), 1.0)
    assert [dest for dest, _ in out] == [endpoint("bob")]
    assert net.deliver("alice", out, 1.0) == ["bob"]  # bob forwards into his own prefix
    reply = b.on_tun_packet(build(host, own_a), 1.1)  # the LAN host's answer, sourced inside bob's prefix
    assert net.deliver("bob", reply, 1.1) == ["alice"]
    assert a.drops[C.INNER] == b.drops[C.NOT_FOR_ME] == b.drops[C.TX_SOURCE] == 0


def test_without_an_approved_route_nothing_is_routed_or_accepted():
    s, net = sessions({name: {} for name in ("alice", "bob", "carol")})
    a, b = s["alice"], s["bob"]
    assert a.on_tun_packet(ipv4(v4(1), LAN_HOST4), 1.0) == []
    assert a.drops[C.TX_NO_ROUTE] == 1
    assert b.on_tun_packet(ipv4(LAN_HOST4, v4(1)), 1.0) == []
    assert b.drops[C.TX_SOURCE] == 1


def test_source_outside_the_approved_prefix_is_dropped_and_counted_at_the_receiver():
    # bob's own view claims a wider prefix than the one alice's archive approved for him
    s, net = sessions({"bob": {"bob": ("192.168.0.0/16",)}})
    out = s["bob"].on_tun_packet(ipv4(OUTSIDE4, v4(1)), 1.0)
    assert out
    assert net.deliver("bob", out, 1.0) == []
    assert s["alice"].drops[C.INNER] == 1
    inside = s["bob"].on_tun_packet(ipv4(LAN_HOST4, v4(1)), 1.1)
    assert net.deliver("bob", inside, 1.1) == ["alice"]


def test_a_copy_of_a_lan_packet_is_not_for_another_member():
    s, net = sessions()
    (dest, datagram), = s["alice"].on_tun_packet(ipv4(v4(1), LAN_HOST4), 1.0)
    assert s["carol"].on_datagram(datagram, endpoint("alice"), 1.0) is None
    assert s["carol"].drops[C.NOT_FOR_ME] == 1


def test_overlapping_prefixes_of_two_members_refuse_the_epoch():
    session = Session("alice")
    with pytest.raises(EpochRejected):
        session.install_epoch(material("alice", routes={"bob": (LAN4,), "carol": ("192.168.0.0/16",)}), 0.0)
