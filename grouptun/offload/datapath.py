"""The batched data path: TUN super-packets <-> session batches <-> UDP GSO/GRO.

    TUN readable -> read (virtio-net header || super-packet) into one buffer -> route ONCE
                 -> segment (offload.segment.split) -> seal each segment straight into the send
                    buffer (core Sealer) -> one sendmsg(UDP_SEGMENT) per up to 64 equal datagrams
    UDP readable -> recv (UDP_GRO: many datagrams of one sender) -> open as a run (core.vector) or
                    datagram by datagram (session.open_batch)
                 -> TCP: coalesce into GRO super-packets -> one TUN write per item, once per drain
                 -> a run of UDP: one writev per datagram straight from the decrypt buffer

Each side adapts to what its device offers: a TUN without the vnet header
gives and takes plain packets (no segmentation, no coalescing); a socket
without GSO sends datagram by datagram, without GRO receives one at a time.

Why the receive side coalesces without re-checking TCP/UDP checksums: every
byte of every plaintext was authenticated by the AEAD (or HMAC) tag, so it is
exactly what a member's daemon sealed, and that daemon sealed complete
packets (``segment.split`` writes full checksums; a partial checksum from
its TUN is completed before sealing). Merged items go to the kernel as
CHECKSUM_PARTIAL (``NEEDS_CSUM`` with csum_start/csum_offset and the
pseudo-header sum in the field), so checksums the kernel hands on are
correct; packets written alone carry an all-zero header and the kernel
verifies their checksum as for any packet from a TUN. A member can still
send a packet with a wrong checksum inside a run; the merged packet then gets
a recomputed one: that member could as well have sent the right one.

Limits: one pending GSO batch (one destination set) at a time; a send the
kernel refuses drops the whole batch (counted; never re-sealed, so no
(epoch, s) goes out twice); inner-packet views from ``open_batch`` live only
until the next receive, hence the coalescer copies them.
"""

from __future__ import annotations

import os

from grouptun.core import vector
from grouptun.core.inner import packed_addresses
from grouptun.core.wire import OVERHEAD
from grouptun.errors import OffloadError
from grouptun.offload.coalesce import Coalescer
from grouptun.offload.segment import split
from grouptun.offload.singles import STRIDE as SINGLE_STRIDE
from grouptun.offload.singles import Singles
from grouptun.offload.vnet import GSO_NONE, VNET_HDR_LEN, ZERO_HDR, VnetHdr, unpack_fields

READ_SIZE = VNET_HDR_LEN + 65535
SEND_MAX = 65507  # bytes of datagrams per GSO send: the UDP payload limit under a 65535-byte IP packet
MAX_SEGMENTS = 64  # kernel limit per UDP_SEGMENT send
HEADER_ROOM = 128  # per segment in the split buffer: IP + TCP headers with options
RECV_ROOM = 65536  # one UDP (GRO) receive
RECV_RUNS = 4  # receives gathered into one run at most
# UDP datagrams are written to the TUN one by one, not merged into GSO_UDP_L4 writes even where the
# kernel takes them (TUN_F_USO4, Linux >= 6.2): a socket without UDP_GRO gets them one by one anyway,
# so merging saves only the write calls and costs a copy and the grouping in Python. Measured between
# two namespaces, iperf3 -u at full rate: 348-442 Mbit/s delivered written one by one against 296-354
# merged (3 x 5 s each, twice, alternating). TCP is merged: one 64 KiB segment through the receiver's
# TCP stack instead of 45.
MERGE_UDP = False
_UDP_ROW = b"\x11"
# Below these counts a run costs more than datagram by datagram: the numpy steps have a fixed cost of
# tens of µs (measured in process, plain UDP drains of K packets: the run sealer wins from K = 8, the
# run opener from K = 12), so light traffic and lone packets take the per-datagram path.
SEAL_RUN_MIN = 8
OPEN_RUN_MIN = 12


class BatchPath:
    """The two drains of the batched path; counters are the data plane's dict."""

    def __init__(self, session, tun, udp, counters: dict, bug) -> None:
        self.session, self.tun, self.udp, self.c, self._bug = session, tun, udp, counters, bug
        self.vnet = bool(getattr(tun, "vnet_hdr", False))
        self.gro = bool(getattr(udp, "gro", False))
        self.rbuf = bytearray(READ_SIZE)
        self.rmv = memoryview(self.rbuf)
        self.segbuf = bytearray(4 * 65536)
        self.segmv = memoryview(self.segbuf)
        self.sbuf = bytearray(SEND_MAX + 65536 + 64)  # a lone packet may be 64 KiB (+ overhead, CTR slack)
        self.smv = memoryview(self.sbuf)
        self.ubuf = bytearray(RECV_RUNS * RECV_ROOM)
        self.umv = memoryview(self.ubuf)
        self.pbuf = bytearray(RECV_RUNS * RECV_ROOM + 64)
        self.pmv = memoryview(self.pbuf)
        self.coalescer = Coalescer(verify_checksums=False, udp=MERGE_UDP) if self.vnet else None
        self._routes: dict = {}  # (source, destination) -> Sealer, for one TUN drain
        # numpy: whole super-packets / GRO receives as one run (core.vector); else per datagram
        self.run_sealer = vector.RunSealer(self.segbuf, self.sbuf) if vector.AVAILABLE else None
        self.run_opener = vector.RunOpener(self.ubuf, self.pbuf) if vector.AVAILABLE and self.gro else None
        # Plain packets of a drain gathered in the segment buffer (free until a super-packet comes,
        # and they leave before it) so that a datagram stream is sealed as runs too.
        self.singles = Singles(self.segbuf) if self.vnet and self.run_sealer is not None else None
        self._reset()

    def describe(self) -> str:
        tun = self.tun.describe() if hasattr(self.tun, "describe") else ("vnet_hdr" if self.vnet else "plain")
        return (f"batched (tun {tun}; udp gso={'on' if getattr(self.udp, 'gso', False) else 'off'}"
                f" gro={'on' if self.gro else 'off'})")

    # --- TUN -> UDP ---------------------------------------------------------------
    def on_tun_readable(self, now: float, reads: int) -> None:
        c, tun, singles = self.c, self.tun, self.singles
        for i in range(reads):
            if self.vnet:
                n = tun.read_into(self.rbuf)
                if n is None:
                    break
                c["tun_rx"] += 1
                if not i:
                    # The first read of a drain leaves before the next read: a lone packet (ping, DNS,
                    # an ACK) does not wait for the read that finds the queue empty, nor for the
                    # gathering below, and takes the shortest way through the session (idle RTT).
                    # A stream loses one packet per drain to it; a super-packet goes its usual way.
                    if n >= VNET_HDR_LEN + 20 and not self.rbuf[0] and not self.rbuf[1]:  # no flags, GSO_NONE
                        self._lone(self.rmv[VNET_HDR_LEN:n], now)
                    else:
                        self._super_packet(n, now)
                        self.flush()
                    continue
                if singles is not None and n >= VNET_HDR_LEN + 20:
                    flags, gso_type, _, _, start, offset = unpack_fields(self.rbuf)
                    try:
                        if gso_type == GSO_NONE and singles.add(self.rmv[VNET_HDR_LEN:n], flags, start, offset):
                            continue
                    except OffloadError:
                        c["tun_rx_malformed"] += 1
                        continue
                    self._send_singles(now)  # what was read before this one leaves first
                self._super_packet(n, now)
            else:
                packet = tun.read()
                if packet is None:
                    break
                c["tun_rx"] += 1
                self._one(memoryview(packet), now)
        self._send_singles(now)
        self.flush()
        self._routes.clear()

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
            if key is None or end - first < SEAL_RUN_MIN or not self._seal_run(singles, first, end, now):
                for j in range(first, end):
                    self._one(singles.packet(j), now)
            first = end
        singles.clear()

    def _seal_run(self, singles, first: int, end: int, now: float) -> bool:
        """Seal singles first..end-1 (one flow) as one run; False if they must go one by one."""
        sealer = self._route(singles.packet(first), now)
        if sealer is None:  # that one is dropped and counted; the others of its flow each the same way
            for j in range(first + 1, end):
                self._one(singles.packet(j), now)
            return True
        self.flush()
        sealed = self.run_sealer.seal(sealer, SINGLE_STRIDE, singles.lengths[first:end], first * SINGLE_STRIDE)
        if sealed is None:
            return False
        self.c["tx_runs"] += 1
        self.count, self.used = sealed
        self.seg, self.endpoints = singles.lengths[first] + OVERHEAD, sealer.endpoints
        self.flush()
        sealer.finish(now)
        return True

    def _super_packet(self, n: int, now: float) -> None:
        if n < VNET_HDR_LEN + 20:
            self.c["tun_rx_malformed"] += 1
            return
        fields = unpack_fields(self.rbuf)
        packet = self.rmv[VNET_HDR_LEN:n]
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
        segmv = self.segmv
        sealer = self.session.sealer(segmv[:lengths[0]], now)
        if sealer is None:
            return
        if self.run_sealer is not None and len(lengths) >= SEAL_RUN_MIN:
            self.flush()
            sealed = self.run_sealer.seal(sealer, stride, lengths)
            if sealed is not None:
                self.c["tx_runs"] += 1
                self.count, self.used = sealed
                self.seg, self.endpoints = lengths[0] + OVERHEAD, sealer.endpoints
                self.flush()
                sealer.finish(now)
                return
        off = 0
        for size in lengths:
            if not self._queue(sealer, segmv[off:off + size]):
                break
            off += stride
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
        """After a bug mid-drain: drop the pending batch (counted), never re-seal it."""
        self.c["udp_tx_dropped"] += self.count * max(1, len(self.endpoints))
        self._reset()
        self._routes.clear()  # a routing decision never outlives its drain

    # --- UDP -> TUN ---------------------------------------------------------------
    def on_udp_readable(self, now: float, reads: int) -> None:
        c, udp, co = self.c, self.udp, self.coalescer
        if not self.gro:
            for _ in range(reads):
                got = udp.recvfrom()
                if got is None:
                    break
                c["udp_recvs"] += 1
                self._open(memoryview(got[0]), len(got[0]), got[1], now)
        else:
            # Back-to-back GRO receives of one sender with full-size datagrams only are one run:
            # opened (and coalesced) together, so the per-run cost is paid once for all of them.
            held = seg = 0
            source = None
            for i in range(reads):
                got = udp.recv_batch(self.umv[held:held + RECV_ROOM])
                if got is None:
                    break
                c["udp_recvs"] += 1
                n, size, sender = got
                if not i and n <= size:  # a lone datagram first: opened and written before receiving on
                    self._open_lone(self.umv[:n], sender, now)
                    continue
                if held and (size != seg or sender != source):
                    self._open(self.umv[:held], seg, source, now)
                    self.ubuf[:n] = bytes(self.umv[held:held + n])  # rare: another sender or size interleaved
                    held = 0
                held, seg, source = held + n, size, sender
                if n % seg or held + RECV_ROOM > len(self.ubuf):
                    self._open(self.umv[:held], seg, source, now)
                    held = 0
            if held:
                self._open(self.umv[:held], seg, source, now)
        if co is not None:
            for item in co.flush():
                self._write(item)

    def _open(self, data: memoryview, seg: int, source, now: float) -> None:
        """Open the datagrams in ``data`` (``seg`` bytes each, the last may be shorter); queue or write them."""
        c, co, n = self.c, self.coalescer, len(data)
        c["udp_rx"] += -(-n // seg) if seg else 1
        try:
            run = self.run_opener.open(self.session, n, seg, source, now) \
                if self.run_opener is not None and seg > 0 and -(-n // seg) >= OPEN_RUN_MIN else None
            if run is None:
                plains = self.session.open_batch(data, seg, source, now, self.pmv)
            else:
                c["rx_runs"] += 1
                if co is not None and run.views is None and (
                        co.add_run(self.pbuf, run.count, run.stride, run.size, run.last_size)
                        or self._write_datagram_run(run)):
                    c["rx_packets"] += run.count
                    return
                plains = run.all_views(self.pmv)
        except Exception as exc:  # noqa: BLE001 - a session bug must not kill the data plane
            self._bug("session.open_batch", exc)
            return
        c["rx_packets"] += len(plains)
        if co is None:
            for plain in plains:
                self._write(plain)
        else:
            add = co.add
            for plain in plains:
                add(plain)

    def _open_lone(self, datagram: memoryview, source, now: float) -> None:
        """Open one datagram and write its packet at once (nothing pending: the first of a drain)."""
        self.c["udp_rx"] += 1
        try:
            size = self.session.open_into(datagram, source, now, self.pmv)
        except Exception as exc:  # noqa: BLE001 - a session bug must not kill the data plane
            self._bug("session.open_into", exc)
            return
        if size:
            self.c["rx_packets"] += 1
            self._write((ZERO_HDR, self.pmv[:size]) if self.vnet else self.pmv[:size], parts=self.vnet)

    def _write_datagram_run(self, run) -> bool:
        """Write a run of UDP packets one by one, each straight from where it was decrypted (one writev
        with an all-zero virtio-net header: no copy, no coalescer); False (nothing done) unless every
        inner packet is UDP."""
        pbuf, count, stride = self.pbuf, run.count, run.stride
        proto_at = 9 if pbuf[0] >> 4 == 4 else 6  # protocol / next header (one IP version and header length)
        if pbuf[proto_at:proto_at + (count - 1) * stride + 1:stride] != _UDP_ROW * count:
            return False
        for item in self.coalescer.flush():  # what came before leaves first
            self._write(item)
        pmv, write = self.pmv, self.tun.write_parts
        size, last = run.size, (count - 1) * stride
        written = 0
        for at in range(0, last + 1, stride):
            written += write((ZERO_HDR, pmv[at:at + (size if at != last else run.last_size)]))
        self.c["tun_tx"] += written
        self.c["tun_tx_dropped"] += count - written
        # The receiving application was just woken with a burst in its socket; on a busy CPU it may
        # share ours, and the next run would overflow its receive buffer (208 KiB by default: about
        # 90 such datagrams) before it gets to read. Yielding once per run lets it: iperf3 -u at full
        # rate, two alternating rounds of 3 x 5 s, delivered 358-519 Mbit/s with the yield against
        # 300-468 without, with fewer drops at the receiver's socket. Costs one syscall per run.
        os.sched_yield()
        return True

    def _write(self, data, parts: bool = False) -> None:
        if self.tun.write_parts(data) if parts else self.tun.write_raw(data) if self.vnet else self.tun.write(data):
            self.c["tun_tx"] += 1
        else:
            self.c["tun_tx_dropped"] += 1
