"""TCP super-packets of one flow, read back to back and segmented as one train.

A bulk TCP sender hands the TUN one 64 KiB super-packet after another, and a
drain often finds dozens. Segmenting each alone pays the fixed cost of the
numpy steps (about 25 us) once per super-packet; read into consecutive
slots of one buffer, up to ``SLOTS`` of them are segmented by one
:func:`grouptun.data.offload.fastsplit.split_train` (and sealed by the caller as
one run, one sequence reservation), so that cost is paid once per train:
8 super-packets of 47 segments take 96 us instead of 258 in process.

A packet joins only if it is a TCP super-packet (GSO_TCPV4/6 without the ECN
bit, NEEDS_CSUM on the TCP checksum) of whole segments, IPv4 without options
or fragment bits or IPv6 without extension headers, with the lengths its
headers claim, and the addresses, ports, header length, segment size and
segment count of the train's first packet. Anything else is the caller's to
handle the usual way, after sending the train (order).

Limits: at most ``SLOTS`` packets, and no more than the caller's segment
and send buffers hold (``room``); works from its empty state; the caller
reads into :meth:`Train.slot` and calls :meth:`Train.clear` once it sent
the train.
"""

from __future__ import annotations

import struct

from grouptun.data.offload.checksum import ones_sum
from grouptun.data.offload.vnet import F_NEEDS_CSUM, GSO_TCPV4, GSO_TCPV6, VNET_HDR_LEN

SLOTS = 8
SLOT = (VNET_HDR_LEN + 65535 + 63) // 64 * 64  # one read: virtio-net header + the largest IP packet
_U16 = struct.Struct("!H")
_PROTO_TCP = 6


class Train:
    """Packets ``start .. start+count-1`` of the slots buffer, all of :attr:`shape`."""

    def __init__(self, slots: int = SLOTS) -> None:
        self.buf = bytearray(SLOT * slots)
        view = memoryview(self.buf)
        self.slots = [view[i * SLOT:(i + 1) * SLOT] for i in range(slots)]
        self.start = self.count = 0
        self.limit = slots
        self.shape: tuple | None = None  # (key, gso_type, hl, gso, rows) of the first
        self.version = self.l4 = 0  # IP version and where TCP starts
        self.psum = 0  # pseudo-header sum (addresses, TCP) of the flow

    def __len__(self) -> int:
        return self.count

    @property
    def free(self) -> int:
        """The slot the next read goes into."""
        return self.start + self.count

    @property
    def full(self) -> bool:
        return self.count >= self.limit or self.start + self.count >= len(self.slots)

    @property
    def first(self) -> int:
        """Offset of the first packet's IP header in :attr:`buf`."""
        return self.start * SLOT + VNET_HDR_LEN

    def take(self, index: int, n: int, fields: tuple, room) -> bool:
        """Add the packet read into slot ``index`` (``n`` bytes with its virtio-net header) if it may
        join: continue the train, or start one if the train is empty. ``room(hl, gso, rows)``: how
        many such packets the caller's buffers hold. False (nothing changed) otherwise."""
        shape = _shape(self.slots[index], n, fields)
        if shape is None:
            return False
        if self.count:
            if shape != self.shape or index != self.start + self.count:
                return False
            self.count += 1
            return True
        _, gso_type, hl, gso, rows = shape
        limit = min(len(self.slots) - index, room(hl, gso, rows))
        if limit < 1:
            return False
        key, v4 = shape[0], gso_type == GSO_TCPV4
        self.start, self.count, self.limit, self.shape = index, 1, limit, shape
        self.version, self.l4 = (4, 20) if v4 else (6, 40)
        self.psum = ones_sum(key, _PROTO_TCP)
        return True

    def clear(self) -> None:
        self.start = self.count = 0
        self.shape = None


def _shape(slot: memoryview, n: int, fields: tuple) -> tuple | None:
    """``(addresses, gso type, header length, segment size, segments)`` of a train-worthy packet, else None."""
    flags, gso_type, _, gso, start, offset = fields
    size = n - VNET_HDR_LEN
    if flags != F_NEEDS_CSUM or offset != 16 or gso <= 0:
        return None
    ip = VNET_HDR_LEN
    if gso_type == GSO_TCPV4:
        if (start != 20 or size < 41 or slot[ip] != 0x45 or slot[ip + 9] != _PROTO_TCP
                or _U16.unpack_from(slot, ip + 2)[0] != size or _U16.unpack_from(slot, ip + 6)[0] & 0x3FFF):
            return None
        key = bytes(slot[ip + 12:ip + 20])
    elif gso_type == GSO_TCPV6:
        if (start != 40 or size < 61 or slot[ip] >> 4 != 6 or slot[ip + 6] != _PROTO_TCP
                or _U16.unpack_from(slot, ip + 4)[0] != size - 40):
            return None
        key = bytes(slot[ip + 8:ip + 40])
    else:
        return None
    hl = start + (slot[ip + start + 12] >> 4) * 4
    if hl < start + 20 or hl >= size:
        return None
    rows, rest = divmod(size - hl, gso)
    if rest:
        return None
    return key, gso_type, hl, gso, rows
