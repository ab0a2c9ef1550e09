"""TSO/USO super-packet -> MTU-sized IP packets (what a NIC would do).

A TUN opened with ``IFF_VNET_HDR`` and ``TUNSETOFFLOAD(TSO4|TSO6|USO4|USO6)``
hands us up to 64 KiB TCP/UDP "super-packets" with a partial checksum. Each
output segment is a complete, ordinary IP packet: IPv4 total length, ID
(first ID + k) and header checksum; IPv6 payload length; TCP sequence number
(first + k * gso_size), FIN/PSH only on the last segment and CWR only on the
first (as the kernel's tcp_gso_segment does); UDP length per segment; full
TCP/UDP checksums. So a receiver without offloads gets packets it can use.

Malformed input of any kind raises OffloadError with the reason, and no
other exception (each length is checked before the bytes it guards are read,
and all of them before anything is written), so the caller needs to catch
that one class only to drop and count.

Limits: IPv6 extension headers before TCP/UDP are refused (OffloadError);
IPv4 options are kept and copied to every segment; segments longer than the
16-bit IP length fields allow are refused.
"""

from __future__ import annotations

import struct

from grouptun.errors import OffloadError
from grouptun.data.offload import checksum
from grouptun.data.offload.checksum import fold_add, ones_sum, strided_ones_sums
from grouptun.data.offload.vnet import (F_NEEDS_CSUM, GSO_NONE, GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4, VnetHdr)

TCP_FIN = 0x01
TCP_PSH = 0x08
TCP_CWR = 0x80
PROTO_TCP = 6
PROTO_UDP = 17

_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_LEN_ID = struct.Struct("!HH")
# The vectorised body takes runs of full-size segments from 4 (below, its fixed cost is more than the
# loop's) to 4096 (the row numbers it keeps precomputed); other runs take the Python loop.
_FAST_ROWS_MIN, _FAST_ROWS_MAX = 4, 4096

try:
    from grouptun.data.offload.fastsplit import split_full_rows
except ImportError:  # pragma: no cover - numpy missing: checksum.HAVE_NUMPY is False too
    split_full_rows = None


def _headers(pkt: memoryview, hdr: VnetHdr) -> tuple[int, int, int, bytes]:
    """Validate the super-packet and its GSO fields; return (ip version, L4 offset, header length, src+dst)."""
    kind = hdr.gso_kind
    if kind not in (GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4):
        raise OffloadError(f"cannot segment gso_type {hdr.gso_type:#x}")
    if hdr.gso_size <= 0:
        raise OffloadError(f"GSO super-packet with gso_size {hdr.gso_size}")
    proto = PROTO_UDP if kind == GSO_UDP_L4 else PROTO_TCP
    if len(pkt) < 20:
        raise OffloadError(f"super-packet of {len(pkt)} bytes is shorter than an IP header")
    version = pkt[0] >> 4
    cs = hdr.csum_start
    if version == 4:
        ihl = (pkt[0] & 0x0F) * 4
        if kind == GSO_TCPV6 or ihl < 20 or pkt[9] != proto or cs != ihl:
            raise OffloadError("IPv4 super-packet does not match its virtio-net header")
        addrs = bytes(pkt[12:20])
    elif version == 6:
        if kind == GSO_TCPV4 or len(pkt) < 40 or pkt[6] != proto or cs != 40:
            raise OffloadError("IPv6 super-packet does not match its virtio-net header (extension headers?)")
        addrs = bytes(pkt[8:40])
    else:
        raise OffloadError(f"super-packet of IP version {version}")
    want_off = 6 if proto == PROTO_UDP else 16
    if hdr.csum_offset != want_off or len(pkt) < cs + (8 if proto == PROTO_UDP else 20):
        raise OffloadError("super-packet transport header missing or checksum offset wrong")
    l4_len = 8 if proto == PROTO_UDP else (pkt[cs + 12] >> 4) * 4
    if l4_len < 8 or len(pkt) <= cs + l4_len:
        raise OffloadError("super-packet has a bad TCP data offset or no payload")
    return version, cs, cs + l4_len, addrs


def _check_room(version: int, hl: int, gso: int, total: int, out_len: int, stride: int, offset: int) -> int:
    """The number of segments, once every one fits both its length fields and ``out``; else OffloadError."""
    count = -(-(total - hl) // gso)
    longest = hl + min(gso, total - hl)
    # IPv4 total length / IPv6 payload length (which bounds the UDP length too) are 16 bits.
    if longest - (40 if version == 6 else 0) > 0xFFFF:
        raise OffloadError(f"segments of {longest} bytes do not fit an IPv{version} length field")
    if offset < 0:
        raise OffloadError(f"negative output offset {offset}")
    last_end = offset + (count - 1) * stride + total - (count - 1) * gso
    if stride < hl + gso or last_end > out_len:
        raise OffloadError(f"output buffer too small for {count} segments")
    return count


def _template(pkt: memoryview, o: memoryview, offset: int, version: int, cs: int, hl: int,
              tcp: bool) -> tuple[int, int, int, int]:
    """Copy the headers to segment 0; return (first IPv4 ID, IPv4 header sum, first TCP sequence, TCP flags).

    Values a segment does not have are 0. The header sum leaves out total length, ID and checksum:
    those three change per segment.
    """
    o[offset:offset + hl] = pkt[:hl]
    first_id = ip_base = first_seq = flags = 0
    if version == 4:
        first_id = _U16.unpack_from(pkt, 4)[0]
        o[offset + 2:offset + 6] = b"\0\0\0\0"
        o[offset + 10] = o[offset + 11] = 0
        ip_base = ones_sum(o[offset:offset + cs])
    if tcp:
        first_seq = _U32.unpack_from(pkt, cs + 4)[0]
        flags = pkt[cs + 13]
    return first_id, ip_base, first_seq, flags


def split(packet: bytes | bytearray | memoryview, hdr: VnetHdr, out: bytearray, stride: int,
          offset: int = 0) -> list[int]:
    """Cut ``packet`` (the bytes after the virtio-net header) into ``out``.

    Segment k is written at ``out[offset + k * stride:]``; the returned list
    holds each segment's length. A non-GSO packet comes back as one segment,
    its checksum completed if the header says it is partial. ``out`` must hold
    every segment (``stride >= header length + gso_size``). Malformed input
    (packet, header fields, a segment longer than its length fields allow)
    and a too-small ``out`` raise OffloadError with the reason, and nothing
    else: every length is checked before a byte is copied, and nothing useful
    is in ``out`` then.
    """
    pkt = memoryview(packet)
    if hdr.gso_kind == GSO_NONE:
        return [_single(pkt, hdr, out, offset)]
    version, cs, hl, addrs = _headers(pkt, hdr)
    gso, total = hdr.gso_size, len(pkt)
    count = _check_room(version, hl, gso, total, len(out), stride, offset)
    tcp = hdr.gso_kind != GSO_UDP_L4
    o = memoryview(out)  # one view for the helpers: every write is into it, so ``out`` is never resized
    first_id, ip_base, first_seq, flags = _template(pkt, o, offset, version, cs, hl, tcp)
    psum = ones_sum(addrs, PROTO_TCP if tcp else PROTO_UDP)
    csum_at = cs + (16 if tcp else 6)
    final_full = (total - hl) % gso == 0  # the last segment is full-size too: numpy can take it
    rows = count if final_full else count - 1
    first_k = 0
    if _FAST_ROWS_MIN <= rows <= _FAST_ROWS_MAX and checksum.HAVE_NUMPY:
        split_full_rows(pkt, out, offset, stride, rows, hl=hl, cs=cs, gso=gso, version=version, tcp=tcp,
                        first_id=first_id, first_seq=first_seq, flags=flags, ip_base=ip_base,
                        psum=psum, csum_at=csum_at, final=final_full)
        if final_full:
            return [hl + gso] * rows
        first_k = rows
    lengths = [hl + gso] * first_k
    _cut(pkt, o, offset, stride, first_k, count, lengths, (hl, cs, gso, version, tcp, csum_at),
         (first_id, ip_base, first_seq, flags))
    _transport_checksums(o, offset, stride, first_k, lengths, hl + gso - cs, cs, csum_at, psum, tcp)
    return lengths


def _cut(pkt: memoryview, o: memoryview, offset: int, stride: int, first_k: int, count: int, lengths: list[int],
         shape: tuple, firsts: tuple) -> None:
    """Write segments first_k..count-1 (transport checksum zeroed) and append their lengths to ``lengths``."""
    hl, cs, gso, version, tcp, csum_at = shape
    first_id, ip_base, first_seq, flags = firsts
    total, last = len(pkt), count - 1
    for k in range(first_k, count):
        base = offset + k * stride
        start = hl + k * gso
        end = min(start + gso, total)
        seg_len = hl + end - start
        if k:
            o[base:base + hl] = o[offset:offset + hl]
        o[base + hl:base + seg_len] = pkt[start:end]
        if version == 4:
            ident = (first_id + k) & 0xFFFF
            _LEN_ID.pack_into(o, base + 2, seg_len, ident)
            _U16.pack_into(o, base + 10, ~fold_add(ip_base, seg_len, ident) & 0xFFFF)
        else:
            _U16.pack_into(o, base + 4, seg_len - 40)
        l4 = base + cs
        if tcp:
            _U32.pack_into(o, l4 + 4, (first_seq + k * gso) & 0xFFFFFFFF)
            f = flags
            if k != last:
                f &= ~(TCP_FIN | TCP_PSH)
            if k:
                f &= ~TCP_CWR
            o[l4 + 13] = f
        else:
            _U16.pack_into(o, l4 + 4, seg_len - cs)
        o[base + csum_at] = o[base + csum_at + 1] = 0
        lengths.append(seg_len)


def _transport_checksums(o: memoryview, offset: int, stride: int, first_k: int, lengths: list[int], full_len: int,
                         cs: int, csum_at: int, psum: int, tcp: bool) -> None:
    """TCP/UDP checksums of segments first_k.. (the ones :func:`_cut` wrote), in one batch."""
    last = len(lengths) - 1
    loop_full = last - first_k
    sums = strided_ones_sums(o, offset + first_k * stride + cs, stride, loop_full, full_len) if loop_full else []
    at = offset + last * stride
    sums.append(ones_sum(o[at + cs:at + lengths[-1]]))
    for j, s in enumerate(sums):
        k = first_k + j
        c = ~fold_add(s, psum, lengths[k] - cs) & 0xFFFF
        if c == 0 and not tcp:
            c = 0xFFFF  # UDP: 0 means "no checksum"
        _U16.pack_into(o, offset + k * stride + csum_at, c)


def _single(pkt: memoryview, hdr: VnetHdr, out: bytearray, offset: int) -> int:
    """Copy one packet, finishing a partial checksum (CHECKSUM_PARTIAL) if flagged."""
    n = len(pkt)
    if offset < 0 or offset + n > len(out):
        raise OffloadError("output buffer too small for the packet")
    o = memoryview(out)
    o[offset:offset + n] = pkt
    if hdr.flags & F_NEEDS_CSUM:
        at = hdr.csum_start + hdr.csum_offset
        if hdr.csum_start < 0 or hdr.csum_offset < 0 or hdr.csum_start >= n or at + 2 > n:
            raise OffloadError("partial checksum location outside the packet")
        # The field holds the pseudo-header sum; summing over it completes the checksum.
        c = checksum.checksum(o[offset + hdr.csum_start:offset + n])
        _U16.pack_into(out, offset + at, c or 0xFFFF)
    return n


def segment(packet: bytes | bytearray | memoryview, hdr: VnetHdr) -> list[bytes]:
    """Convenience form of ``split``: a list of independent packets."""
    pkt = memoryview(packet)
    stride = len(pkt) if hdr.gso_kind == GSO_NONE else hdr.gso_size + _header_room(pkt, hdr)
    count = 1 if hdr.gso_kind == GSO_NONE else max(1, -(-len(pkt) // max(1, hdr.gso_size)))
    out = bytearray(stride * count)
    lengths = split(pkt, hdr, out, stride)
    return [bytes(out[k * stride:k * stride + n]) for k, n in enumerate(lengths)]


def _header_room(pkt: memoryview, hdr: VnetHdr) -> int:
    return _headers(pkt, hdr)[2]
