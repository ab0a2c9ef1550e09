"""Batch send/receive (grouptun.core.batch): same packets and same rules as the per-packet path."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from grouptun.core import counters as C
from grouptun.core import wire
from grouptun.core.sequence import N_MAX, SequenceAllocator

from grouptun.core.session import Session

from .builders import endpoint, ipv4, ipv6, material, v4, v6

BUF = 65536 + 4096


def seal_batch(sender, packets, now=1.0):
    """Seal ``packets`` (one route) into one buffer; returns (bytes, segment size, sealer)."""
    sealer = sender.sealer(packets[0], now)
    assert sealer is not None
    out = memoryview(bytearray(BUF))
    seg = len(packets[0]) + wire.OVERHEAD
    off = 0
    for k, packet in enumerate(packets):
        assert off == k * seg
        n = sealer.seal_into(packet, out, off)
        assert n == len(packet) + wire.OVERHEAD
        off += n
    sealer.finish(now)
    return bytes(out[:off]), seg, sealer


def split_wire(data, seg):
    return [data[k:k + seg] for k in range(0, len(data), seg)]


@pytest.mark.parametrize("suite", [1, 2])
def test_sealer_output_opens_per_packet_and_batch_opens_per_packet_output(group, suite):
    sessions, _ = group(suite)
    a, b = sessions["alice"], sessions["bob"]
    packets = [ipv4(v4(1), v4(2), bytes([k]) * 100) for k in range(5)] + [ipv4(v4(1), v4(2), b"tail")]
    data, seg, sealer = seal_batch(a, packets)
    assert sealer.endpoints == (endpoint("bob"),)
    assert [b.on_datagram(d, endpoint("alice"), 1.0) for d in split_wire(data, seg)] == packets
    assert a.peer("bob").tx_packets == 6 and b.peer("alice").rx_packets == 6
    # the other way: per-packet sealing, batch opening
    replies = [ipv6(v6(2), v6(1), bytes([k]) * 333) for k in range(4)]
    sealed = b"".join(b.on_tun_packet(p, 2.0)[0][1] for p in replies)
    out = memoryview(bytearray(BUF))
    got = a.open_batch(memoryview(sealed), len(replies[0]) + wire.OVERHEAD, endpoint("bob"), 2.0, out)
    assert [bytes(p) for p in got] == replies
    assert a.peer("bob").rx_packets == 4 and a.peer("bob").rx_bytes == sum(map(len, replies))
    assert sum(a.drops.values()) == sum(b.drops.values()) == 0


def test_sequences_continue_across_paths_never_repeat(group):
    sessions, _ = group()
    a = sessions["alice"]
    seen = []
    for round_ in range(3):
        data, seg, _ = seal_batch(a, [ipv4(v4(1), v4(2))] * 7)
        seen += [wire.HEADER.unpack_from(d)[3] for d in split_wire(data, seg)]
        seen.append(wire.HEADER.unpack_from(a.on_tun_packet(ipv4(v4(1), v4(2)), 1.0)[0][1])[3])
    assert len(seen) == len(set(seen)) == 24
    assert seen == sorted(seen)


def test_forged_packet_in_a_batch_moves_nothing(group):
    sessions, _ = group()
    a, b = sessions["alice"], sessions["bob"]
    packets = [ipv4(v4(1), v4(2), b"x" * 50)] * 4
    data, seg, _ = seal_batch(a, packets)
    forged = bytearray(data)
    forged[seg + 30] ^= 1  # second datagram's ciphertext
    out = memoryview(bytearray(BUF))
    got = b.open_batch(memoryview(bytes(forged[seg:2 * seg])), seg, ("192.0.2.66", 1), 1.0, out)
    assert got == [] and b.drops[C.AUTH] == 1
    peer = b.peer("alice")
    assert peer.endpoint == endpoint("alice") and peer.last_seen is None and peer.rx_packets == 0
    # the genuine batch still opens in full (the forgery did not mark the window)
    got = b.open_batch(memoryview(data), seg, endpoint("alice"), 2.0, out)
    assert [bytes(p) for p in got] == packets and peer.last_seen == 2.0


def test_roaming_only_after_authentication_and_replay_within_batch(group):
    sessions, _ = group()
    a, b = sessions["alice"], sessions["bob"]
    data, seg, _ = seal_batch(a, [ipv4(v4(1), v4(2))] * 3)
    twice = data + data[:seg]  # the first datagram replayed inside the same batch
    out = memoryview(bytearray(BUF))
    got = b.open_batch(memoryview(twice), seg, ("192.0.2.7", 999), 1.0, out)
    assert len(got) == 3 and b.drops[C.REPLAY] == 1
    assert b.peer("alice").endpoint == ("192.0.2.7", 999)


def test_malformed_datagrams_in_a_batch_counted_by_reason(group):
    sessions, _ = group()
    a, b = sessions["alice"], sessions["bob"]
    good, seg, _ = seal_batch(a, [ipv4(v4(1), v4(2), b"y" * 40)])
    bad_type = b"\x13" + good[1:]
    bad_flags = good[:1] + b"\x01" + good[2:]
    unknown_epoch = good[:2] + b"\x77\x77" + good[4:]
    batch = good + bad_type + bad_flags + unknown_epoch + b"\x11\x00"  # short last one
    out = memoryview(bytearray(BUF))
    got = b.open_batch(memoryview(batch), seg, endpoint("alice"), 1.0, out)
    assert len(got) == 1
    assert (b.drops[C.VERSION_TYPE], b.drops[C.FLAGS], b.drops[C.UNKNOWN_EPOCH], b.drops[C.SHORT]) == (1, 1, 1, 1)


def test_inner_source_checked_per_packet(group):
    sessions, _ = group()
    a, b = sessions["alice"], sessions["bob"]
    sealer = a.sealer(ipv4(v4(1), v4(2)), 1.0)
    out = memoryview(bytearray(BUF))
    spoofed = ipv4(v4(3), v4(2))  # carol's address inside alice's key: refused by bob
    n = sealer.seal_into(spoofed, out, 0)
    got = b.open_batch(out[:n], n, endpoint("alice"), 1.0, memoryview(bytearray(BUF)))
    assert got == [] and b.drops[C.INNER] == 1


def test_route_drops_like_on_tun_packet(group):
    sessions, _ = group()
    a = sessions["alice"]
    assert a.sealer(ipv4(v4(1), v4(99)), 1.0) is None
    assert a.sealer(ipv4(v4(2), v4(3)), 1.0) is None
    assert a.sealer(b"\x45junk", 1.0) is None
    assert (a.drops[C.TX_NO_ROUTE], a.drops[C.TX_SOURCE], a.drops[C.TX_INVALID]) == (1, 1, 1)
    everyone = a.sealer(ipv4(v4(1), ipaddress.IPv4Address("10.77.0.255")), 1.0)
    assert sorted(everyone.endpoints) == sorted([endpoint("bob"), endpoint("carol")])


def test_exhaustion_refuses_and_requests_rekey(group):
    sessions, _ = group()
    a = sessions["alice"]
    state = a._keyring.current
    state.allocator = SequenceAllocator(state.nonce_start, state.group_size, state.own_index, start_n=N_MAX)
    sealer = a.sealer(ipv4(v4(1), v4(2)), 1.0)
    out = memoryview(bytearray(BUF))
    assert sealer.seal_into(ipv4(v4(1), v4(2)), out, 0) > 0
    assert sealer.seal_into(ipv4(v4(1), v4(2)), out, 0) == 0
    assert a.drops[C.TX_EXHAUSTED] == 1 and "rekey:exhausted" in a.take_requests()


@settings(max_examples=40, deadline=None)
@given(sizes=st.lists(st.integers(20, 1400), min_size=1, max_size=12), suite=st.sampled_from([1, 2]),
       corrupt=st.sets(st.integers(0, 11)))
def test_batch_equals_per_packet_property(sizes, suite, corrupt):
    a, b = Session("alice"), Session("bob")
    a.install_epoch(material("alice", 1, suite), 0.0)
    b.install_epoch(material("bob", 1, suite), 0.0)
    packets = [ipv4(v4(1), v4(2), bytes([k % 251]) * (size - 20)) for k, size in enumerate(sizes)]
    datagrams = [bytearray(a.on_tun_packet(p, 1.0)[0][1]) for p in packets]
    for k in corrupt:
        if k < len(datagrams):
            datagrams[k][-1] ^= 0x80
    out = memoryview(bytearray(BUF))
    got = []
    for d in datagrams:
        got += [bytes(p) for p in b.open_batch(memoryview(bytes(d)), len(d), endpoint("alice"), 1.0, out)]
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
