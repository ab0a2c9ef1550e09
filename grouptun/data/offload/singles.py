"""Plain TUN packets of one drain, gathered so that a stream of them is sealed as runs.

A TUN with offloads hands over TCP bulk data as super-packets, but an
application that sends datagrams (iperf3 -u, DNS, games, RTP) gives one
packet per read. Sealing each alone costs a routing decision, a sequence
allocation and a handful of Python steps per packet; gathered here at a
fixed stride during one drain, consecutive packets of one flow (same
addresses, same length but maybe a shorter last) become one run for
:func:`grouptun.core.run.seal`, exactly like the segments of a
super-packet.

Checksums: with ``TUN_F_CSUM`` the kernel leaves a TCP/UDP checksum partial
(``NEEDS_CSUM``: the field holds the pseudo-header sum). Each packet is
completed before it is sealed, for a group of equal packets with one numpy
pass in host byte order (RFC 1071: swapping the bytes of every word
multiplies the ones'-complement sum by 256 mod 0xFFFF, and the value is
written back through a host-order view, so no swap is needed), otherwise one
at a time, with the same bytes either way.

Limits: packets longer than ``STRIDE`` are not gathered (the caller handles
them alone, after flushing this batch to keep the order); works from its
empty state; ``clear`` after each drain.
"""

from __future__ import annotations

import struct

from grouptun.errors import OffloadError
from grouptun.data.offload.checksum import HAVE_NUMPY, checksum, complete_rows
from grouptun.data.offload.vnet import F_NEEDS_CSUM

STRIDE = 2048  # room per packet: a 1500-byte MTU packet and then some
_U16 = struct.Struct("!H")


class Singles:
    """Up to ``len(buf) // STRIDE`` plain packets; packet j at ``buf[j*STRIDE:]``."""

    def __init__(self, buf: bytearray) -> None:
        self.buf = buf
        self.view = memoryview(buf)
        self.capacity = len(buf) // STRIDE
        self.lengths: list[int] = []
        self.partial: list[tuple[int, int] | None] = []  # (csum_start, csum_offset) still to complete

    def __len__(self) -> int:
        return len(self.lengths)

    def add(self, packet: memoryview, flags: int, csum_start: int, csum_offset: int) -> bool:
        """Copy ``packet`` in; False (nothing kept) if it is too long, the batch is full or its partial
        checksum sits at an odd offset. OffloadError if that location is outside the packet."""
        n = len(packet)
        j = len(self.lengths)
        if n > STRIDE or j >= self.capacity:
            return False
        if flags & F_NEEDS_CSUM:
            if csum_start >= n or csum_start + csum_offset + 2 > n:
                raise OffloadError("partial checksum location outside the packet")
            if csum_start & 1 or csum_offset & 1:
                return False  # not where TCP/UDP put it: the caller's one-by-one path copes
            partial = (csum_start, csum_offset)
        else:
            partial = None
        self.view[j * STRIDE:j * STRIDE + n] = packet
        self.lengths.append(n)
        self.partial.append(partial)
        return True

    def packet(self, j: int) -> memoryview:
        return self.view[j * STRIDE:j * STRIDE + self.lengths[j]]

    def complete(self, first: int, count: int) -> None:
        """Finish the partial checksums of packets first..first+count-1."""
        partial, lengths = self.partial, self.lengths
        rows = count - 1 if lengths[first + count - 1] != lengths[first] else count
        if (HAVE_NUMPY and rows >= 4 and partial[first] is not None
                and partial[first:first + rows].count(partial[first]) == rows):
            start, field = partial[first]
            complete_rows(self.buf, first * STRIDE + start, STRIDE, rows, lengths[first] - start, field)
            done = range(first + rows, first + count)
        else:
            done = range(first, first + count)
        for j in done:
            if partial[j] is not None:
                start, offset = partial[j]
                at = j * STRIDE
                value = checksum(self.view[at + start:at + lengths[j]])
                _U16.pack_into(self.buf, at + start + offset, value or 0xFFFF)
        for j in range(first, first + count):
            partial[j] = None

    def clear(self) -> None:
        self.lengths.clear()
        self.partial.clear()
