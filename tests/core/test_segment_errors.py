"""offload.segment.split on malformed input: it returns segments that fit ``out``, or raises
OffloadError, and nothing else (the data path counts OffloadError as a malformed TUN read).

(Here rather than in tests/offload, which another engineer owns.)
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import example, given, settings, strategies as st

from grouptun.errors import OffloadError
from grouptun.data.offload import segment
from grouptun.data.offload.vnet import F_NEEDS_CSUM, GSO_NONE, GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4, VnetHdr

U16 = st.integers(0, 0xFFFF)
SEGBUF = 4 * 65536  # the data path's split buffer
ROOM = 128  # the data path's stride is gso_size + ROOM


def _super_packet(v6: bool, tcp: bool, payload: int, gso: int) -> tuple[bytes, tuple]:
    """Headers a TUN would hand over (checksums left 0: split does not check them) + zero payload."""
    l4 = struct.pack("!HHIIBBHHH", 1, 2, 1000, 0, 5 << 4, 0x18, 100, 0, 0) if tcp else struct.pack("!HHHH", 1, 2, 0, 0)
    length = len(l4) + payload
    if v6:
        ip = struct.pack("!IHBB16s16s", 0x60000000, length & 0xFFFF, 6 if tcp else 17, 64, bytes(16), bytes(16))
    else:
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, (20 + length) & 0xFFFF, 7, 0, 64, 6 if tcp else 17, 0,
                         bytes(4), bytes(4))
    kind = (GSO_TCPV6 if v6 else GSO_TCPV4) if tcp else GSO_UDP_L4
    fields = (F_NEEDS_CSUM, kind, len(ip) + len(l4), gso, len(ip), 16 if tcp else 6)
    return ip + l4 + bytes(payload), fields


@st.composite
def mutated(draw):
    """A well-formed super-packet with a few bytes or one header field changed, or cut short."""
    packet, fields = _super_packet(draw(st.booleans()), draw(st.booleans()), draw(st.integers(1, 3000)),
                                   draw(st.integers(1, 1500)))
    packet, fields = bytearray(packet), list(fields)
    for _ in range(draw(st.integers(0, 3))):
        packet[draw(st.integers(0, min(60, len(packet) - 1)))] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        fields[draw(st.integers(0, 5))] = draw(st.integers(0, 255) | U16)
    if draw(st.booleans()):
        del packet[draw(st.integers(0, len(packet))):]
    packet += bytes(draw(st.sampled_from([0, 0, 0, 66000])))  # past the 16-bit length fields
    stride = draw(st.sampled_from([fields[3] + ROOM, fields[3] + 40, fields[3]]))
    return bytes(packet), tuple(fields), stride, draw(st.sampled_from([SEGBUF, 4096])), draw(st.sampled_from([0, 3]))


@st.composite
def arbitrary(draw):
    """Mostly arbitrary bytes, shaped now and then so that the deeper checks are reached too."""
    packet = bytearray(draw(st.binary(max_size=3000)))
    if packet and draw(st.booleans()):
        packet[0] = draw(st.sampled_from([4, 6, 5, 0])) << 4 | draw(st.integers(0, 15))
        for at in (6, 9):  # IPv6 next header / IPv4 protocol
            if len(packet) > at:
                packet[at] = draw(st.sampled_from([6, 17, 0]))
    packet += bytes(draw(st.sampled_from([0, 0, 0, 66000])))  # past the 16-bit length fields
    gso = draw(st.one_of(st.integers(0, 4), st.integers(1, 2000), U16))
    fields = (draw(st.integers(0, 255)),
              draw(st.one_of(st.sampled_from([GSO_NONE, GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4, 3, 0x81, 0x84]),
                             st.integers(0, 255))),
              draw(U16), gso,
              draw(st.one_of(st.sampled_from([20, 24, 40, 60]), U16)),
              draw(st.one_of(st.sampled_from([6, 16]), U16)))
    stride = draw(st.one_of(st.just(gso + ROOM), st.integers(-8, 5000)))
    out_len, offset = draw(st.sampled_from([SEGBUF, 4096, 64, 0])), draw(st.sampled_from([0, 5, -3]))
    return bytes(packet), fields, stride, out_len, offset


def _split_or_offload_error(packet: bytes, fields: tuple, stride: int, out_len: int, offset: int) -> list[int] | None:
    hdr = VnetHdr(*fields)
    out = bytearray(out_len)
    try:
        lengths = segment.split(packet, hdr, out, stride, offset)
    except OffloadError as exc:
        assert str(exc)  # a reason, for the log
        return None
    assert len(out) == out_len  # never resized
    if hdr.gso_kind == GSO_NONE:  # copied as it is (the sealer judges whether it is an IP packet)
        assert lengths == [len(packet)] and offset + len(packet) <= out_len
    else:
        assert lengths and all(0 < n <= stride for n in lengths)
        assert offset + (len(lengths) - 1) * stride + lengths[-1] <= out_len
    return lengths


@settings(max_examples=400, deadline=None)
@given(st.one_of(arbitrary(), mutated()))
@example((*_super_packet(False, True, 66000, 65535), 65535 + ROOM, SEGBUF, 0))  # IPv4 total length > 65535
@example((*_super_packet(True, False, 66000, 65535), 65535 + ROOM, SEGBUF, 0))  # IPv6 payload length
@example((*_super_packet(False, False, 20000, 4), 4 + 28, 10 * SEGBUF, 0))  # 5000 rows of 4 bytes
@example((*_super_packet(False, True, 2000, 100), 140, 65536, -100000))  # negative offset
@example((*_super_packet(True, True, 3000, 1000), 1000 + ROOM, SEGBUF, 0))  # well-formed
def test_split_returns_or_raises_offload_error_only(case):
    _split_or_offload_error(*case)


@pytest.mark.parametrize("v6, tcp, payload, gso, reason", [
    (False, True, 65560 - 40, 65535, "IPv4 length field"),  # one segment of 65560 bytes
    (False, True, 66000, 65535, "IPv4 length field"),
    (True, False, 66000, 65535, "IPv6 length field"),
])
def test_segments_beyond_the_length_fields_are_refused(v6, tcp, payload, gso, reason):
    packet, fields = _super_packet(v6, tcp, payload, gso)
    with pytest.raises(OffloadError, match=reason):
        segment.split(packet, VnetHdr(*fields), bytearray(SEGBUF), gso + ROOM)


def test_negative_offsets_are_refused():
    packet, fields = _super_packet(False, True, 2000, 100)
    with pytest.raises(OffloadError, match="negative output offset"):
        segment.split(packet, VnetHdr(*fields), bytearray(65536), 140, -10)
    with pytest.raises(OffloadError):
        segment.split(packet, VnetHdr(), bytearray(65536), 140, -10)
    with pytest.raises(OffloadError, match="outside the packet"):
        segment.split(packet, VnetHdr(F_NEEDS_CSUM, GSO_NONE, 0, 0, 0xFFFF, 0xFFFF), bytearray(65536), 0)


@pytest.mark.parametrize("tcp", [True, False])
def test_more_rows_than_the_vectorised_body_takes_are_cut_by_the_loop(tcp):
    packet, fields = _super_packet(False, tcp, 20000, 4)
    hl = fields[2]
    out = bytearray(5000 * (hl + 4))
    lengths = segment.split(packet, VnetHdr(*fields), out, hl + 4)
    assert lengths == [hl + 4] * 5000
    assert struct.unpack_from("!HH", out, 4999 * (hl + 4) + 2) == (hl + 4, (7 + 4999) & 0xFFFF)  # length, ID
