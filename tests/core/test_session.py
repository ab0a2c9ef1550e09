"""Sessions talking over an in-memory network (FakeNet): routing, drops, roaming, epochs."""

from __future__ import annotations

import pytest

from grouptun.core import counters as C
from grouptun.core import session as session_mod
from grouptun.core import wire
from grouptun.core.sequence import N_MAX, SequenceAllocator
from grouptun.core.session import Session
from grouptun.errors import EpochRejected

from .builders import assert_json_able, endpoint, ipv4, ipv6, material, v4, v6


@pytest.mark.parametrize("suite", [1, 2])
def test_unicast_round_trip_v4_and_v6(group, suite):
    sessions, net = group(suite)
    a, b = sessions["alice"], sessions["bob"]
    for packet in (ipv4(v4(1), v4(2)), ipv6(v6(1), v6(2))):
        out = a.on_tun_packet(packet, 1.0)
        assert [dest for dest, _ in out] == [endpoint("bob")]
        assert len(out[0][1]) == len(packet) + wire.OVERHEAD
        assert net.deliver("alice", out, 1.0) == ["bob"]
        assert net.received["bob"][-1] == packet
    reply = ipv4(v4(2), v4(1), b"pong")
    assert net.deliver("bob", b.on_tun_packet(reply, 2.0), 2.0) == ["alice"]
    assert net.received["alice"] == [reply]
    assert b.peer("alice").rx_packets == 2 and a.peer("bob").tx_packets == 2
    assert sum(a.drops.values()) == sum(b.drops.values()) == 0


@pytest.mark.parametrize("destination", ["10.77.0.255", "255.255.255.255", "224.0.0.251"])
def test_broadcast_and_multicast_one_encryption_every_other_member(group, destination):
    import ipaddress
    sessions, net = group()
    packet = ipv4(v4(1), ipaddress.IPv4Address(destination))
    out = sessions["alice"].on_tun_packet(packet, 1.0)
    assert sorted(dest for dest, _ in out) == [endpoint("bob"), endpoint("carol")]
    assert out[0][1] is out[1][1]  # sealed once
    assert sorted(net.deliver("alice", out, 1.0)) == ["bob", "carol"]


def test_ipv6_multicast_to_everyone(group):
    import ipaddress
    sessions, net = group()
    out = sessions["bob"].on_tun_packet(ipv6(v6(2), ipaddress.IPv6Address("ff02::1")), 1.0)
    assert sorted(net.deliver("bob", out, 1.0)) == ["alice", "carol"]


def test_unknown_destination_bad_source_and_garbage_dropped_and_counted(group):
    sessions, _ = group()
    a = sessions["alice"]
    assert a.on_tun_packet(ipv4(v4(1), v4(99)), 1.0) == []
    assert a.on_tun_packet(ipv4(v4(2), v4(3)), 1.0) == []  # not our source address
    assert a.on_tun_packet(b"\x45garbage", 1.0) == []
    assert a.on_tun_packet(ipv4(v4(1), v4(2))[:-1], 1.0) == []  # length field disagrees
    assert (a.drops[C.TX_NO_ROUTE], a.drops[C.TX_SOURCE], a.drops[C.TX_INVALID]) == (1, 1, 2)


def test_unknown_endpoint_counted(group):
    sessions, net = group()
    a = Session("alice")
    table = material("alice")
    table.members = tuple(m if m.name == "alice" else type(m)(m.name, m.index, m.addresses, None)
                          for m in table.members)
    a.install_epoch(table, 0.0)
    assert a.on_tun_packet(ipv4(v4(1), v4(2)), 1.0) == []
    assert a.drops[C.TX_NO_ENDPOINT] == 1
    # bob talks first: now alice knows where bob is.
    sessions["bob"].on_tun_packet(ipv4(v4(2), v4(1)), 1.0)
    out = sessions["bob"].on_tun_packet(ipv4(v4(2), v4(1)), 1.0)
    assert a.on_datagram(out[0][1], endpoint("bob"), 1.0) is not None
    assert a.on_tun_packet(ipv4(v4(1), v4(2)), 2.0)[0][0] == endpoint("bob")


def test_replay_and_forgery_dropped_without_state_change(group):
    sessions, net = group()
    a, b = sessions["alice"], sessions["bob"]
    (dest, datagram), = a.on_tun_packet(ipv4(v4(1), v4(2)), 1.0)
    assert b.on_datagram(datagram, endpoint("alice"), 1.0) is not None
    assert b.on_datagram(datagram, ("192.0.2.9", 1), 2.0) is None  # replayed from elsewhere
    assert b.drops[C.REPLAY] == 1
    assert b.peer("alice").endpoint == endpoint("alice")  # no roaming on a replay
    (dest, fresh), = a.on_tun_packet(ipv4(v4(1), v4(2)), 3.0)
    forged = bytearray(fresh)
    forged[-1] ^= 1
    assert b.on_datagram(forged, ("192.0.2.9", 1), 3.0) is None
    assert b.drops[C.AUTH] == 1 and b.peer("alice").endpoint == endpoint("alice")
    # the forgery did not burn its n: the genuine packet still goes through
    assert b.on_datagram(fresh, endpoint("alice"), 3.0) is not None


def test_roaming_after_authentication(group):
    sessions, net = group()
    a, b = sessions["alice"], sessions["bob"]
    moved = ("127.0.0.1", 49999)
    (dest, datagram), = a.on_tun_packet(ipv4(v4(1), v4(2)), 1.0)
    assert b.on_datagram(datagram, moved, 1.0) is not None
    assert b.peer("alice").endpoint == moved
    assert b.on_tun_packet(ipv4(v4(2), v4(1)), 2.0)[0][0] == moved


def test_header_decided_drops_need_no_crypto(group, monkeypatch):
    sessions, _ = group()
    b = sessions["bob"]
    state = b._keyring.current
    calls = []
    monkeypatch.setattr(state, "receiver", lambda index: calls.append(index))
    ns, size = state.nonce_start, state.group_size

    def dgram(byte0=0x11, flags=0, wire_epoch=1, s=None, body=40):
        s = ns + 0 if s is None else s
        return wire.HEADER.pack(byte0, flags, wire_epoch, s) + bytes(body + 16)

    cases = [
        (b"\x11" * 27, C.SHORT),
        (dgram(byte0=0x21), C.VERSION_TYPE),
        (dgram(byte0=0x13), C.VERSION_TYPE),
        (dgram(flags=4), C.FLAGS),
        (dgram(wire_epoch=7), C.UNKNOWN_EPOCH),
        (dgram(s=ns - 1), C.SEQUENCE),
        (dgram(s=ns + (N_MAX + 1) * size), C.SEQUENCE),
        (dgram(s=ns + 1), C.OWN_INDEX),  # bob is index 1
        (dgram(byte0=0x12, body=1), C.LENGTH),  # keepalive body not u16(j)
        (dgram(byte0=0x12, body=0), C.LENGTH),  # the empty keepalive of before
        (dgram(body=19), C.LENGTH),  # data too short for an IP header
    ]
    for datagram, reason in cases:
        before = b.drops[reason]
        assert b.on_datagram(datagram, endpoint("alice"), 1.0) is None
        assert b.drops[reason] == before + 1, reason
    assert calls == [] and b.drops[C.AUTH] == 0


def test_inner_packet_checked_after_authentication(group):
    sessions, net = group()
    a, b = sessions["alice"], sessions["bob"]
    # An insider (alice) seals a packet whose source is carol's address.
    state = a._keyring.current
    spoofed = ipv4(v4(3), v4(2))
    s = state.allocator.next()
    header = wire.HEADER.pack(0x11, 0, state.wire, s)
    datagram = state.sender.seal(header, state.iv(s), spoofed)
    assert b.on_datagram(datagram, endpoint("alice"), 1.0) is None
    assert b.drops[C.INNER] == 1 and b.drops[C.AUTH] == 0
    body = bytes(30)  # not an IP packet at all
    s = state.allocator.next()
    header = wire.HEADER.pack(0x11, 0, state.wire, s)
    assert b.on_datagram(state.sender.seal(header, state.iv(s), body), endpoint("alice"), 1.0) is None
    assert b.drops[C.INNER] == 2


def test_keepalives_on_timer(group):
    sessions, net = group()
    a = sessions["alice"]
    out = a.on_timer(0.5)
    assert sorted(dest for dest, _ in out) == [endpoint("bob"), endpoint("carol")]
    assert all(len(d) == wire.KEEPALIVE_SIZE for _, d in out)
    assert len({wire.HEADER.unpack_from(d)[3] for _, d in out}) == 2  # one seal (own s) per receiver
    assert net.deliver("alice", out, 0.5) == []  # keepalives reach no TUN
    assert sessions["bob"].peer("alice").last_seen == 0.5
    assert a.on_timer(5.0) == []
    a.on_tun_packet(ipv4(v4(1), v4(2)), 8.0)
    assert [dest for dest, _ in a.on_timer(10.5)] == [endpoint("carol")]
    assert sum(s.drops.total() for s in sessions.values()) == 0


def _install_all(sessions, epoch, now, only=None, **extra):
    for name, session in sessions.items():
        if only is None or name in only:
            session.install_epoch(material(name, epoch, **extra), now)


def test_epoch_switch_by_delay_by_authentication_and_grace(group):
    sessions, net = group()
    a, b, c = sessions["alice"], sessions["bob"], sessions["carol"]
    _install_all(sessions, 2, 100.0, only=("carol",))
    _install_all(sessions, 2, 101.5, only=("alice", "bob"))
    # carol switches at 102.0 (switch_delay 2 s); alice and bob still send on 1.
    out = a.on_tun_packet(ipv4(v4(1), v4(2)), 102.0)
    assert wire.decode(out[0][1]).epoch == 1
    assert net.deliver("alice", out, 102.0) == ["bob"]
    out = c.on_tun_packet(ipv4(v4(3), v4(1)), 102.0)
    assert wire.decode(out[0][1]).epoch == 2
    assert net.deliver("carol", out, 102.0) == ["alice"]
    # alice received an authenticated packet on epoch 2: she sends on it at once.
    assert wire.decode(a.on_tun_packet(ipv4(v4(1), v4(2)), 102.1)[0][1]).epoch == 2
    assert wire.decode(b.on_tun_packet(ipv4(v4(2), v4(1)), 103.4)[0][1]).epoch == 1
    assert wire.decode(b.on_tun_packet(ipv4(v4(2), v4(1)), 103.5)[0][1]).epoch == 2  # by delay
    old = b._keyring.previous
    assert b.on_timer(103.5 + 30.0) is not None
    assert b._keyring.previous is None and old.keys._prk is None
    stale = wire.HEADER.pack(0x11, 0, 1, old.nonce_start) + bytes(60)
    assert b.on_datagram(stale, endpoint("alice"), 134.0) is None
    assert b.drops[C.UNKNOWN_EPOCH] == 1
    assert b.packets_sent() == {1: 1, 2: 3}  # and on_timer at 133.5 sent a keepalive to each other on 2


def test_fetch_requested_for_next_wire_epoch_rate_limited(group):
    sessions, _ = group()
    b = sessions["bob"]
    nxt = wire.HEADER.pack(0x11, 0, 2, 0) + bytes(60)
    far = wire.HEADER.pack(0x11, 0, 9, 0) + bytes(60)
    b.on_datagram(far, endpoint("alice"), 1.0)
    assert b.take_requests() == set()
    b.on_datagram(nxt, endpoint("alice"), 1.0)
    assert b.take_requests() == {"fetch"}
    b.on_datagram(nxt, endpoint("alice"), 3.0)
    assert b.take_requests() == set()
    b.on_datagram(nxt, endpoint("alice"), 1.0 + session_mod.FETCH_INTERVAL)
    assert b.take_requests() == {"fetch"}


def test_rekey_requests_packets_time_and_once_per_epoch():
    a = Session("alice")
    a.install_epoch(material("alice", rekey_after_packets=2, rekey_after_seconds=60.0), 0.0)
    a.on_tun_packet(ipv4(v4(1), v4(2)), 1.0)
    assert a.take_requests() == set()
    a.on_tun_packet(ipv4(v4(1), v4(2)), 1.0)
    assert a.take_requests() == {"rekey:packets"}
    a.on_tun_packet(ipv4(v4(1), v4(2)), 1.0)
    a.on_timer(59.0)
    assert a.take_requests() == set()
    a.on_timer(60.0)
    assert a.take_requests() == {"rekey:time"}
    a.on_timer(70.0)
    assert a.take_requests() == set()


def test_rekey_when_a_peer_reaches_the_threshold():
    a, b = Session("alice"), Session("bob")
    a.install_epoch(material("alice"), 0.0)
    b.install_epoch(material("bob", rekey_after_packets=2), 0.0)
    for _ in range(3):
        (dest, datagram), = a.on_tun_packet(ipv4(v4(1), v4(2)), 1.0)
        b.on_datagram(datagram, endpoint("alice"), 1.0)
    assert b.take_requests() == {"rekey:packets"}


def test_rekey_after_auth_failures(group, monkeypatch):
    monkeypatch.setattr(session_mod, "AUTH_FAILURES_REKEY", 5)
    sessions, _ = group()
    a, b = sessions["alice"], sessions["bob"]
    for _ in range(5):
        (dest, datagram), = a.on_tun_packet(ipv4(v4(1), v4(2)), 1.0)
        forged = bytearray(datagram)
        forged[20] ^= 0x40
        b.on_datagram(forged, endpoint("alice"), 1.0)
    assert b.drops[C.AUTH] == 5
    assert b.take_requests() == {"rekey:auth-failures"}


def test_sequence_exhausted_stops_sending(group):
    sessions, net = group()
    a = sessions["alice"]
    state = a._keyring.current
    state.allocator = SequenceAllocator(state.nonce_start, state.group_size, state.own_index, start_n=N_MAX)
    out = a.on_tun_packet(ipv4(v4(1), v4(2)), 1.0)
    assert net.deliver("alice", out, 1.0) == ["bob"]  # n_max itself is still valid
    assert a.on_tun_packet(ipv4(v4(1), v4(2)), 1.0) == []
    assert a.drops[C.TX_EXHAUSTED] == 1
    assert "rekey:exhausted" in a.take_requests()


def test_install_wipes_material_and_checks_it():
    a = Session("alice")
    m = material("alice")
    a.install_epoch(m, 0.0)
    assert not any(m.shared_secret) and not any(m.salt)
    with pytest.raises(EpochRejected) as info:
        Session("mallory").install_epoch(material("alice"), 0.0)
    assert info.value.step == "material"
    for change in (dict(nonce_start=2**32), dict(group_id="not bytes"), dict(suite=3), dict(grace=-1.0),
                   dict(rekey_after_packets=2**27 + 1), dict(group_size=4)):
        bad = material("alice", epoch=2, **change)
        with pytest.raises(EpochRejected):
            a.install_epoch(bad, 1.0)
        assert not any(bad.shared_secret) and not any(bad.salt)
    with pytest.raises(EpochRejected) as info:
        a.install_epoch(material("alice", epoch=1), 1.0)
    assert info.value.step == "epoch"
    assert a.status(1.0)["epochs"][0]["epoch"] == 1  # state unchanged


def test_index_permutation_and_three_members_with_other_order(group):
    sessions, net = group(order=[2, 0, 1])
    assert sessions["alice"]._keyring.current.own_index == 2
    out = sessions["carol"].on_tun_packet(ipv4(v4(3), v4(1)), 1.0)
    assert net.deliver("carol", out, 1.0) == ["alice"]


def test_status_is_json_and_close_wipes(group):
    sessions, net = group()
    a = sessions["alice"]
    net.deliver("alice", a.on_tun_packet(ipv4(v4(1), v4(2)), 1.0), 1.0)
    status = a.status(2.0)
    assert_json_able(status)
    assert [m["name"] for m in status["members"]] == ["alice", "bob", "carol"]
    assert status["epochs"][0]["sending"] is True and set(status["drops"]) == set(C.REASONS)
    state = a._keyring.current
    keys = [state.keys.enc_key(0), state.keys.prk, state.keys.nonce_common]
    a.close()
    assert not any(any(k) for k in keys)
    assert a.on_tun_packet(ipv4(v4(1), v4(2)), 3.0) == [] and a.drops[C.TX_NO_EPOCH] == 1


def test_expired_previous_epoch_dropped_by_timer_not_by_a_header(group):
    # A datagram naming the old epoch after grace is dropped as unknown, but
    # it must not drop the epoch itself: only on_timer does, with the
    # session's bookkeeping (packets sent on it stay reported).
    sessions, net = group()
    b = sessions["bob"]
    _install_all(sessions, 2, 101.5)
    assert wire.decode(b.on_tun_packet(ipv4(v4(2), v4(1)), 101.6)[0][1]).epoch == 1
    assert wire.decode(b.on_tun_packet(ipv4(v4(2), v4(1)), 103.5)[0][1]).epoch == 2
    old = b._keyring.previous
    stale = wire.HEADER.pack(0x11, 0, 1, old.nonce_start) + bytes(60)
    assert b.on_datagram(stale, endpoint("alice"), 134.0) is None
    assert b.drops[C.UNKNOWN_EPOCH] == 1
    assert b._keyring.previous is old and any(old.keys.nonce_common)  # untouched by a header
    b.on_timer(134.0)
    assert b._keyring.previous is None and old.keys._prk is None
    assert b.packets_sent().get(1) == 1
