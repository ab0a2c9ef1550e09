"""Vectorised body of ``segment.split`` (numpy): all full-size segments at once.

The per-segment Python loop costs ~1.5-2 us per 1420-byte packet; here the
header copy, payload copy, per-segment fields (IPv4 length/ID/checksum, TCP
sequence and flags or UDP length) and transport checksums are about fifteen
numpy operations per super-packet, whatever the number of segments. Used for
every full-size segment (the last one too when it is full-size);
``segment.split`` does a shorter last one and everything where numpy is
missing. Results are byte-identical (tests compare both paths).

Every 16/32-bit field written sits at an even (TCP sequence: a multiple of 4)
offset from the start of its IP packet, so big-endian views of each row
address them directly; numpy handles the unaligned rows.
"""

from __future__ import annotations

import sys

import numpy as np

_SWAP = sys.byteorder == "little"
_ROWS = np.arange(4096, dtype=np.uint32)  # row numbers, sliced instead of a new arange per call


def _swap16(value: int) -> int:
    return (value & 0xFF) << 8 | value >> 8 if _SWAP else value


def split_full_rows(pkt: memoryview, out: bytearray, offset: int, stride: int, rows: int, *, hl: int, cs: int,
                    gso: int, version: int, tcp: bool, first_id: int, first_seq: int, flags: int,
                    ip_base: int, psum: int, csum_at: int, final: bool = False) -> None:
    """Write segments 0..rows-1 (each ``hl + gso`` bytes) of the super-packet ``pkt`` into ``out``.

    ``final``: row rows-1 is the super-packet's last segment (it keeps FIN/PSH).

    The headers are built in a small contiguous array (rows x hl) and copied out once. Transport
    checksums are computed in host byte order and written through a host-order view, so no value
    is ever byte-swapped: the ones'-complement sum is arithmetic mod 0xFFFF, where swapping the two
    bytes of a word multiplies it by 256 (RFC 1071); only the constant part (pseudo-header and
    length) is swapped, once. ``(t - 1) % 0xFFFF + 1`` is the end-around-carry fold of t > 0; a row
    of at most 32767 words cannot overflow the 32-bit sums. Every numpy call costs about a
    microsecond whatever its size, hence so few of them.
    """
    seg_len = hl + gso
    src = np.frombuffer(pkt, dtype=np.uint8)
    payload = src[hl:hl + rows * gso].reshape(rows, gso)
    head = np.empty((rows, hl), np.uint8)
    head[:] = src[:hl]
    w = head.view(">u2")
    k = _ROWS[:rows]
    if version == 4:
        w[:, 1] = seg_len
        ids = k + first_id
        ids &= 0xFFFF
        w[:, 2] = ids
        ids += _fold(ip_base + seg_len)  # <= 0x1FFFE: one carry fold is enough
        w[:, 5] = 0xFFFF - ((ids & 0xFFFF) + (ids >> 16))
    else:
        w[:, 2] = seg_len - 40
    if tcp:
        head.view(">u4")[:, (cs + 4) // 4] = k * np.uint32(gso) + np.uint32(first_seq)  # wraps mod 2^32
        head[:, cs + 13] = flags & ~0x89  # no FIN/PSH before the last segment, CWR only on the first
        head[0, cs + 13] = flags & ~0x09
        if final:
            head[rows - 1, cs + 13] = flags & ~0x80 if rows > 1 else flags
    else:
        w[:, (cs + 4) // 2] = seg_len - cs
    native = head.view("=u2")
    native[:, csum_at // 2] = 0
    sums = native[:, cs // 2:].sum(axis=1, dtype=np.uint32)
    sums += _odd_payload_sums(payload) if gso & 1 else payload.view("=u2").sum(axis=1, dtype=np.uint32)
    sums += _swap16(_fold(psum + seg_len - cs))
    sums -= 1
    sums %= 0xFFFF
    checks = 0xFFFE - sums  # 0xFFFF - (fold), fold = sums + 1
    if not tcp:
        checks[checks == 0] = 0xFFFF  # UDP: 0 means "no checksum" (0 and 0xFFFF are both swap-invariant)
    native[:, csum_at // 2] = checks
    b = np.ndarray((rows, seg_len), np.uint8, buffer=out, offset=offset, strides=(stride, 1))
    b[:, :hl] = head
    b[:, hl:] = payload


def _fold(value: int) -> int:
    """End-around-carry fold of a non-negative int to 16 bits (0 stays 0)."""
    while value >> 16:
        value = (value & 0xFFFF) + (value >> 16)
    return value


def _odd_payload_sums(payload: np.ndarray) -> np.ndarray:
    """Host-order word sums of rows of odd length (the last byte padded with a zero, RFC 1071)."""
    even = payload.shape[1] - 1
    sums = np.ascontiguousarray(payload[:, :even]).view("=u2").sum(axis=1, dtype=np.uint32)
    tail = payload[:, even].astype(np.uint32)
    return sums + (tail if _SWAP else tail << 8)
