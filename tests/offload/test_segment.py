import struct

import pytest
from hypothesis import given, settings, strategies as st

from grouptun.errors import OffloadError
from grouptun.data.offload import segment as seg
from grouptun.data.offload.vnet import F_NEEDS_CSUM, GSO_NONE, GSO_TCPV6, VnetHdr
from offload_pktgen import (ip_header, ref_ip4_ok, ref_l4_ok, ref_sum, super_packet, tcp_header,
                            with_l4_checksum, SRC4, DST4)

FIN, PSH, ACK, CWR = 0x01, 0x08, 0x10, 0x80


def check_segments(pkt: bytes, hdr: VnetHdr, segs: list[bytes], tcp: bool) -> None:
    """Every byte of every segment, against the super-packet, with reference checksums."""
    v6 = pkt[0] >> 4 == 6
    cs = hdr.csum_start
    hl = cs + ((pkt[cs + 12] >> 4) * 4 if tcp else 8)
    payload = pkt[hl:]
    assert b"".join(s[hl:] for s in segs) == payload
    assert len(segs) == -(-len(payload) // hdr.gso_size)
    for k, s in enumerate(segs):
        last = k == len(segs) - 1
        assert len(s[hl:]) == (hdr.gso_size if not last else len(payload) - k * hdr.gso_size)
        assert len(s) <= hl + hdr.gso_size
        assert ref_l4_ok(s), f"segment {k} transport checksum"
        if v6:
            assert struct.unpack_from("!H", s, 4)[0] == len(s) - 40
            assert s[:4] == pkt[:4] and s[6:40] == pkt[6:40]
        else:
            assert ref_ip4_ok(s), f"segment {k} IPv4 header checksum"
            tot, ident = struct.unpack_from("!HH", s, 2)
            assert tot == len(s)
            assert ident == (struct.unpack_from("!H", pkt, 4)[0] + k) & 0xFFFF
            assert s[:2] == pkt[:2] and s[6:10] == pkt[6:10] and s[12:cs] == pkt[12:cs]
        if tcp:
            seq = struct.unpack_from("!I", s, cs + 4)[0]
            assert seq == (struct.unpack_from("!I", pkt, cs + 4)[0] + k * hdr.gso_size) % 2**32
            want = pkt[cs + 13]
            if not last:
                want &= ~(FIN | PSH)
            if k:
                want &= ~CWR
            assert s[cs + 13] == want
            # ports, ack, data offset, window, urgent pointer and options unchanged
            assert s[cs:cs + 4] == pkt[cs:cs + 4] and s[cs + 8:cs + 13] == pkt[cs + 8:cs + 13]
            assert s[cs + 14:cs + 16] == pkt[cs + 14:cs + 16] and s[cs + 18:hl] == pkt[cs + 18:hl]
        else:
            assert struct.unpack_from("!H", s, cs + 4)[0] == len(s) - cs
            assert s[cs:cs + 4] == pkt[cs:cs + 4]
            assert s[cs + 6:cs + 8] != b"\0\0"


tcp_opts = st.sampled_from([b"", b"\x01\x01\x08\x0a" + bytes(range(8)), bytes([1] * 40)])


@settings(max_examples=150, deadline=None)
@given(v6=st.booleans(), tcp=st.booleans(), payload=st.binary(min_size=1, max_size=4000),
       gso=st.integers(1, 1500), seq=st.integers(0, 2**32 - 1), ident=st.integers(0, 0xFFFF),
       flags=st.sampled_from([ACK, ACK | PSH, ACK | PSH | FIN, ACK | CWR, ACK | FIN]), opts=tcp_opts)
def test_split_every_byte(v6, tcp, payload, gso, seq, ident, flags, opts):
    pkt, hdr = super_packet(v6, tcp, payload, gso, seq=seq, flags=flags, options=opts, ident=ident)
    segs = seg.segment(pkt, hdr)
    check_segments(pkt, hdr, segs, tcp)


def test_split_into_strided_buffer_with_offset():
    payload = bytes(range(256)) * 20 + b"xyz"
    pkt, hdr = super_packet(False, True, payload, 1368)
    stride = 1500
    out = bytearray(b"\xaa" * (64 + 4 * stride))
    lengths = seg.split(pkt, hdr, out, stride, offset=64)
    assert len(lengths) == 4 and lengths[:3] == [1408] * 3
    segs = [bytes(out[64 + k * stride:64 + k * stride + n]) for k, n in enumerate(lengths)]
    check_segments(pkt, hdr, segs, True)
    assert out[:64] == b"\xaa" * 64  # nothing written before the offset


def test_ipv4_options_are_copied_to_every_segment():
    pkt, hdr = super_packet(False, True, b"a" * 3000, 1000, ip_options=b"\x01\x01\x01\x00")
    segs = seg.segment(pkt, hdr)
    assert len(segs) == 3
    check_segments(pkt, hdr, segs, True)


def test_ecn_bit_in_gso_type_is_accepted():
    pkt, hdr = super_packet(True, True, b"b" * 3000, 1000, flags=ACK | CWR)
    hdr = VnetHdr(hdr.flags, GSO_TCPV6 | 0x80, hdr.hdr_len, hdr.gso_size, hdr.csum_start, hdr.csum_offset)
    check_segments(pkt, hdr, seg.segment(pkt, hdr), True)


def test_non_gso_partial_checksum_is_completed():
    t = tcp_header(5, ACK | PSH)
    body = b"hello, odd length"
    pkt = bytearray(ip_header(False, 6, len(t) + len(body)) + t + body)
    ln = len(pkt) - 20
    struct.pack_into("!H", pkt, 36, ref_sum(SRC4 + DST4 + struct.pack("!HH", 6, ln)))
    (out,) = seg.segment(bytes(pkt), VnetHdr(F_NEEDS_CSUM, GSO_NONE, 0, 0, 20, 16))
    assert ref_l4_ok(out) and out[:36] == pkt[:36] and out[38:] == pkt[38:]


def test_non_gso_plain_packet_is_copied():
    p = with_l4_checksum(ip_header(True, 17, 8 + 3) + struct.pack("!HHHH", 1, 2, 11, 0) + b"abc")
    assert seg.segment(p, VnetHdr()) == [p]


@pytest.mark.parametrize("mutate", ["v6_as_v4", "proto", "csum_start", "csum_offset", "gso0", "short", "nopayload",
                                    "version"])
def test_malformed_super_packets_are_refused(mutate):
    pkt, hdr = super_packet(False, True, b"z" * 3000, 1000)
    pkt = bytearray(pkt)
    f = dict(flags=hdr.flags, gso_type=hdr.gso_type, hdr_len=hdr.hdr_len, gso_size=hdr.gso_size,
             csum_start=hdr.csum_start, csum_offset=hdr.csum_offset)
    if mutate == "v6_as_v4":
        f["gso_type"] = GSO_TCPV6
    elif mutate == "proto":
        pkt[9] = 17
    elif mutate == "csum_start":
        f["csum_start"] = 24
    elif mutate == "csum_offset":
        f["csum_offset"] = 6
    elif mutate == "gso0":
        f["gso_size"] = 0
    elif mutate == "short":
        pkt = pkt[:30]
    elif mutate == "nopayload":
        pkt = pkt[:40]
    elif mutate == "version":
        pkt[0] = 0x55
    with pytest.raises(OffloadError):
        seg.segment(bytes(pkt), VnetHdr(**f))


def test_output_buffer_too_small_is_refused():
    pkt, hdr = super_packet(False, True, b"z" * 3000, 1000)
    with pytest.raises(OffloadError):
        seg.split(pkt, hdr, bytearray(2000), 1100)
    with pytest.raises(OffloadError):
        seg.split(pkt, hdr, bytearray(10000), 1000)  # stride below header + gso_size


def test_ipv6_extension_headers_refused():
    pkt, hdr = super_packet(True, True, b"z" * 3000, 1000)
    pkt = bytearray(pkt)
    pkt[6] = 0  # hop-by-hop
    with pytest.raises(OffloadError):
        seg.segment(bytes(pkt), hdr)


@settings(max_examples=80, deadline=None)
@given(v6=st.booleans(), tcp=st.booleans(), payload=st.binary(min_size=1, max_size=9000),
       gso=st.integers(1, 1500), seq=st.integers(0, 2**32 - 1), ident=st.integers(0, 0xFFFF),
       flags=st.sampled_from([ACK | PSH | FIN, ACK | CWR | PSH]), opts=tcp_opts,
       offset=st.integers(0, 3), pad=st.integers(0, 3))
def test_vectorised_and_loop_paths_agree(v6, tcp, payload, gso, seq, ident, flags, opts, offset, pad):
    from grouptun.data.offload import checksum
    pkt, hdr = super_packet(v6, tcp, payload, gso, seq=seq, flags=flags, options=opts, ident=ident)
    hl = hdr.csum_start + ((pkt[hdr.csum_start + 12] >> 4) * 4 if tcp else 8)
    stride = hl + gso + pad  # odd strides and offsets take the slower numpy branch
    count = -(-(len(pkt) - hl) // gso)
    outs = []
    saved = checksum.HAVE_NUMPY
    try:
        for numpy_on in (saved, False):
            checksum.HAVE_NUMPY = numpy_on
            out = bytearray(offset + count * stride)
            lengths = seg.split(pkt, hdr, out, stride, offset)
            outs.append([bytes(out[offset + k * stride:offset + k * stride + n]) for k, n in enumerate(lengths)])
    finally:
        checksum.HAVE_NUMPY = saved
    assert outs[0] == outs[1]
    check_segments(pkt, hdr, outs[0], tcp)
