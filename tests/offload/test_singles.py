"""Plain TUN packets gathered per drain (offload.singles) and sealed as runs.

Reference: the same packets through the same data path with gathering turned
off (each sealed alone), on an identical session: the datagrams sent must be
the same bytes, in the same order, and the receiver must get the packets the
kernel would (full checksums).
"""

from __future__ import annotations

import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from grouptun.data.offload import checksum
from grouptun.data.offload.singles import STRIDE, Singles
from grouptun.data.offload.vnet import F_NEEDS_CSUM, VNET_HDR_LEN, decode
from tests.daemon.test_dataplane_offload import packets_of, pair, super_packet

np = pytest.importorskip("numpy")


def no_ip_id(packets: list[bytes]) -> list[bytes]:
    """IPv4 packets without ID and header checksum: merged UDP datagrams come back from the kernel's
    segmentation (here: segment()) with IDs counted up from the first one's, like any GSO packet."""
    return [p[:4] + b"\0\0" + p[6:10] + b"\0\0" + p[12:] if p[0] >> 4 == 4 else p for p in packets]


def by_flow(packets: list[bytes]) -> dict:
    """Packets per flow, in order (the receiver's coalescer keeps each flow's order, not the order
    between flows)."""
    flows: dict = {}
    for p in no_ip_id(packets):
        l4 = 40 if p[0] >> 4 == 6 else 20
        key = (p[6] if p[0] >> 4 == 6 else p[9], p[8:40] if p[0] >> 4 == 6 else p[12:20], p[l4:l4 + 4])
        flows.setdefault(key, []).append(p)
    return flows


def full(frame: bytes) -> bytes:
    """What the packet of a TUN frame is once its partial checksum is finished (as the kernel would)."""
    hdr = decode(frame)
    pkt = bytearray(frame[VNET_HDR_LEN:])
    if hdr.flags & F_NEEDS_CSUM:
        value = checksum.checksum(pkt[hdr.csum_start:])
        struct.pack_into("!H", pkt, hdr.csum_start + hdr.csum_offset, value or 0xFFFF)
    return bytes(pkt)


@settings(max_examples=60, deadline=None, database=None)
@given(version=st.sampled_from([4, 6]), proto=st.sampled_from([6, 17]), size=st.integers(1, 1400),
       count=st.integers(1, 12), last=st.integers(0, 1400), seed=st.integers(0, 2**32))
def test_completed_checksums_equal_one_at_a_time(version, proto, size, count, last, seed):
    rng = random.Random(seed)
    frames = [super_packet(version, proto, rng.randbytes(size), 65535) for _ in range(count - 1)]
    frames.append(super_packet(version, proto, rng.randbytes(min(last, size) or 1), 65535))
    singles = Singles(bytearray(STRIDE * 16))
    for f in frames:
        hdr = decode(f)
        assert singles.add(memoryview(f)[VNET_HDR_LEN:], hdr.flags, hdr.csum_start, hdr.csum_offset)
    singles.complete(0, count)
    assert [bytes(singles.packet(j)) for j in range(count)] == [full(f) for f in frames]


def test_too_long_or_full_is_refused_and_bad_checksum_location_raises():
    singles = Singles(bytearray(STRIDE * 2))
    assert not singles.add(memoryview(bytes(STRIDE + 1)), 0, 0, 0)
    assert singles.add(memoryview(bytes(100)), 0, 0, 0) and singles.add(memoryview(bytes(100)), 0, 0, 0)
    assert not singles.add(memoryview(bytes(100)), 0, 0, 0) and len(singles) == 2
    from grouptun.errors import OffloadError
    with pytest.raises(OffloadError):
        Singles(bytearray(STRIDE)).add(memoryview(bytes(60)), F_NEEDS_CSUM, 58, 6)


def drain(frames: list[bytes], gather: bool):
    """Alice's data path reads ``frames`` in one drain; returns what her socket sent and what Bob wrote."""
    peers = pair()
    _, tun, udp, plane = peers["alice"]
    if not gather:
        tun.runs.singles.add = lambda *_: False  # the reference: every packet sealed alone
    tun.queue = list(frames)
    plane.on_tun_readable()
    bob_udp, bob_plane = peers["bob"][2], peers["bob"][3]
    sent = [d for d, _, _ in bob_udp.inbox]
    segs = [seg for _, seg, _ in bob_udp.inbox]
    bob_plane.on_udp_readable()
    return sent, segs, packets_of(peers["bob"][1].written), plane.counters, peers["bob"][3].counters


@settings(max_examples=40, deadline=None, database=None)
@given(data=st.data(), n=st.integers(1, 40))
def test_gathered_singles_seal_like_one_by_one(data, n):
    """Mixed streams (UDP/TCP, v4/v6, sizes, a super-packet in between): same datagrams as sealing
    each packet alone, and Bob gets exactly the packets Alice's kernel handed over."""
    frames = []
    for _ in range(n):
        kind = data.draw(st.sampled_from(["udp4", "udp6", "tcp4", "big", "same"]))
        if kind == "same" and frames:
            frames.append(frames[-1])
        elif kind == "big":
            frames.append(super_packet(4, 6, bytes(range(256)) * 12, 1000))
        else:
            size = data.draw(st.integers(1, 1300))
            frames.append(super_packet(6 if kind == "udp6" else 4, 6 if kind == "tcp4" else 17, bytes(size), 65535))
    sent, segs, got, _, _ = drain(frames, gather=True)
    ref_sent, ref_segs, ref_got, _, _ = drain(frames, gather=False)
    split_sent = [d[k:k + s] for d, s in zip(sent, segs) for k in range(0, len(d), s)]
    split_ref = [d[k:k + s] for d, s in zip(ref_sent, ref_segs) for k in range(0, len(d), s)]
    assert split_sent == split_ref
    want = []
    for f in frames:
        hdr = decode(f)
        if hdr.gso_kind:
            from grouptun.data.offload.segment import segment
            want += segment(f[VNET_HDR_LEN:], hdr)
        else:
            want.append(full(f))
    assert by_flow(got) == by_flow(want)


def test_a_udp_stream_is_one_run_and_one_send_after_the_first_packet():
    # The first packet of a drain leaves at once (a lone packet must not wait for the drain: idle RTT);
    # the rest of the stream is one run and one send.
    frames = [super_packet(4, 17, bytes([k]) * 1200, 65535) for k in range(30)]
    sent, segs, got, alice, _ = drain(frames, gather=True)
    assert alice["tx_runs"] == 2 and len(sent) == 2 and segs == [1200 + 28 + 28] * 2
    assert len(sent[0]) == 1256 and len(sent[1]) == 29 * 1256
    assert no_ip_id(got) == no_ip_id([full(f) for f in frames])


def test_unroutable_stream_counts_one_drop_per_packet():
    frames = [super_packet(4, 17, bytes(100), 65535) for _ in range(6)]
    peers = pair()
    session, tun, _, plane = peers["alice"]
    frames = [f[:VNET_HDR_LEN + 16] + bytes([10, 77, 0, 9]) + f[VNET_HDR_LEN + 20:] for f in frames]
    tun.queue = list(frames)
    plane.on_tun_readable()
    assert sum(session.drops.values()) == 6 and plane.counters["udp_tx"] == 0
