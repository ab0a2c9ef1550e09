"""The TUN -> UDP half of the batched data path.

    TUN readable -> read (virtio-net header || packet) into a slot of the train buffer
      first read of a drain, lone packet -> Session.seal_into -> sendto (at once: idle RTT)
      plain packets -> gathered (offload.singles) -> sealed as runs per flow
      full TCP super-packets between two hosts -> a train (offload.train): up to 8 cut by one
                                            fastsplit.split_train and sealed as one run
      other super-packets -> segment.split -> sealed as a run or segment by segment
    -> one sendmsg(UDP_SEGMENT) per up to 64 equal datagrams (46 of 1420 bytes: the UDP limit)

Order: what was read first leaves first. Gathered plain packets leave before
a super-packet; a train leaves before anything that does not join it. The
segment buffer serves the singles and the splits in turn (one of them holds
something at a time).

Limits: one pending GSO batch (one destination set) at a time; a send the
kernel refuses drops the whole batch (counted; never re-sealed, so no
(epoch, s) goes out twice); a routing decision lives for one drain.
"""

from __future__ import annotations

from grouptun.core import vector
from grouptun.core.inner import packed_addresses
from grouptun.core.wire import OVERHEAD
from grouptun.errors import OffloadError
from grouptun.offload.fastsplit import split_train
from grouptun.offload.segment import split
from grouptun.offload.singles import STRIDE as SINGLE_STRIDE
from grouptun.offload.singles import Singles
from grouptun.offload.train import SLOT, SLOTS, Train
from grouptun.offload.vnet import GSO_NONE, VNET_HDR_LEN, VnetHdr, unpack_fields

SEND_MAX = 65507  # bytes of datagrams per GSO send: the UDP payload limit under a 65535-byte IP packet
MAX_SEGMENTS = 64  # kernel limit per UDP_SEGMENT send
HEADER_ROOM = 128  # per segment in the split buffer: IP + TCP headers with options
SEGMENT_BUFFER = SLOTS * 96 * 1024  # a train's segments at their stride (47 x 1496 bytes per packet)
SEND_BUFFER = SLOTS * 80 * 1024  # a train's datagrams; a lone packet may be 64 KiB (+ overhead, CTR slack)
# Below this count a run costs more than datagram by datagram: the numpy steps have a fixed cost of
# tens of µs (measured in process, plain UDP drains of K packets: the run sealer wins from K = 8),
# so light traffic and lone packets take the per-datagram path.
SEAL_RUN_MIN = 8
# A drain stops once it has read this much (either direction), so that the other direction, the TCP
# ACKs among it, gets its turn: a bulk TCP sender is held by its send buffer (4 MiB), and its rate is
# that buffer over the round trip, which an ACK waiting behind a 4 MiB drain lengthens by milliseconds.
# TCP x1, 6 interleaved rounds x 12 s: 3240 Mbit/s against 2951 without the limit (64 reads).
DRAIN_BYTES = 512 * 1024


class SendPath:
    """TUN drain -> sealed GSO batches; counters are the data plane's dict."""

    def __init__(self, session, tun, udp, counters: dict, bug) -> None:
        self.session, self.tun, self.udp, self.c, self._bug = session, tun, udp, counters, bug
        self.vnet = bool(getattr(tun, "vnet_hdr", False))
        self.train = Train()
        self.trains = True  # False: every super-packet alone (the reference the tests compare with)
        self.segbuf = bytearray(SEGMENT_BUFFER)
        self.segmv = memoryview(self.segbuf)
        self.sbuf = bytearray(SEND_BUFFER)
        self.smv = memoryview(self.sbuf)
        self._routes: dict = {}  # (source, destination) -> Sealer, for one TUN drain
        # numpy: whole super-packets and trains as one run (core.vector); else per datagram
        self.run_sealer = vector.RunSealer(self.segbuf, self.sbuf) if vector.AVAILABLE else None
        # Plain packets of a drain gathered in the segment buffer (free until a super-packet comes,
        # and they leave before it) so that a datagram stream is sealed as runs too.
        self.singles = Singles(self.segbuf) if self.vnet and self.run_sealer is not None else None
        self._reset()

    def on_tun_readable(self, now: float, reads: int) -> None:
        c, tun, train = self.c, self.tun, self.train
        budget = DRAIN_BYTES
        for i in range(reads):
            if not self.vnet:
                packet = tun.read()
                if packet is None:
                    break
                c["tun_rx"] += 1
                self._one(memoryview(packet), now)
                continue
            index = train.free
            slot = train.slots[index]
            n = tun.read_into(slot)
            if n is None:
                break
            c["tun_rx"] += 1
            budget -= n
            if not i:
                # The first read of a drain leaves before the next read: a lone packet (ping, DNS,
                # an ACK) does not wait for the read that finds the queue empty, nor for the
                # gathering below, and takes the shortest way through the session (idle RTT).
                # A stream loses one packet per drain to it; a super-packet goes its usual way.
                if n >= VNET_HDR_LEN + 20 and not slot[0] and not slot[1]:  # no flags, GSO_NONE
                    self._lone(slot[VNET_HDR_LEN:n], now)
                else:
                    self._super_packet(slot, n, now)
                    self.flush()
                continue
            self._next(index, slot, n, now)
            if budget <= 0:
                break
        self._send_train(now)
        self._send_singles(now)
        self.flush()
        self._routes.clear()

    def _next(self, index: int, slot: memoryview, n: int, now: float) -> None:
        """One packet of a drain, read into train slot ``index``."""
        train, singles = self.train, self.singles
        if n < VNET_HDR_LEN + 20:
            self._send_train(now)
            self.c["tun_rx_malformed"] += 1
            return
        fields = unpack_fields(slot)
        if fields[1] == GSO_NONE:
            self._send_train(now)  # what was read before this one leaves first
            if singles is not None:
                try:
                    if singles.add(slot[VNET_HDR_LEN:n], fields[0], fields[4], fields[5]):
                        return
                except OffloadError:
                    self.c["tun_rx_malformed"] += 1
                    return
            self._send_singles(now)
            self._super_packet(slot, n, now, fields)
            return
        self._send_singles(now)
        if not self.trains:
            self._super_packet(slot, n, now, fields)
            return
        if train.take(index, n, fields, self._room):
            if train.full:
                self._send_train(now)
            return
        self._send_train(now)
        if not train.take(index, n, fields, self._room):  # the first of a new train, or on its own
            self._super_packet(slot, n, now, fields)
        elif train.full:  # it took the last slot
            self._send_train(now)

    def _room(self, hl: int, gso: int, rows: int) -> int:
        """How many super-packets of this shape the segment and send buffers hold."""
        return min(len(self.segbuf) // (rows * (gso + HEADER_ROOM)), len(self.sbuf) // (rows * (hl + gso + OVERHEAD)))

    def _send_train(self, now: float) -> None:
        """Segment and seal the train's packets as one run."""
        train = self.train
        if not train.count:
            return
        packets, first, psum, version, l4 = train.count, train.first, train.psum, train.version, train.l4
        _, _, hl, gso, rows = train.shape
        train.clear()
        stride = gso + HEADER_ROOM
        split_train(train.buf, first, SLOT, packets, rows, self.segbuf, stride, hl=hl, cs=l4, gso=gso,
                    version=version, psum=psum)
        sealer = self._route(self.segmv[:hl + gso], now)
        if sealer is None:  # dropped: counted once per super-packet, as each alone would be
            for _ in range(packets - 1):
                self._route(self.segmv[:hl + gso], now)
            return
        self._seal_segments(sealer, stride, [hl + gso] * (packets * rows), now)

    def _send_singles(self, now: float) -> None:
        """Seal the gathered plain packets: runs of one flow at once, the rest one by one."""
        singles = self.singles
        if not singles:
            return
        lengths, first, total = singles.lengths, 0, len(singles)
        while first < total:
            key = packed_addresses(singles.packet(first))
            end = first + 1
            while (end < total and lengths[end] <= lengths[first] and lengths[end - 1] == lengths[first]
                   and packed_addresses(singles.packet(end)) == key):
                end += 1
            singles.complete(first, end - first)
            if key is None or end - first < SEAL_RUN_MIN:
                for j in range(first, end):
                    self._one(singles.packet(j), now)
            else:
                self._seal_run(singles, first, end, now)
            first = end
        singles.clear()

    def _seal_run(self, singles, first: int, end: int, now: float) -> None:
        """Seal singles first..end-1 (one flow, equal lengths but a shorter last) together."""
        sealer = self._route(singles.packet(first), now)
        if sealer is None:  # that one is dropped and counted; the others of its flow each the same way
            for j in range(first + 1, end):
                self._one(singles.packet(j), now)
            return
        self._seal_segments(sealer, SINGLE_STRIDE, singles.lengths[first:end], now, first * SINGLE_STRIDE)

    def _super_packet(self, slot: memoryview, n: int, now: float, fields: tuple | None = None) -> None:
        """One packet read into ``slot`` (``n`` bytes with its virtio-net header), alone; ``fields``: its
        header's, if the caller unpacked them already."""
        if n < VNET_HDR_LEN + 20:
            self.c["tun_rx_malformed"] += 1
            return
        if fields is None:
            fields = unpack_fields(slot)
        packet = slot[VNET_HDR_LEN:n]
        if fields[1] == GSO_NONE and not fields[0]:
            self._one(packet, now)
            return
        try:
            hdr = VnetHdr(*fields)
            stride = hdr.gso_size + HEADER_ROOM if hdr.gso_kind != GSO_NONE else n
            lengths = split(packet, hdr, self.segbuf, stride)
        except OffloadError:  # split raises nothing else for a malformed super-packet
            self.c["tun_rx_malformed"] += 1
            return
        sealer = self.session.sealer(self.segmv[:lengths[0]], now)
        if sealer is not None:
            self._seal_segments(sealer, stride, lengths, now)

    def _seal_segments(self, sealer, stride: int, lengths: list[int], now: float, offset: int = 0) -> None:
        """Seal the packets at ``offset + j * stride`` in the segment buffer: as one run, or one by one."""
        if self.run_sealer is not None and len(lengths) >= SEAL_RUN_MIN:
            self.flush()
            sealed = self.run_sealer.seal(sealer, stride, lengths, offset)
            if sealed is not None:
                self.c["tx_runs"] += 1
                self.count, self.used = sealed
                self.seg, self.endpoints = lengths[0] + OVERHEAD, sealer.endpoints
                self.flush()
                sealer.finish(now)
                return
        at, segmv = offset, self.segmv
        for size in lengths:
            if not self._queue(sealer, segmv[at:at + size]):
                break
            at += stride
        sealer.finish(now)

    def _lone(self, packet: memoryview, now: float) -> None:
        """Seal and send one packet at once (the first of a drain)."""
        if self.count:
            self.flush()  # only after a bug cut a drain short: what was sealed leaves first
        sealed = self.session.seal_into(packet, now, self.smv)
        if sealed is None:
            return
        length, endpoints = sealed
        c, data = self.c, self.smv[:length]
        for endpoint in endpoints:
            if self.udp.sendto(data, endpoint):
                c["udp_tx"] += 1
            else:
                c["udp_tx_dropped"] += 1

    def _one(self, packet: memoryview, now: float) -> None:
        sealer = self._route(packet, now)
        if sealer is not None:
            self._queue(sealer, packet)
            sealer.finish(now)

    def _route(self, packet: memoryview, now: float):
        """The Sealer for ``packet``, or None (dropped, counted). Within one drain (one `now`, no epoch
        change in between) a routing decision depends only on the inner addresses: packets of a stream
        reuse it instead of routing each one."""
        addresses = packed_addresses(packet)
        sealer = self._routes.get(addresses) if addresses is not None else None
        if sealer is None:
            sealer = self.session.sealer(packet, now)
            if sealer is not None and addresses is not None:
                self._routes[addresses] = sealer
        return sealer

    def _reset(self) -> None:
        self.used = self.count = self.seg = 0
        self.short = False
        self.endpoints: tuple = ()

    def _queue(self, sealer, plain: memoryview) -> bool:
        """Seal ``plain`` into the pending batch; False if the sealer refused (n_max)."""
        size = len(plain) + OVERHEAD
        if self.count and (sealer.endpoints != self.endpoints or size > self.seg or self.short
                           or self.count >= MAX_SEGMENTS or self.used + size > SEND_MAX):
            self.flush()
        written = sealer.seal_into(plain, self.smv, self.used)
        if not written:
            return False
        if self.count == 0:
            self.seg, self.endpoints = size, sealer.endpoints
        elif size < self.seg:
            self.short = True  # GSO: only the last datagram may be shorter
        self.used += written
        self.count += 1
        return True

    def flush(self) -> None:
        """Send the pending batch to each of its endpoints."""
        if not self.count:
            return
        c, seg, used = self.c, self.seg, self.used
        chunk = max(1, min(MAX_SEGMENTS, SEND_MAX // seg)) * seg  # a run may exceed one GSO send
        for endpoint in self.endpoints:
            for at in range(0, used, chunk):
                data = self.smv[at:min(at + chunk, used)]
                sent = self.udp.send_batch(data, seg, endpoint)
                c["udp_tx"] += sent
                c["udp_tx_dropped"] += -(-len(data) // seg) - sent
                c["udp_sends"] += 1
        self._reset()

    def abandon(self) -> None:
        """After a bug mid-drain: drop the pending batch (counted), never re-seal it, and what was read
        but not sealed yet (counted as malformed), so the next drain starts from the empty state."""
        self.c["udp_tx_dropped"] += self.count * max(1, len(self.endpoints))
        self.c["tun_rx_malformed"] += len(self.train) + (len(self.singles) if self.singles is not None else 0)
        self.train.clear()
        if self.singles is not None:
            self.singles.clear()
        self._reset()
        self._routes.clear()  # a routing decision never outlives its drain

