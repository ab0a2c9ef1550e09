"""The batched data path: TUN super-packets <-> session batches <-> UDP GSO/GRO.

    TUN readable -> offload.sendpath.SendPath (segment, seal as runs, one sendmsg(UDP_SEGMENT) per
                    up to 64 equal datagrams)
    UDP readable -> recv (UDP_GRO: many datagrams of one sender) -> open as a run (core.vector) or
                    datagram by datagram (session.open_batch); a lone datagram first of a drain
                    through Session.open_into and written at once (idle RTT)
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

Limits: inner-packet views from ``open_batch`` live only until the next
receive, hence the coalescer copies them.
"""

from __future__ import annotations

import os

from grouptun.core import vector
from grouptun.offload.coalesce import Coalescer
from grouptun.offload.sendpath import DRAIN_BYTES, SendPath
from grouptun.offload.vnet import ZERO_HDR

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
# Below this count a run costs more than datagram by datagram: the numpy steps have a fixed cost of
# tens of µs (measured in process, plain UDP drains of K packets: the run opener wins from K = 12), so
# light traffic and lone packets take the per-datagram path.
OPEN_RUN_MIN = 12


class BatchPath:
    """The two drains of the batched path; counters are the data plane's dict."""

    def __init__(self, session, tun, udp, counters: dict, bug) -> None:
        self.session, self.tun, self.udp, self.c, self._bug = session, tun, udp, counters, bug
        self.vnet = bool(getattr(tun, "vnet_hdr", False))
        self.gro = bool(getattr(udp, "gro", False))
        self.send = SendPath(session, tun, udp, counters, bug)
        self.ubuf = bytearray(RECV_RUNS * RECV_ROOM)
        self.umv = memoryview(self.ubuf)
        self.pbuf = bytearray(RECV_RUNS * RECV_ROOM + 64)
        self.pmv = memoryview(self.pbuf)
        self.coalescer = Coalescer(verify_checksums=False, udp=MERGE_UDP) if self.vnet else None
        # numpy: whole GRO receives as one run (core.vector); else per datagram
        self.run_opener = vector.RunOpener(self.ubuf, self.pbuf) if vector.AVAILABLE and self.gro else None

    def describe(self) -> str:
        tun = self.tun.describe() if hasattr(self.tun, "describe") else ("vnet_hdr" if self.vnet else "plain")
        return (f"batched (tun {tun}; udp gso={'on' if getattr(self.udp, 'gso', False) else 'off'}"
                f" gro={'on' if self.gro else 'off'})")

    # --- TUN -> UDP (offload.sendpath) ----------------------------------------------
    def on_tun_readable(self, now: float, reads: int) -> None:
        self.send.on_tun_readable(now, reads)

    def abandon(self) -> None:
        """After a bug mid-drain: drop the pending send batch (counted), never re-seal it."""
        self.send.abandon()

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
            budget = DRAIN_BYTES
            for i in range(reads):
                if budget <= 0:
                    break
                got = udp.recv_batch(self.umv[held:held + RECV_ROOM])
                if got is None:
                    break
                c["udp_recvs"] += 1
                n, size, sender = got
                budget -= n
                if not n:  # an empty datagram: counted as short by the session; no size to step by
                    self._open_lone(self.umv[held:held], sender, now)
                    continue
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
