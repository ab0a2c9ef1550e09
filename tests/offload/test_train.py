"""Trains (offload.train, fastsplit.split_train): full TCP super-packets of one flow segmented and
sealed together must put on the wire exactly the datagrams each super-packet sent alone would, in the
same order, whatever interrupts the train (plain packets, other flows, odd sizes, malformed reads,
the end of the slots)."""

from __future__ import annotations

import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from grouptun.data.offload.fastsplit import split_train
from grouptun.data.offload.segment import segment, split
from grouptun.data.offload.train import SLOT, SLOTS, Train
from grouptun.data.offload.vnet import VNET_HDR_LEN, decode, unpack_fields
from tests.daemon.test_dataplane_offload import packets_of, pair, super_packet

np = pytest.importorskip("numpy")


def tcp(version: int, rows: int, mss: int, seq: int, fill: int, flags: int = 0x18, port: int = 40000) -> bytes:
    """A full TCP super-packet (``rows`` segments of ``mss``) as the TUN hands it over."""
    frame = bytearray(super_packet(version, 6, bytes([fill]) * (rows * mss), mss, seq=seq))
    cs = VNET_HDR_LEN + (20 if version == 4 else 40)
    frame[cs + 13] = flags
    if port != 40000:  # another flow: the checksum field holds the pseudo-header sum, ports are not in it
        struct.pack_into("!H", frame, cs, port)
    return bytes(frame)


def drain(frames: list[bytes], trains: bool):
    """Alice reads ``frames`` in one drain; (datagrams on the wire in order, packets Bob's TUN got, counters)."""
    peers = pair()
    _, tun, _, plane = peers["alice"]
    if not trains:  # the reference: every super-packet segmented alone
        tun.runs.train.take = lambda *_: False
    tun.queue = list(frames)
    plane.on_tun_readable()
    bob_udp, bob_plane = peers["bob"][2], peers["bob"][3]
    datagrams = [d[k:k + seg] for d, seg, _ in bob_udp.inbox for k in range(0, len(d), seg)]
    bob_plane.on_udp_readable()
    return datagrams, packets_of(peers["bob"][1].written), plane.status()


def expected_packets(frames: list[bytes]) -> list[bytes]:
    out = []
    for f in frames:
        hdr = decode(f)
        out += segment(f[VNET_HDR_LEN:], hdr) if hdr.gso_kind else [f[VNET_HDR_LEN:]]
    return out


@pytest.mark.parametrize("count", [2, SLOTS - 1, SLOTS, SLOTS + 1, 2 * SLOTS, 2 * SLOTS + 3])
@pytest.mark.parametrize("version", [4, 6])
def test_a_stream_of_super_packets_equals_each_alone(count, version):
    frames = [tcp(version, 11, 1000, 5000 + k * 11000, k) for k in range(count)]
    sent, got, counters = drain(frames, trains=True)
    ref_sent, ref_got, _ = drain(frames, trains=False)
    assert sent == ref_sent
    assert got == ref_got == expected_packets(frames)
    assert counters["tx_runs"] == 1 + -(-(count - 1) // SLOTS)  # the first alone, then trains of up to SLOTS


@settings(max_examples=60, deadline=None, database=None)
@given(data=st.data(), n=st.integers(1, 30))
def test_mixed_drains_equal_each_alone(data, n):
    """Trains broken by plain packets, another flow, other shapes, odd sizes, malformed reads."""
    frames, seq = [], 1000
    for _ in range(n):
        kind = data.draw(st.sampled_from(["train", "train", "train", "flow", "rows", "short", "udp", "small",
                                          "v6", "bad"]))
        if kind == "train":
            frames.append(tcp(4, 9, 1200, seq, len(frames)))
            seq += 9 * 1200
        elif kind == "flow":
            frames.append(tcp(4, 9, 1200, seq, 7, port=40001))
        elif kind == "rows":
            frames.append(tcp(4, 5, 1200, seq, 8))
        elif kind == "short":  # not whole segments: the single-packet path
            frames.append(super_packet(4, 6, bytes(9 * 1200 - 17), 1200, seq=seq))
        elif kind == "udp":
            frames.append(super_packet(4, 17, bytes(3000), 1000))
        elif kind == "small":
            frames.append(super_packet(4, 6, bytes(data.draw(st.integers(1, 900))), 65535, seq=seq))
        elif kind == "v6":
            frames.append(tcp(6, 9, 1200, seq, 9))
        else:  # a vnet header promising more than there is
            frames.append(tcp(4, 9, 1200, seq, 1)[:VNET_HDR_LEN + 30])
    sent, got, counters = drain(frames, trains=True)
    ref_sent, ref_got, ref_counters = drain(frames, trains=False)
    assert sent == ref_sent
    assert got == ref_got
    assert counters["tun_rx_malformed"] == ref_counters["tun_rx_malformed"]


@settings(max_examples=40, deadline=None, database=None)
@given(version=st.sampled_from([4, 6]), packets=st.integers(1, SLOTS), rows=st.integers(2, 47),
       mss=st.sampled_from([536, 1000, 1348, 1368]), seed=st.integers(0, 2**32))
def test_split_train_equals_split_per_packet(version, packets, rows, mss, seed):
    rng = random.Random(seed)
    buf = bytearray(SLOT * packets)
    stride, expect = mss + 128, []
    for p in range(packets):
        frame = bytearray(tcp(version, rows, mss, rng.randrange(2**32), rng.randrange(256),
                              flags=rng.choice([0x10, 0x18, 0x19, 0x90, 0x98])))
        if version == 4:
            struct.pack_into("!H", frame, VNET_HDR_LEN + 4, rng.randrange(0x10000))  # IPv4 ID, wrapping too
        buf[p * SLOT:p * SLOT + len(frame)] = frame
        out = bytearray(stride * rows)
        lengths = split(memoryview(frame)[VNET_HDR_LEN:], decode(frame), out, stride)
        expect += [bytes(out[k * stride:k * stride + size]) for k, size in enumerate(lengths)]
    cs = 20 if version == 4 else 40
    hl = cs + 20
    out = bytearray(stride * rows * packets)
    split_train(buf, VNET_HDR_LEN, SLOT, packets, rows, out, stride, hl=hl, cs=cs, gso=mss, version=version,
                psum=_psum(buf, version))
    assert [bytes(out[j * stride:j * stride + hl + mss]) for j in range(packets * rows)] == expect


def _psum(buf: bytearray, version: int) -> int:
    from grouptun.data.offload.checksum import ones_sum
    ip = VNET_HDR_LEN
    return ones_sum(bytes(buf[ip + 12:ip + 20] if version == 4 else buf[ip + 8:ip + 40]), 6)


def test_take_refuses_what_may_not_join_and_stops_at_the_last_slot():
    train = Train(3)
    frames = [tcp(4, 4, 1000, 0, 1), tcp(4, 4, 1000, 4000, 2), tcp(4, 4, 1000, 8000, 3)]
    for index, f in enumerate(frames):
        train.slots[index][:len(f)] = f
    fields = [unpack_fields(f) for f in frames]
    assert train.take(0, len(frames[0]), fields[0], lambda *_: 8)
    assert not train.take(2, len(frames[2]), fields[2], lambda *_: 8)  # not the next slot
    assert train.take(1, len(frames[1]), fields[1], lambda *_: 8) and not train.full
    assert train.take(2, len(frames[2]), fields[2], lambda *_: 8) and train.full
    train.clear()
    other = tcp(4, 5, 1000, 0, 1)  # another segment count
    train.slots[1][:len(other)] = other
    assert train.take(0, len(frames[0]), fields[0], lambda *_: 8)
    assert not train.take(1, len(other), unpack_fields(other), lambda *_: 8)
    train.clear()
    assert not train.take(0, len(frames[0]), fields[0], lambda *_: 0)  # no room in the caller's buffers
    stream = tcp(4, 4, 1000, 4000, 2, port=40001)  # another TCP stream between the same hosts joins
    train.slots[1][:len(stream)] = stream
    assert train.take(1, len(stream), unpack_fields(stream), lambda *_: 8)
    train.clear()
    udp = super_packet(4, 17, bytes(3000), 1000)
    train.slots[0][:len(udp)] = udp
    assert not train.take(0, len(udp), unpack_fields(udp), lambda *_: 8) and len(train) == 0


def test_a_bug_mid_drain_leaves_no_train_behind():
    peers = pair()
    _, tun, _, plane = peers["alice"]
    runs = tun.runs
    tun.queue = [tcp(4, 9, 1200, 0, 1), tcp(4, 9, 1200, 10800, 2), tcp(4, 9, 1200, 21600, 3)]
    runs._train_run = lambda: (_ for _ in ()).throw(RuntimeError("boom"))
    plane.on_tun_readable()  # the data plane counts the bug and abandons the drain
    del runs._train_run
    assert plane.counters["internal_errors"] == 1 and len(runs.train) == 0
    assert plane.status()["tun_rx_malformed"] == 2  # read, never sealed
    tun.queue = [tcp(4, 9, 1200, 32400, 4), tcp(4, 9, 1200, 43200, 5)]
    plane.on_tun_readable()
    assert plane.counters["internal_errors"] == 1 and plane.counters["tx_runs"] >= 1


def test_a_drain_stops_after_its_byte_budget_and_the_next_one_goes_on():
    from grouptun.data.plane import DRAIN_BYTES
    frames = [tcp(4, 40, 1300, 1000 + k * 52000, k) for k in range(20)]
    per_read = len(frames[0])
    peers = pair()
    _, tun, _, plane = peers["alice"]
    tun.queue = list(frames)
    plane.on_tun_readable()
    assert len(tun.queue) == 20 - -(-DRAIN_BYTES // per_read)  # the other direction gets its turn
    plane.on_tun_readable()
    assert tun.queue == []
    bob_udp, bob_plane = peers["bob"][2], peers["bob"][3]
    received = len(bob_udp.inbox)
    bob_plane.on_udp_readable()
    assert 0 < received - len(bob_udp.inbox) < received  # Bob's drain stops at the budget too
    while bob_udp.inbox:
        bob_plane.on_udp_readable()
    assert packets_of(peers["bob"][1].written) == expected_packets(frames)
