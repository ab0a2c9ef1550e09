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

import numpy as np

from grouptun.data.offload.checksum import complete_rows

_ROWS = np.arange(4096, dtype=np.uint32)  # row numbers, sliced instead of a new arange per call


def split_full_rows(pkt: memoryview, out: bytearray, offset: int, stride: int, rows: int, *, hl: int, cs: int,
                    gso: int, version: int, tcp: bool, first_id: int, first_seq: int, flags: int,
                    ip_base: int, psum: int, csum_at: int, final: bool = False) -> None:
    """Write segments 0..rows-1 (each ``hl + gso`` bytes) of the super-packet ``pkt`` into ``out``.

    ``final``: row rows-1 is the super-packet's last segment (it keeps FIN/PSH).

    Every row gets one header template (what all segments share, checksum fields zero) and its
    payload, then the per-row fields are written in place through strided views: IPv4 ID and header
    checksum (ID + k, so the checksum goes down by one per row, plus 0xFFFF from the row where the
    folded sum carries), TCP sequence, the flags of the first and last row, and last the transport
    checksum, one sum per row over its TCP/UDP header and payload together. Sums are taken in host
    byte order and written through a host-order view, so no value is ever byte-swapped: the
    ones'-complement sum is arithmetic mod 0xFFFF, where swapping the two bytes of a word
    multiplies it by 256 (RFC 1071); only the constant part (pseudo-header and length) is swapped,
    once. ``(t - 1) % 0xFFFF + 1`` is the end-around-carry fold of t > 0; a row of at most 32767
    words cannot overflow the 32-bit sums. Every numpy call costs a fraction of a microsecond
    whatever its size, hence so few of them.
    """
    seg_len = hl + gso
    k = _ROWS[:rows]
    head = bytearray(pkt[:hl])
    if version == 4:
        head[2:4] = seg_len.to_bytes(2, "big")
        head[10] = head[11] = 0
    else:
        head[4:6] = (seg_len - 40).to_bytes(2, "big")
    if tcp:
        head[cs + 13] = flags & ~0x89  # no FIN/PSH before the last segment, CWR only on the first
    else:
        head[cs + 4:cs + 6] = (seg_len - cs).to_bytes(2, "big")
    head[csum_at] = head[csum_at + 1] = 0
    b = np.ndarray((rows, seg_len), np.uint8, buffer=out, offset=offset, strides=(stride, 1))
    b[:, :hl] = np.frombuffer(head, np.uint8)
    b[:, hl:] = np.ndarray((rows, gso), np.uint8, buffer=pkt, offset=hl)
    # Per-row values are computed in small native arrays, then written through one strided view each:
    # a ufunc writing straight into a strided big-endian view costs twice as much.
    if version == 4:
        words = np.ndarray((rows, 6), ">u2", buffer=out, offset=offset, strides=(stride, 2))
        words[:, 2], words[:, 5] = _ipv4_ids(k, first_id, _fold(ip_base + seg_len))
    if tcp:
        np.ndarray((rows,), ">u4", buffer=out, offset=offset + cs + 4, strides=(stride,))[:] = \
            _steps(gso, rows) + np.uint32(first_seq)  # wraps mod 2^32, as TCP does
        out[offset + cs + 13] = flags & ~0x09
        if final:
            out[offset + (rows - 1) * stride + cs + 13] = flags & ~0x80 if rows > 1 else flags
    _transport_checksums(out, offset, stride, rows, seg_len, cs, csum_at, psum, tcp)


def split_train(buf: bytearray, first: int, slot: int, packets: int, rows: int, out: bytearray, stride: int, *,
                hl: int, cs: int, gso: int, version: int, psum: int) -> None:
    """Segments of ``packets`` TCP super-packets of one flow at once: packet p's IP packet lies at
    ``buf[first + p * slot:]`` and holds exactly ``rows`` full segments of ``gso`` bytes; segment k of
    packet p goes to row ``p * rows + k`` of ``out`` (at ``stride``), as ``split_full_rows(final=True)``
    would write it. The caller checked every packet (IPv4 without options or IPv6 without extension
    headers, same addresses (``psum``), header length and sizes; ``hl`` a multiple of 4); ports,
    sequence numbers and flags are each packet's own.

    The per-packet fields (IPv4 ID, TCP sequence, flags) are read from all headers at once and the
    headers fanned out to every row, so the fixed cost of the numpy steps is paid once for the whole
    train instead of once per super-packet.
    """
    seg_len, total = hl + gso, packets * rows
    templ = np.ndarray((packets, hl), np.uint8, buffer=buf, offset=first, strides=(slot, 1)).copy()
    words = templ.view(">u2")
    flags = templ[:, cs + 13].copy()
    seqs = templ.view(">u4")[:, (cs + 4) // 4].astype(np.uint32)
    templ[:, cs + 13] = flags & 0x76  # no FIN/PSH before the last segment, CWR only on the first
    templ[:, cs + 16:cs + 18] = 0
    if version == 4:
        ids = words[:, 2].astype(np.uint32)
        words[:, 1], words[:, 2], words[:, 5] = seg_len, 0, 0
        bases = np.add.reduce(words[:, :10], axis=1, dtype=np.uint32)
        bases -= 1
        bases %= 0xFFFF
        bases += 1  # folded, never 0: the version byte is in it
    else:
        words[:, 2] = seg_len - 40
    which, k = _train_rows(packets, rows)
    head = templ[which]
    if version == 4:
        row_ids = ids[which]
        row_ids += k
        row_ids &= 0xFFFF
        head.view(">u2")[:, 2] = row_ids
        row_ids += bases[which]  # <= 0x1FFFE: one carry fold is enough
        head.view(">u2")[:, 5] = 0xFFFF - ((row_ids & 0xFFFF) + (row_ids >> 16))
    row_seqs = seqs[which]
    row_seqs += _steps(gso, rows)[k]  # wraps mod 2^32, as TCP does
    head.view(">u4")[:, (cs + 4) // 4] = row_seqs
    if rows > 1:
        head[::rows, cs + 13] = flags & 0xF6  # the first keeps CWR
        head[rows - 1::rows, cs + 13] = flags & 0x7F  # the last keeps FIN/PSH
    else:
        head[:, cs + 13] = flags
    np.ndarray((total, hl), np.uint8, buffer=out, strides=(stride, 1))[:] = head
    np.ndarray((packets, rows, gso), np.uint8, buffer=out, offset=hl, strides=(rows * stride, stride, 1))[:] = \
        np.ndarray((packets, rows, gso), np.uint8, buffer=buf, offset=first + hl, strides=(slot, gso, 1))
    _transport_checksums(out, 0, stride, total, seg_len, cs, cs + 16, psum, True)


def _train_rows(packets: int, rows: int) -> tuple:
    """(packet of each row, row number within its packet), kept per shape."""
    got = _TRAIN_ROWS.get((packets, rows))
    if got is None:
        if len(_TRAIN_ROWS) >= 64:
            _TRAIN_ROWS.clear()
        got = _TRAIN_ROWS[(packets, rows)] = (np.repeat(np.arange(packets), rows),
                                              np.tile(np.arange(rows, dtype=np.uint32), packets))
    return got


_TRAIN_ROWS: dict[tuple[int, int], tuple] = {}


def _transport_checksums(out: bytearray, offset: int, stride: int, rows: int, seg_len: int, cs: int, csum_at: int,
                         psum: int, tcp: bool) -> None:
    """TCP/UDP checksum of each row (its field zero), one sum per row over header and payload together."""
    span = seg_len - cs
    complete_rows(out, offset + cs, stride, rows, span, csum_at - cs, _fold(psum + span), zero_as_ffff=not tcp)


def _ipv4_ids(k, first_id: int, base: int) -> tuple:
    """IPv4 IDs (first_id + k, mod 2^16) and header checksums of the rows; ``base`` is the folded sum of
    the rest of the header."""
    rows = len(k)
    ids = k + first_id
    if first_id + rows - 1 > 0xFFFF:  # the ID wraps within the run: the general form
        ids &= 0xFFFF
        values = ids + base  # <= 0x1FFFE: one carry fold is enough
        return ids, 0xFFFF - ((values & 0xFFFF) + (values >> 16))
    # 0xFFFF - fold(first_id + base + j): down by one per row, up by 0xFFFF from the row where it carries
    top = 0xFFFF - first_id - base
    carry = 0x10000 - first_id - base
    if carry >= rows:
        return ids, np.uint32(top) - k
    checks = np.uint32(top + 0xFFFF) - k
    if carry > 0:
        checks[:carry] -= 0xFFFF
    return ids, checks


_STEPS: dict[int, np.ndarray] = {}


def _steps(gso: int, rows: int) -> np.ndarray:
    """k * gso for k < rows (uint32), kept per segment size."""
    steps = _STEPS.get(gso)
    if steps is None or len(steps) < rows:
        if len(_STEPS) >= 16:
            _STEPS.clear()
        steps = _STEPS[gso] = _ROWS * np.uint32(gso)
    return steps[:rows]


def _fold(value: int) -> int:
    """End-around-carry fold of a non-negative int to 16 bits (0 stays 0)."""
    while value >> 16:
        value = (value & 0xFFFF) + (value >> 16)
    return value
