"""A TUN's runs: what :class:`grouptun.data.devices.TunDevice` promises, over the raw reads and writes.

:class:`VnetRuns` is for a TUN with the virtio-net header (TSO/USO super-packets in, GRO packets out):

    read -> plain packet, first of a drain     -> a run of one at once (idle round trip)
         -> plain packets of one flow           -> gathered (offload.singles), a run per flow
         -> TCP super-packets of one flow       -> a train (offload.train) cut by one split_train
         -> any other super-packet              -> offload.segment.split, one run
    write <- runs of TCP segments               -> coalesced (offload.coalesce), written at flush
          <- runs of UDP datagrams              -> one writev each from where they were decrypted
          <- a lone packet, first of a drain    -> written at once

:class:`PlainRuns` is for a TUN without it: each read is a run of one, each packet one write.

Order: what was read first leaves first (gathered packets leave before a super-packet; a train
before anything that does not join it). The segment buffer serves the singles and the splits in turn,
which is safe because the loop seals each run before it resumes the iterator.

Why the receive side coalesces without re-checking TCP/UDP checksums: every byte of every plaintext
was authenticated by the AEAD (or HMAC) tag, so it is exactly what a member's daemon sealed, and that
daemon sealed complete packets (``segment.split`` writes full checksums; a partial checksum from its
TUN is completed before sealing). Merged items go to the kernel as CHECKSUM_PARTIAL; packets written
alone carry an all-zero header and the kernel verifies their checksum as for any packet from a TUN.
"""

from __future__ import annotations

import os

from grouptun.core.inner import packed_addresses
from grouptun.core.wire import OVERHEAD
from grouptun.data.devices import PlainRun
from grouptun.errors import OffloadError
from grouptun.data.offload.coalesce import Coalescer
from grouptun.data.offload.fastsplit import split_train
from grouptun.data.offload.segment import split
from grouptun.data.offload.singles import STRIDE as SINGLE_STRIDE
from grouptun.data.offload.singles import Singles
from grouptun.data.offload.train import SLOT, SLOTS, Train
from grouptun.data.offload.vnet import GSO_NONE, VNET_HDR_LEN, ZERO_HDR, VnetHdr, unpack_fields

READS = 64  # reads per drain at most, so that one busy direction cannot starve the other
HEADER_ROOM = 128  # per segment in the split buffer: IP + TCP headers with options
SEGMENT_BUFFER = SLOTS * 96 * 1024  # a train's segments at their stride (47 x 1496 bytes per packet)
SEND_ROOM = SLOTS * 80 * 1024  # what the loop's seal buffer must hold: a train's datagrams
# UDP datagrams are written to the TUN one by one, not merged into GSO_UDP_L4 writes even where the
# kernel takes them (TUN_F_USO4, Linux >= 6.2): a socket without UDP_GRO gets them one by one anyway,
# so merging saves only the write calls and costs a copy and the grouping in Python. Measured between
# two namespaces, iperf3 -u at full rate: 348-442 Mbit/s delivered written one by one against 296-354
# merged (3 x 5 s each, twice, alternating). TCP is merged: one 64 KiB segment through the receiver's
# TCP stack instead of 45.
MERGE_UDP = False
_UDP_ROW = b"\x11"


class PlainRuns:
    """Runs of one over ``read()`` (one packet or None) and ``write_one(packet)`` (False: not taken)."""

    def __init__(self, read, write_one) -> None:
        self._read, self._write_one = read, write_one
        self.counters = {"tun_rx_malformed": 0}

    def read_runs(self, budget: int):
        for _ in range(READS):
            packet = self._read()
            if packet is None:
                return
            size = len(packet)
            yield PlainRun(memoryview(packet), 0, size, 1, size, size)
            budget -= size
            if budget <= 0:
                return

    def write(self, out: bytearray, opened) -> int:
        write_one, written = self._write_one, 0
        for packet in opened.packets(out):
            if write_one(packet):
                written += 1
        return written

    def flush(self) -> int:
        return 0


class VnetRuns:
    """Runs over ``read_into(buf)`` (a read's length or None) and ``write_parts(parts)`` of a vnet TUN."""

    def __init__(self, read_into, write_parts) -> None:
        self._read_into, self._write_parts = read_into, write_parts
        self.counters = {"tun_rx_malformed": 0, "tun_tx_dropped": 0}
        self.train = Train()
        self.segbuf = bytearray(SEGMENT_BUFFER)
        self.segmv = memoryview(self.segbuf)
        self.singles = Singles(self.segbuf)
        self.coalescer = Coalescer(verify_checksums=False, udp=MERGE_UDP)
        self._fresh = True  # nothing written since the last flush: a lone packet goes at once

    # --- reading ---------------------------------------------------------------------------------
    def read_runs(self, budget: int):
        train, singles = self.train, self.singles
        try:
            for i in range(READS):
                index = train.free
                slot = train.slots[index]
                n = self._read_into(slot)
                if n is None:
                    break
                budget -= n
                if n < VNET_HDR_LEN + 20:
                    yield from self._train_run()
                    self.counters["tun_rx_malformed"] += 1
                    continue
                fields = unpack_fields(slot)
                if not i:  # the first of a drain leaves at once: a lone packet does not wait (idle RTT)
                    if fields[0] or fields[1] != GSO_NONE:
                        yield from self._alone(slot, n, fields)
                    else:
                        yield PlainRun(slot, VNET_HDR_LEN, n, 1, n - VNET_HDR_LEN, n - VNET_HDR_LEN)
                    continue
                if fields[1] == GSO_NONE:
                    yield from self._train_run()  # what was read before this one leaves first
                    try:
                        if singles.add(slot[VNET_HDR_LEN:n], fields[0], fields[4], fields[5]):
                            continue
                    except OffloadError:
                        self.counters["tun_rx_malformed"] += 1
                        continue
                    yield from self._singles_runs()
                    yield from self._alone(slot, n, fields)
                    continue
                yield from self._singles_runs()
                if not train.take(index, n, fields, self._room):
                    yield from self._train_run()
                    if not train.take(index, n, fields, self._room):  # the first of a new train, or alone
                        yield from self._alone(slot, n, fields)
                if train.full:
                    yield from self._train_run()
                if budget <= 0:
                    break
            if train.count:
                yield from self._train_run()
            if singles.lengths:
                yield from self._singles_runs()
        finally:  # also when the loop gave up mid-drain (a bug): what was read and not sealed is dropped
            if train.count or singles.lengths:
                self.counters["tun_rx_malformed"] += train.count + len(singles.lengths)
                train.clear()
                singles.clear()

    def _room(self, hl: int, gso: int, rows: int) -> int:
        """How many super-packets of this shape the segment buffer and the loop's seal buffer hold."""
        return min(len(self.segbuf) // (rows * (gso + HEADER_ROOM)), SEND_ROOM // (rows * (hl + gso + OVERHEAD)))

    def _train_run(self):
        """The train's packets, segmented as one run."""
        train = self.train
        if not train.count:
            return
        packets, first, psum, version, l4 = train.count, train.first, train.psum, train.version, train.l4
        _, _, hl, gso, rows = train.shape
        train.clear()
        stride = gso + HEADER_ROOM
        split_train(train.buf, first, SLOT, packets, rows, self.segbuf, stride, hl=hl, cs=l4, gso=gso,
                    version=version, psum=psum)
        yield PlainRun(self.segmv, 0, stride, packets * rows, hl + gso, hl + gso)

    def _singles_runs(self):
        """The gathered plain packets: a run per stretch of one flow and one length (a shorter last)."""
        singles = self.singles
        lengths, first, total = singles.lengths, 0, len(singles)
        while first < total:
            key = packed_addresses(singles.packet(first))
            end = first + 1
            while (key is not None and end < total and lengths[end] <= lengths[first]
                   and lengths[end - 1] == lengths[first] and packed_addresses(singles.packet(end)) == key):
                end += 1
            singles.complete(first, end - first)
            yield PlainRun(self.segmv, first * SINGLE_STRIDE, SINGLE_STRIDE, end - first, lengths[first],
                           lengths[end - 1])
            first = end
        singles.clear()

    def _alone(self, slot: memoryview, n: int, fields: tuple):
        """One packet read into ``slot`` (``n`` bytes with its virtio-net header), segmented on its own."""
        packet = slot[VNET_HDR_LEN:n]
        if fields[1] == GSO_NONE and not fields[0]:
            yield PlainRun(packet, 0, n, 1, n - VNET_HDR_LEN, n - VNET_HDR_LEN)
            return
        try:
            hdr = VnetHdr(*fields)
            stride = hdr.gso_size + HEADER_ROOM if hdr.gso_kind != GSO_NONE else n
            lengths = split(packet, hdr, self.segbuf, stride)
        except OffloadError:  # split raises nothing else for a malformed super-packet
            self.counters["tun_rx_malformed"] += 1
            return
        yield PlainRun(self.segmv, 0, stride, len(lengths), lengths[0], lengths[-1])

    # --- writing ---------------------------------------------------------------------------------
    def write(self, out: bytearray, opened) -> int:
        co = self.coalescer
        if opened.views is None and opened.count > 1:
            if co.add_run(out, opened.count, opened.stride, opened.size, opened.last):
                self._fresh = False
                return opened.count
            if self._udp_run(out, opened):
                return opened.count
        packets = opened.packets(out)
        if self._fresh and len(packets) == 1:  # a lone packet: nothing waits, nothing to merge it with
            return self._put((ZERO_HDR, packets[0]))
        self._fresh = False
        for packet in packets:
            co.add(packet)
        return len(packets)

    def flush(self) -> int:
        if self._fresh:  # nothing went to the coalescer since the last flush
            return 0
        self._fresh = True
        return sum(self._put((item,)) for item in self.coalescer.flush())

    def _put(self, parts) -> int:
        if self._write_parts(parts):
            return 1
        self.counters["tun_tx_dropped"] += 1
        return 0

    def _udp_run(self, out: bytearray, opened) -> bool:
        """Write a run of UDP packets one by one, each straight from where it was decrypted (one writev
        with an all-zero virtio-net header: no copy, no coalescer); False (nothing done) unless every
        inner packet is UDP."""
        count, stride = opened.count, opened.stride
        proto_at = 9 if out[0] >> 4 == 4 else 6  # protocol / next header (one IP version and header length)
        if out[proto_at:proto_at + (count - 1) * stride + 1:stride] != _UDP_ROW * count:
            return False
        self.flush()  # what came before leaves first
        self._fresh = False
        view, last = memoryview(out), (count - 1) * stride
        for at in range(0, last + 1, stride):
            self._put((ZERO_HDR, view[at:at + (opened.size if at != last else opened.last)]))
        # The receiving application was just woken with a burst in its socket; on a busy CPU it may
        # share ours, and the next run would overflow its receive buffer (208 KiB by default: about
        # 90 such datagrams) before it gets to read. Yielding once per run lets it: iperf3 -u at full
        # rate, two alternating rounds of 3 x 5 s, delivered 358-519 Mbit/s with the yield against
        # 300-468 without, with fewer drops at the receiver's socket. Costs one syscall per run.
        os.sched_yield()
        return True
