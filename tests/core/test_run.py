"""Runs (grouptun.core.run): same packets and same rules whether a run holds one packet or many."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from grouptun.core import counters as C
from grouptun.core import wire
from grouptun.core.sequence import N_MAX, SequenceAllocator

from grouptun.core.session import Session

from .builders import endpoint, ipv4, ipv6, material, open_run, seal_run, v4, v6



def split_wire(data, seg):
    return [data[k:k + seg] for k in range(0, len(data), seg)]


@pytest.mark.parametrize("suite", [1, 2])
def test_sealer_output_opens_per_packet_and_batch_opens_per_packet_output(group, suite):
    sessions, _ = group(suite)
    a, b = sessions["alice"], sessions["bob"]
    packets = [ipv4(v4(1), v4(2), bytes([k]) * 100) for k in range(5)] + [ipv4(v4(1), v4(2), b"tail")]
    data, seg, endpoints = seal_run(a, packets)
    assert endpoints == (endpoint("bob"),)
    assert [b.on_datagram(d, endpoint("alice"), 1.0) for d in split_wire(data, seg)] == packets
    assert a.peer("bob").tx_packets == 6 and b.peer("alice").rx_packets == 6
    # the other way: per-packet sealing, batch opening
    replies = [ipv6(v6(2), v6(1), bytes([k]) * 333) for k in range(4)]
    sealed = b"".join(b.on_tun_packet(p, 2.0)[0][1] for p in replies)
    got = open_run(a, sealed, len(replies[0]) + wire.OVERHEAD, endpoint("bob"), 2.0)
    assert got == replies
    assert a.peer("bob").rx_packets == 4 and a.peer("bob").rx_bytes == sum(map(len, replies))
    assert sum(a.drops.values()) == sum(b.drops.values()) == 0


def test_sequences_continue_across_paths_never_repeat(group):
    sessions, _ = group()
    a = sessions["alice"]
    seen = []
    for round_ in range(3):
        data, seg, _ = seal_run(a, [ipv4(v4(1), v4(2))] * 7)
        seen += [wire.HEADER.unpack_from(d)[3] for d in split_wire(data, seg)]
        seen.append(wire.HEADER.unpack_from(a.on_tun_packet(ipv4(v4(1), v4(2)), 1.0)[0][1])[3])
    assert len(seen) == len(set(seen)) == 24
    assert seen == sorted(seen)


def test_forged_packet_in_a_run_moves_nothing(group):
    sessions, _ = group()
    a, b = sessions["alice"], sessions["bob"]
    packets = [ipv4(v4(1), v4(2), b"x" * 50)] * 4
    data, seg, _ = seal_run(a, packets)
    forged = bytearray(data)
    forged[seg + 30] ^= 1  # second datagram's ciphertext
    got = open_run(b, bytes(forged[seg:2 * seg]), seg, ("192.0.2.66", 1), 1.0)
    assert got == [] and b.drops[C.AUTH] == 1
    peer = b.peer("alice")
    assert peer.endpoint == endpoint("alice") and peer.last_seen is None and peer.rx_packets == 0
    # the genuine batch still opens in full (the forgery did not mark the window)
    got = open_run(b, data, seg, endpoint("alice"), 2.0)
    assert got == packets and peer.last_seen == 2.0


def test_roaming_only_after_authentication_and_replay_within_a_run(group):
    sessions, _ = group()
    a, b = sessions["alice"], sessions["bob"]
    data, seg, _ = seal_run(a, [ipv4(v4(1), v4(2))] * 3)
    twice = data + data[:seg]  # the first datagram replayed inside the same batch
    got = open_run(b, twice, seg, ("192.0.2.7", 999), 1.0)
    assert len(got) == 3 and b.drops[C.REPLAY] == 1
    assert b.peer("alice").endpoint == ("192.0.2.7", 999)


def test_malformed_datagrams_in_a_run_counted_by_reason(group):
    sessions, _ = group()
    a, b = sessions["alice"], sessions["bob"]
    good, seg, _ = seal_run(a, [ipv4(v4(1), v4(2), b"y" * 40)])
    bad_type = b"\x13" + good[1:]
    bad_flags = good[:1] + b"\x01" + good[2:]
    unknown_epoch = good[:2] + b"\x77\x77" + good[4:]
    batch = good + bad_type + bad_flags + unknown_epoch + b"\x11\x00"  # short last one
    got = open_run(b, batch, seg, endpoint("alice"), 1.0)
    assert len(got) == 1
    assert (b.drops[C.VERSION_TYPE], b.drops[C.FLAGS], b.drops[C.UNKNOWN_EPOCH], b.drops[C.SHORT]) == (1, 1, 1, 1)


def test_inner_source_checked_per_packet(group):
    sessions, _ = group()
    a, b = sessions["alice"], sessions["bob"]
    route = ipv4(v4(1), v4(2))
    spoofed = ipv4(v4(3), v4(2))  # carol's address inside alice's key: refused by bob
    data, seg, _ = seal_run(a, [route, spoofed])  # routed by the first, the second sealed as it is
    got = open_run(b, data, seg, endpoint("alice"), 1.0)
    assert got == [route] and b.drops[C.INNER] == 1
    data, seg, _ = seal_run(a, [route, spoofed] * 7)  # a long run: one stream by its headers
    got = open_run(b, data, seg, endpoint("alice"), 1.0)
    assert got == [route] * 7 and b.drops[C.INNER] == 8


def test_route_drops_like_on_tun_packet_once_per_packet(group):
    sessions, _ = group()
    a = sessions["alice"]
    assert seal_run(a, [ipv4(v4(1), v4(99))] * 3)[2] == ()
    assert seal_run(a, [ipv4(v4(2), v4(3))])[2] == ()
    assert seal_run(a, [b"\x45junk" * 3])[2] == ()
    assert (a.drops[C.TX_NO_ROUTE], a.drops[C.TX_SOURCE], a.drops[C.TX_INVALID]) == (3, 1, 1)
    everyone = seal_run(a, [ipv4(v4(1), ipaddress.IPv4Address("10.77.0.255"))])[2]
    assert sorted(everyone) == sorted([endpoint("bob"), endpoint("carol")])


def test_exhaustion_refuses_and_requests_rekey(group):
    sessions, _ = group()
    a = sessions["alice"]
    state = a._keyring.current
    state.allocator = SequenceAllocator(state.nonce_start, state.group_size, state.own_index, start_n=N_MAX)
    data, seg, _ = seal_run(a, [ipv4(v4(1), v4(2))] * 3)  # a short grant: the one s left
    assert len(data) == seg and wire.decode(data).sequence == state.nonce_start + N_MAX * state.group_size
    assert seal_run(a, [ipv4(v4(1), v4(2))])[2] == ()
    assert a.drops[C.TX_EXHAUSTED] == 3 and "rekey:exhausted" in a.take_requests()


@settings(max_examples=40, deadline=None)
@given(sizes=st.lists(st.integers(20, 1400), min_size=1, max_size=12), suite=st.sampled_from([1, 2]),
       corrupt=st.sets(st.integers(0, 11)))
def test_runs_of_one_equal_per_packet_property(sizes, suite, corrupt):
    a, b = Session("alice"), Session("bob")
    a.install_epoch(material("alice", 1, suite), 0.0)
    b.install_epoch(material("bob", 1, suite), 0.0)
    packets = [ipv4(v4(1), v4(2), bytes([k % 251]) * (size - 20)) for k, size in enumerate(sizes)]
    datagrams = [bytearray(a.on_tun_packet(p, 1.0)[0][1]) for p in packets]
    for k in corrupt:
        if k < len(datagrams):
            datagrams[k][-1] ^= 0x80
    got = []
    for d in datagrams:
        got += open_run(b, bytes(d), len(d), endpoint("alice"), 1.0)
    want = [p for k, p in enumerate(packets) if k not in corrupt]
    assert got == want
    assert b.drops[C.AUTH] == len([k for k in corrupt if k < len(packets)])


@pytest.mark.parametrize("suite", [1, 2])
def test_seal_at_and_open_into_match_seal_and_open(suite):
    from grouptun.core.keys import EpochKeys
    from grouptun.core.seal import IvMaker, sender_cipher
    keys = EpochKeys(suite, bytes(16), 5, bytearray(b"a" * 32), bytearray(b"b" * 32))
    cipher, iv = sender_cipher(keys, 1), IvMaker(keys.nonce_common)
    header = wire.HEADER.pack(0x11, 0, 5, 77)
    for size in (0, 1, 15, 16, 17, 1400):
        plain = bytes(range(256)) * 6
        plain = plain[:size]
        whole = cipher.seal(header, iv(77), plain)
        buf = memoryview(bytearray(size + 64))
        buf[3:15] = header
        assert cipher.seal_at(buf, 3, iv(77), plain) == len(whole) and bytes(buf[3:3 + len(whole)]) == whole
        exact = memoryview(bytearray(size))  # suite 2 takes the copying branch here
        assert cipher.open_into(memoryview(whole), iv(77), exact) == size and bytes(exact) == plain
        roomy = memoryview(bytearray(size + 15))
        assert cipher.open_into(memoryview(whole), iv(77), roomy) == size and bytes(roomy[:size]) == plain


def _inner(v6_: bool, size: int, tag: int) -> bytes:
    if v6_:
        return ipv6(v6(1), v6(2), bytes((tag + k) % 251 for k in range(size - 40)))
    return ipv4(v4(1), v4(2), bytes((tag + k) % 251 for k in range(size - 20)))


def _sealed_to_bob(group, v6_: bool, size: int, count: int):
    """bob, and a run alice sealed for him: (bob, packets, its datagrams as a bytearray, datagram size)."""
    sessions, _ = group()
    packets = [_inner(v6_, size, k) for k in range(count)]
    data, seg, _ = seal_run(sessions["alice"], packets)
    return sessions["bob"], packets, bytearray(data), seg


@pytest.mark.parametrize("count", [6, 20])
def test_forged_datagram_in_the_middle_of_a_run(group, count):
    b, packets, forged, seg = _sealed_to_bob(group, False, 300, count)
    genuine = bytes(forged[2 * seg:3 * seg])
    forged[2 * seg + 100] ^= 0x10
    assert open_run(b, bytes(forged), seg, endpoint("alice")) == packets[:2] + packets[3:]
    assert b.drops[C.AUTH] == 1 and b.drops.total() == 1
    peer = b.peer("alice")
    assert (peer.rx_packets, peer.rx_bytes, peer.last_seen) == (count - 1, (count - 1) * 300, 1.0)
    window = b._keyring.current.receivers[0].window
    assert window.top == count - 1 and window.check(2) and not window.check(1) and not window.check(3)
    assert open_run(b, genuine, seg, endpoint("alice"), 2.0) == [packets[2]]  # that n was never marked
    assert not window.check(2)


@pytest.mark.parametrize("count", [4, 16])
def test_all_forged_run_moves_nothing_but_the_auth_counter(group, count):
    b, packets, data, seg = _sealed_to_bob(group, True, 200, count)
    forged = bytearray(data)
    for at in range(seg - 3, len(forged), seg):
        forged[at] ^= 0xFF
    assert open_run(b, bytes(forged), seg, ("192.0.2.66", 1)) == []
    peer = b.peer("alice")
    assert b.drops[C.AUTH] == count and peer.endpoint == endpoint("alice") and peer.last_seen is None
    assert b._keyring.current.receivers[0].window.top == -1
    assert open_run(b, bytes(data), seg, endpoint("alice"), 2.0) == packets


@pytest.mark.parametrize("count, size, last", [(9, 100, 100), (3, 100, 50), (14, 1400, 1400), (2, 60, 20),
                                               (13, 1400, 700), (1, 100, 100)])
@pytest.mark.parametrize("suite", [1, 2])
def test_runs_of_any_shape_open_whole(count, size, last, suite):
    a, b = Session("alice"), Session("bob")
    a.install_epoch(material("alice", 1, suite), 0.0)
    b.install_epoch(material("bob", 1, suite), 0.0)
    packets = [_inner(False, size, count + k) for k in range(count - 1)] + [_inner(False, last, 1)]
    data, seg, _ = seal_run(a, packets, stride=size + 7)
    assert [bytes(p) for p in (b.on_datagram(data[at:at + seg], endpoint("alice"), 1.0)
                               for at in range(0, len(data), seg))] == packets  # each on its own
    b2 = Session("bob")
    b2.install_epoch(material("bob", 1, suite), 0.0)
    assert open_run(b2, data, seg, endpoint("alice")) == packets  # and as one run
    assert b2.peer("alice").rx_bytes == b.peer("alice").rx_bytes == sum(map(len, packets))


def test_own_index_and_a_short_tail_in_a_run_counted_by_reason(group):
    sessions, _ = group()
    a, b = sessions["alice"], sessions["bob"]
    data, seg, _ = seal_run(a, [_inner(False, 100, k) for k in range(14)])
    assert len(open_run(b, data + bytes(10), seg, endpoint("alice"))) == 14 and b.drops[C.SHORT] == 1
    own, seg, _ = seal_run(b, [ipv4(v4(2), v4(1), b"m" * 80)] * 13)
    assert open_run(b, own, seg, endpoint("alice")) == [] and b.drops[C.OWN_INDEX] == 13
