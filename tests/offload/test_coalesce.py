import struct

from hypothesis import given, settings, strategies as st

from grouptun.data.offload import segment as seg
from grouptun.data.offload.coalesce import Coalescer
from grouptun.data.offload.vnet import (F_NEEDS_CSUM, GSO_NONE, GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4, VNET_HDR_LEN,
                                   decode)
from offload_pktgen import ref_ip4_ok, ref_l4_ok, ref_sum, super_packet, tcp_packet, udp_packet

ACK, PSH, FIN = 0x10, 0x08, 0x01


def resegment(write: bytes) -> list[bytes]:
    """What the kernel makes of one TUN write: the packet, or its GSO segments."""
    hdr = decode(write)
    pkt = bytes(write[VNET_HDR_LEN:])
    if hdr.gso_kind == GSO_NONE:
        assert hdr.flags == 0
        return [pkt]
    # merged: pseudo-header sum in the field, lengths and IPv4 header checksum already right
    v6 = pkt[0] >> 4 == 6
    if not v6:
        assert ref_ip4_ok(pkt) and struct.unpack_from("!H", pkt, 2)[0] == len(pkt)
    else:
        assert struct.unpack_from("!H", pkt, 4)[0] == len(pkt) - 40
    src, dst = (pkt[8:24], pkt[24:40]) if v6 else (pkt[12:16], pkt[16:20])
    proto = 17 if hdr.gso_kind == GSO_UDP_L4 else 6
    at = hdr.csum_start + hdr.csum_offset
    assert struct.unpack_from("!H", pkt, at)[0] == ref_sum(src + dst + struct.pack("!HH", proto, len(pkt) - hdr.csum_start))
    assert hdr.flags == F_NEEDS_CSUM
    return seg.segment(pkt, hdr)


def run(packets, **kw) -> list[bytes]:
    c = Coalescer(**kw)
    for p in packets:
        c.add(p)
    return [bytes(w) for w in c.flush()]


@settings(max_examples=120, deadline=None)
@given(v6=st.booleans(), payload=st.binary(min_size=1, max_size=6000), gso=st.integers(1, 1448),
       seq=st.integers(0, 2**32 - 1), flags=st.sampled_from([ACK, ACK | PSH, ACK | PSH | FIN]),
       opts=st.sampled_from([b"", b"\x01\x01\x08\x0a" + bytes(range(8))]), verify=st.booleans())
def test_segment_then_coalesce_is_identity(v6, payload, gso, seq, flags, opts, verify):
    pkt, hdr = super_packet(v6, True, payload, gso, seq=seq, flags=flags, options=opts)
    segs = seg.segment(pkt, hdr)
    writes = run(segs, verify_checksums=verify)
    again = [s for w in writes for s in resegment(w)]
    assert again == segs  # byte for byte, IDs and checksums included
    # everything merges except a FIN segment (never a candidate); 64 KiB per write bounds each item
    hl = hdr.hdr_len
    per_item = 1 + (65535 - hl - gso) // gso
    mergeable = len(segs) - (1 if flags & FIN else 0)
    assert len(writes) == -(-mergeable // per_item) + (1 if flags & FIN else 0)


@settings(max_examples=60, deadline=None)
@given(v6=st.booleans(), payload=st.binary(min_size=1, max_size=5000), gso=st.integers(1, 1400))
def test_udp_segment_then_coalesce_is_identity(v6, payload, gso):
    pkt, hdr = super_packet(v6, False, payload, gso)
    segs = seg.segment(pkt, hdr)
    writes = run(segs, udp=True)
    assert [s for w in writes for s in resegment(w)] == segs
    assert len(writes) == 1
    assert run(segs, udp=False) == [bytes(VNET_HDR_LEN) + s for s in segs]


def test_interleaved_flows_merge_separately_and_keep_per_flow_order():
    # IPv4 IDs advance by one per segment, as the kernel's GSO would re-create them
    a = [tcp_packet(False, 1000 + i * 100, bytes([i]) * 100, sport=1, ident=7 + i) for i in range(4)]
    b = [tcp_packet(False, 5000 + i * 100, bytes([9 + i]) * 100, sport=2, ident=70 + i) for i in range(4)]
    mixed = [p for pair in zip(a, b) for p in pair]
    writes = run(mixed)
    assert len(writes) == 2
    got = {w[VNET_HDR_LEN + 20:VNET_HDR_LEN + 22]: resegment(w) for w in writes}
    assert got[b"\x00\x01"] == a and got[b"\x00\x02"] == b


def test_gap_reorder_ack_change_and_psh_break_the_item():
    p = [tcp_packet(True, 1000 + i * 100, b"x" * 100) for i in range(6)]
    # gap: 0,1 then 3 -> two items
    assert len(run([p[0], p[1], p[3]])) == 2
    # reordered: 1 before 0 -> no prepend, per-flow order kept
    assert [s for w in run([p[1], p[0]]) for s in resegment(w)] == [p[1], p[0]]
    # ACK number change
    q = tcp_packet(True, 1200, b"x" * 100, ack=778)
    assert len(run([p[0], p[1], q])) == 2
    # PSH ends an item
    psh = tcp_packet(True, 1100, b"x" * 100, flags=ACK | PSH)
    assert len(run([p[0], psh, p[2]])) == 2
    # a longer segment after a shorter one cannot merge; nothing may follow a short one
    short = tcp_packet(True, 1100, b"x" * 50)
    assert len(run([p[0], short, tcp_packet(True, 1150, b"x" * 50)])) == 2


def test_non_candidates_close_the_flow_and_stay_in_order():
    p = [tcp_packet(False, 1000 + i * 100, b"y" * 100, ident=i) for i in range(3)]
    fin = tcp_packet(False, 1200, b"", flags=ACK | FIN)
    later = tcp_packet(False, 1200, b"y" * 100)
    writes = run([p[0], p[1], fin, later])
    flat = [s for w in writes for s in resegment(w)]
    assert flat == [p[0], p[1], fin, later]
    assert len(writes) == 3


def test_bad_checksum_is_not_merged_when_verifying():
    p = [bytearray(tcp_packet(False, 1000 + i * 100, b"z" * 100)) for i in range(3)]
    p[1][-1] ^= 1
    writes = run([bytes(x) for x in p], verify_checksums=True)
    assert len(writes) == 3
    assert all(decode(w).gso_kind == GSO_NONE for w in writes)  # the kernel checks each itself
    assert not ref_l4_ok(writes[1][VNET_HDR_LEN:])
    assert len(run([bytes(x) for x in p], verify_checksums=False)) == 1


def test_other_traffic_passes_through():
    icmp = bytes.fromhex("4500001c0000400040010000") + bytes([10, 9, 0, 1, 10, 9, 0, 2]) + bytes(8)
    frag = bytearray(tcp_packet(False, 1, b"q" * 50))
    frag[6] |= 0x20  # more fragments
    tiny = b"\x45\x00"
    writes = run([icmp, bytes(frag), tiny, udp_packet(True, b"u" * 30)])
    assert [w[VNET_HDR_LEN:] for w in writes] == [icmp, bytes(frag), tiny, udp_packet(True, b"u" * 30)]
    assert all(w[:VNET_HDR_LEN] == bytes(VNET_HDR_LEN) for w in writes)


def test_size_limit_starts_a_new_item():
    p = [tcp_packet(False, i * 1400, b"s" * 1400, ident=(0xFFF0 + i) & 0xFFFF) for i in range(60)]
    writes = run(p)
    assert len(writes) == 2  # 46 * 1400 + 40 < 65535 < 47 * 1400 + 40
    assert all(len(w) - VNET_HDR_LEN <= 65535 for w in writes)
    assert decode(writes[0]).gso_type == GSO_TCPV4 and decode(writes[0]).gso_size == 1400
    assert [s for w in writes for s in resegment(w)] == p


def test_flush_empties():
    c = Coalescer()
    c.add(tcp_packet(True, 1, b"a"))
    assert len(c.flush()) == 1
    assert c.flush() == []
    assert decode(run([tcp_packet(True, 1, b"a" * 10), tcp_packet(True, 11, b"a" * 10)])[0]).gso_type == GSO_TCPV6
