"""GRO for the TUN write: in-order segments of one flow -> one super-packet.

The receive path decrypts a batch of datagrams into ordinary IP packets; the
kernel takes them fastest as few large writes. ``Coalescer.add`` appends the
payload of a TCP segment to the open item of its flow when it continues it
exactly (same addresses, ports, ACK number, TCP options, ToS/TTL/DF or
traffic class/hop limit; sequence number == end of the item; only ACK or
ACK|PSH; no PSH on the item yet; not longer than the first segment and
nothing after a shorter one), as the kernel's GRO and wireguard-go do.
``flush`` returns every item as ``virtio_net_hdr || IP packet`` ready for
``os.write`` to a TUN opened with ``IFF_VNET_HDR``: merged items carry
GSO_TCPV4/6 (or GSO_UDP_L4), NEEDS_CSUM and the pseudo-header sum in the
checksum field (CHECKSUM_PARTIAL: the kernel does not re-verify them);
single packets carry an all-zero header and keep their own checksum, which
the kernel verifies.

Order: packets of one flow leave in the order they came; anything that does
not extend a flow's open item closes it. Different flows may interleave.

``verify_checksums`` (default True) checks each segment's TCP/UDP checksum
before merging it, since a merged super-packet is not checked again. The AEAD
tag already guarantees the bytes are what an authenticated member sent, so a
daemon may turn it off to save one pass over the payload.

Limits: IPv4 with options, IPv6 with extension headers and IPv4 fragments
are passed through uncoalesced. UDP coalescing is off unless ``udp=True``
(the TUN must accept GSO_UDP_L4 writes: Linux >= 6.2).
"""

from __future__ import annotations

import struct

from grouptun.data.offload.checksum import ones_sum

try:
    import numpy as np
except ImportError:  # pragma: no cover - exercised where numpy is absent
    np = None
from grouptun.data.offload.vnet import (F_NEEDS_CSUM, GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4, VNET_HDR_LEN, ZERO_HDR,
                                   pack_fields_into)

_U16 = struct.Struct("!H")
# IPv4 (no options) + TCP up to the flags byte; key = addresses + ports (12 bytes)
_V4TCP = struct.Struct("!BBHHHBBH12sIIBB")
# IPv6 + TCP: version/class/flow, payload length, next header, hop limit, key = addresses + ports (36 bytes)
_V6TCP = struct.Struct("!IHBB36sIIBB")
_TCP_ACK = 0x10
_TCP_PSH = 0x08
MAX_IP_LEN = 65535


class _Item:
    __slots__ = ("buf", "v6", "l4", "hl", "proto", "gso", "count", "next_seq", "closed", "match")

    def __init__(self, pkt, v6, l4, hl, proto, match, seq) -> None:
        self.buf = bytearray(ZERO_HDR)
        self.buf += pkt
        self.v6 = v6
        self.l4 = l4
        self.hl = hl
        self.proto = proto
        self.gso = len(pkt) - hl
        self.count = 1
        self.next_seq = (seq + self.gso) & 0xFFFFFFFF
        self.closed = False  # PSH seen, or a shorter segment ended it
        self.match = match


class Coalescer:
    """Batch-wise GRO. Works from its empty state; ``flush`` empties it again."""

    def __init__(self, *, verify_checksums: bool = True, udp: bool = False, max_len: int = MAX_IP_LEN) -> None:
        self.verify_checksums = verify_checksums
        self.udp = udp
        self.max_len = max_len
        self._open: dict[bytes, _Item] = {}
        self._out: list = []  # _Item or bytearray, in arrival order
        self.merged = 0  # packets appended to an earlier one (statistics)

    def add(self, packet: bytes | bytearray | memoryview) -> None:
        """Take one IP packet (copied; the caller may reuse its buffer)."""
        pkt = memoryview(packet)
        n = len(pkt)
        first = pkt[0] if n else 0
        # One struct call per packet for the hot case (TCP over IPv4 without options / IPv6).
        if first == 0x45 and n >= 40 and pkt[9] == 6:
            _vi, tos, tot, _id, frag, ttl, _p, _c, key, seq, ack, doff, flags = _V4TCP.unpack_from(pkt)
            if tot != n or frag & 0x3FFF:
                self._single(pkt, key)
                return
            v6, l4 = False, 20
            fixed = (tos, frag, ttl, ack, doff)
        elif first >> 4 == 6 and n >= 60 and pkt[6] == 6:
            vtc, plen, _nh, hop, key, seq, ack, doff, flags = _V6TCP.unpack_from(pkt)
            if plen != n - 40:
                self._single(pkt, None)
                return
            v6, l4 = True, 40
            fixed = (vtc >> 20, hop, ack, doff)
        else:
            self._add_other(pkt)
            return
        hl = l4 + (doff >> 4) * 4
        if hl < l4 + 20 or hl >= n or (flags != _TCP_ACK and flags != _TCP_ACK | _TCP_PSH):
            self._single(pkt, key)
            return
        match = (fixed, pkt[l4 + 20:hl].tobytes()) if hl > l4 + 20 else fixed
        item = self._open.get(key)
        size = n - hl
        if (item is not None and not item.closed and seq == item.next_seq and item.match == match
                and size <= item.gso and len(item.buf) - VNET_HDR_LEN + size <= self.max_len
                and (not self.verify_checksums or _checksum_ok(pkt, v6, l4, 6))):
            item.buf += pkt[hl:]
            item.count += 1
            item.next_seq = (seq + size) & 0xFFFFFFFF
            self.merged += 1
            if size < item.gso:
                item.closed = True
            if flags & _TCP_PSH:
                item.buf[VNET_HDR_LEN + l4 + 13] |= _TCP_PSH
                item.closed = True
            return
        if self.verify_checksums and not _checksum_ok(pkt, v6, l4, 6):
            self._single(pkt, key)
            return
        item = _Item(pkt, v6, l4, hl, 6, match, seq)
        item.closed = bool(flags & _TCP_PSH)
        self._open[key] = item
        self._out.append(item)

    def add_run(self, buf: bytearray, count: int, stride: int, size: int, last_size: int) -> bool:
        """Merge ``count`` TCP segments (or UDP datagrams, if ``udp``) at ``buf[j*stride:]`` (``size``
        bytes each, the last ``last_size``) at once, cut where a segment does not continue the one
        before it by the rules of :meth:`add` (checked with numpy over all headers: every header byte
        equal to the previous one's except lengths, IPv4 id and checksum, the transport checksum, TCP
        sequence and PSH on the last; sequence numbers consecutive), so a run may hold blocks of
        several flows (TCP streams of one sender, each block of one super-packet). A part longer than
        ``max_len`` becomes several super-packets. Every part starts afresh: an open item of its flow
        is closed first. False (nothing changed) if the segments differ in their shape (header
        lengths, IP version, fragment bits, length fields): the caller then adds them one by one.
        """
        if np is None or count < 2 or last_size > size or self.verify_checksums:  # add() checks each one
            return False
        shape = _run_shape(buf, size, last_size, self.udp)
        if shape is None:
            return False
        v6, l4, hl, proto = shape
        payload = size - hl
        per = (self.max_len - hl) // payload  # segments per super-packet
        groups = _run_groups(buf, count, stride, shape, payload, last_size) if per >= 2 else None
        if groups is None:
            return False
        for start, length in groups:
            at = start * stride
            key = bytes(buf[at + 8:at + 44] if v6 else buf[at + 12:at + 24])
            self._open.pop(key, None)  # an earlier item of the flow stays first
            self._open.pop(key + b"\x11", None)
            first, stop = start, start + length
            while first < stop:
                rows = min(per, stop - first)
                if stop == count and first + rows == count - 1 and hl + rows * payload + last_size - hl <= self.max_len:
                    rows += 1  # the shorter last one still fits, as add() would take it
                end = last_size if first + rows == count else size
                self._out.append(_merge(buf, first * stride, rows, stride, shape, payload, end))
                self.merged += rows - 1
                first += rows
        return True

    def flush(self) -> list[bytearray]:
        """Every pending write, in order; the coalescer is empty afterwards."""
        out = [x if isinstance(x, bytearray) else _finish(x) for x in self._out]
        self._out = []
        self._open.clear()
        return out

    def _add_other(self, pkt: memoryview) -> None:
        """UDP (when enabled) and everything else; TCP with IP options passes through here too."""
        n = len(pkt)
        version = pkt[0] >> 4 if n else 0
        if version == 4 and n >= 28:
            proto, l4, v6 = pkt[9], (pkt[0] & 0x0F) * 4, False
        elif version == 6 and n >= 48:
            proto, l4, v6 = pkt[6], 40, True
        else:
            self._single(pkt, None)
            return
        if not self.udp or proto != 17 or l4 != (40 if v6 else 20):
            if proto == 6 and n >= l4 + 4:
                self._single(pkt, (pkt[8:44] if v6 else pkt[12:24]).tobytes())
            else:
                self._single(pkt, None)
            return
        key = (pkt[8:44] if v6 else pkt[12:24]).tobytes() + b"\x11"
        if v6:
            ok = _U16.unpack_from(pkt, 4)[0] == n - 40
            match = (pkt[0], pkt[1] >> 4, pkt[7])
        else:
            ok = _U16.unpack_from(pkt, 2)[0] == n and not pkt[6] & 0x3F and not pkt[7]
            match = (pkt[1], pkt[6] >> 5, pkt[8])
        if not ok or _U16.unpack_from(pkt, l4 + 4)[0] != n - l4 or n == l4 + 8:
            self._single(pkt, key)
            return
        size = n - l4 - 8
        item = self._open.get(key)
        if (item is not None and not item.closed and item.match == match and size <= item.gso
                and len(item.buf) - VNET_HDR_LEN + size <= self.max_len
                and (not self.verify_checksums or _checksum_ok(pkt, v6, l4, 17))):
            item.buf += pkt[l4 + 8:]
            item.count += 1
            self.merged += 1
            if size < item.gso:
                item.closed = True
            return
        if self.verify_checksums and not _checksum_ok(pkt, v6, l4, 17):
            self._single(pkt, key)
            return
        item = _Item(pkt, v6, l4, l4 + 8, 17, match, 0)
        self._open[key] = item
        self._out.append(item)

    def _single(self, pkt: memoryview, key: bytes | None) -> None:
        """Pass a packet through unchanged; it closes its flow's open item (order)."""
        if key is not None:
            self._open.pop(key, None)
            self._open.pop(key + b"\x11", None)
        buf = bytearray(ZERO_HDR)
        buf += pkt
        self._out.append(buf)


def _merge(buf, offset: int, rows: int, stride: int, shape: tuple, payload: int, last_size: int) -> bytearray:
    """One super-packet (virtio-net header first) of the ``rows`` checked segments at ``buf[offset:]``."""
    if rows == 1:
        single = bytearray(ZERO_HDR)
        single += memoryview(buf)[offset:offset + last_size]
        return single
    v6, l4, hl, proto = shape
    last_payload = last_size - hl
    total = hl + payload * (rows - 1) + last_payload
    merged = bytearray(VNET_HDR_LEN + total)
    merged[VNET_HDR_LEN:VNET_HDR_LEN + hl] = memoryview(buf)[offset:offset + hl]
    body = np.frombuffer(merged, np.uint8, count=payload * (rows - 1), offset=VNET_HDR_LEN + hl)
    body.reshape(rows - 1, payload)[:] = np.ndarray((rows - 1, payload), np.uint8, buffer=buf, offset=offset + hl,
                                                    strides=(stride, 1))
    del body  # release the export before _finish writes into the header
    at = offset + (rows - 1) * stride
    merged[VNET_HDR_LEN + total - last_payload:] = memoryview(buf)[at + hl:at + last_size]
    if proto == 6:
        merged[VNET_HDR_LEN + l4 + 13] |= buf[at + l4 + 13] & _TCP_PSH
    item = _Item.__new__(_Item)
    item.buf, item.v6, item.l4, item.hl, item.proto, item.gso, item.count = merged, v6, l4, hl, proto, payload, rows
    return _finish(item)


def _run_shape(buf: bytearray, size: int, last_size: int, udp: bool) -> tuple[bool, int, int, int] | None:
    """(v6, l4 offset, header length, protocol) of a run's first packet, if it is plain TCP (or UDP, when
    ``udp``) with payload; else None."""
    first = buf[0]
    if first == 0x45 and size >= 28 and _U16.unpack_from(buf, 2)[0] == size:
        v6, l4, proto = False, 20, buf[9]
        if _U16.unpack_from(buf, 6)[0] & 0x3FFF:  # fragment
            return None
    elif first >> 4 == 6 and size >= 48 and _U16.unpack_from(buf, 4)[0] == size - 40:
        v6, l4, proto = True, 40, buf[6]
    else:
        return None
    if proto == 6 and size >= l4 + 20:
        hl = l4 + (buf[l4 + 12] >> 4) * 4
        if hl < l4 + 20:
            return None
    elif proto == 17 and udp and _U16.unpack_from(buf, l4 + 4)[0] == size - l4:
        hl = l4 + 8
    else:
        return None
    return (v6, l4, hl, proto) if hl < last_size else None


_RUN_MAX = 4096  # segments in one run (far above what four GRO receives hold)


def _run_groups(buf, count: int, stride: int, shape: tuple, payload: int, last_size: int) -> list | None:
    """The run cut where a segment does not continue the one before it, as (first row, rows) pairs.

    A segment continues the previous one if every header byte is equal except those that may differ
    (see ``_varying``), the sequence number follows on, and the previous one had no PSH (as
    :meth:`Coalescer.add`, which starts a new item there too). None if a segment carries TCP flags
    other than ACK/PSH, or the last one's lengths are wrong: the caller uses add() for those.
    """
    v6, l4, hl, proto = shape
    at = (count - 1) * stride
    length_at = 4 if v6 else 2
    if count > _RUN_MAX or _U16.unpack_from(buf, at + length_at)[0] != (last_size - 40 if v6 else last_size):
        return None
    if proto == 17 and _U16.unpack_from(buf, at + l4 + 4)[0] != last_size - l4:
        return None
    headers = np.ndarray((count, hl), np.uint8, buffer=buf, strides=(stride, 1)).copy()
    # Overwrite what may differ (checked here, or free per segment) with the first row's bytes.
    headers[-1, length_at:length_at + 2] = headers[0, length_at:length_at + 2]
    if proto == 6:
        flags = headers[:, l4 + 13].copy()
        seq = headers.view(">u4")[:, (l4 + 4) // 4].copy()  # hl and l4 are multiples of 4
        headers[:, l4 + 13] = _TCP_ACK
    else:
        headers[-1, l4 + 4:l4 + 6] = headers[0, l4 + 4:l4 + 6]  # UDP length, checked above
    varying = _varying(v6, l4, proto)
    headers[:, varying] = headers[0, varying]
    rows = headers.view(f"V{hl}").reshape(count)  # one opaque item per header: compared as bytes
    breaks = rows[1:] != rows[:-1]
    if proto == 6:
        if np.count_nonzero((flags | _TCP_PSH) != _TCP_ACK | _TCP_PSH):
            return None
        breaks |= (seq[1:] - seq[:-1]) != payload  # uint32: wraps like TCP
        breaks |= flags[:-1] != _TCP_ACK
    if not np.count_nonzero(breaks):
        return [(0, count)]
    groups = _cut(breaks, count)
    # Rows of a group equal its first row; the first rows must share the shape the merge relies on.
    fixed = headers[[first for first, _ in groups]][:, _invariant(v6, l4, proto)]
    if fixed.tobytes() != fixed[0].tobytes() * len(groups):
        return None  # another header length, fragment or length field: add() sorts it out
    return groups


_INVARIANT: dict[tuple[bool, int, int], object] = {}


def _invariant(v6: bool, l4: int, proto: int):
    """Columns every segment of a run must share with the first (else the run is left to add()): IP
    version and header length (IPv6: the whole first word), lengths, fragment bits, protocol, TCP
    data offset. Addresses and ports may differ: the run is cut there, each part one flow."""
    cols = _INVARIANT.get((v6, l4, proto))
    if cols is None:
        ip = [0, 1, 2, 3, 4, 5, 6] if v6 else [0, 2, 3, 6, 7, 9]
        transport = [l4 + 12] if proto == 6 else [l4 + 4, l4 + 5]
        cols = _INVARIANT[(v6, l4, proto)] = np.array(ip + transport)
    return cols


def _cut(breaks, count: int) -> list[tuple[int, int]]:
    """(first row, rows) of each group, given where row j+1 does not continue row j."""
    starts = [0, *(np.flatnonzero(breaks) + 1).tolist()]
    return [(first, end - first) for first, end in zip(starts, starts[1:] + [count])]


_VARYING: dict[tuple[bool, int, int], object] = {}


def _varying(v6: bool, l4: int, proto: int):
    """Columns free per segment: IPv4 id and header checksum; TCP sequence number (checked apart),
    checksum, window and urgent pointer (add() ignores both too), or the UDP checksum."""
    cols = _VARYING.get((v6, l4, proto))
    if cols is None:
        ip = [] if v6 else [4, 5, 10, 11]
        l4_cols = [l4 + 4, l4 + 5, l4 + 6, l4 + 7, l4 + 14, l4 + 15, l4 + 16, l4 + 17, l4 + 18, l4 + 19] \
            if proto == 6 else [l4 + 6, l4 + 7]
        cols = _VARYING[(v6, l4, proto)] = np.array(ip + l4_cols)
    return cols


def _checksum_ok(pkt: memoryview, v6: bool, l4: int, proto: int) -> bool:
    if proto == 17 and pkt[l4 + 6] == 0 and pkt[l4 + 7] == 0:
        return not v6  # IPv4 UDP without checksum is allowed; IPv6 requires one
    pseudo = ones_sum(pkt[8:40] if v6 else pkt[12:20], proto + len(pkt) - l4)
    return ones_sum(pkt[l4:], pseudo) == 0xFFFF


def _finish(item: _Item) -> bytearray:
    """Fix lengths and checksums of a merged item and write its virtio-net header."""
    buf = item.buf
    if item.count == 1:
        return buf
    ip = VNET_HDR_LEN
    total = len(buf) - ip
    l4len = total - item.l4
    if item.v6:
        _U16.pack_into(buf, ip + 4, l4len)
        addrs = bytes(buf[ip + 8:ip + 40])
    else:
        _U16.pack_into(buf, ip + 2, total)
        buf[ip + 10] = buf[ip + 11] = 0
        _U16.pack_into(buf, ip + 10, ~ones_sum(buf[ip:ip + 20]) & 0xFFFF)
        addrs = bytes(buf[ip + 12:ip + 20])
    if item.proto == 6:
        gso_type, csum_off = (GSO_TCPV6 if item.v6 else GSO_TCPV4), 16
    else:
        gso_type, csum_off = GSO_UDP_L4, 6
        _U16.pack_into(buf, ip + item.l4 + 4, l4len)
    # CHECKSUM_PARTIAL: the field holds the (uncomplemented) pseudo-header sum.
    _U16.pack_into(buf, ip + item.l4 + csum_off, ones_sum(addrs, item.proto + l4len))
    pack_fields_into(buf, 0, F_NEEDS_CSUM, gso_type, item.hl, item.gso, item.l4, csum_off)
    return buf
