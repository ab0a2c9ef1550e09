"""The hot path: TUN <-> session <-> UDP on one event loop (uvloop).

    TUN readable  -> drain: session.on_tun_packet(pkt, now) -> udp.sendto each
    UDP readable  -> drain: session.on_datagram(dgram, src, now) -> tun.write
    timer (tick)  -> session.on_timer(now) -> udp.sendto each

Readers drain until EAGAIN, bounded per wake-up (``batch``) so one busy
direction cannot starve the other or the control socket. Nothing here
touches the provider, a file or a lock; the control thread reaches the
session only through ``loop.call_soon_threadsafe`` (:class:`LoopPort`).

Two paths, chosen from what the devices offer (``offload="off"`` forces the
first; the choice is logged once at :meth:`DataPlane.attach` and shown in
``counters["path"]``, hence in ``grouptun status --json``):

- plain: one read, one ``session.on_tun_packet``, one ``sendto`` per packet
  (and back), as above;
- batched (:class:`grouptun.offload.datapath.BatchPath`), when the TUN has a
  virtio-net header (TSO super-packets in, GRO super-packets out) or the
  socket has UDP GSO/GRO: route once per super-packet, seal segments into one
  buffer, one ``sendmsg`` per 64 datagrams; open whole GRO receives at once.

The TUN and UDP objects are duck-typed (``fileno``, ``read``/``write``,
``recvfrom``/``sendto``; batched: ``vnet_hdr``/``read_into``/``write_raw``/``write_parts``,
``gso``/``gro``/``recv_batch``/``send_batch``), so tests drive this with
in-memory fakes.
Limits: a send the kernel refuses is dropped and counted, never retried
(the inner protocol retransmits); a session bug on one packet is logged
(rate-limited) and counted, and the loop carries on.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from typing import Callable

from grouptun.errors import ConfigError, LoopUnavailable

log = logging.getLogger("grouptun.data")

COUNTERS = ("tun_rx", "tun_tx", "tun_tx_dropped", "udp_rx", "udp_tx", "udp_tx_dropped", "internal_errors")
BATCH_COUNTERS = ("tun_rx_malformed", "udp_sends", "udp_recvs", "rx_packets", "tx_runs", "rx_runs")


class DataPlane:
    def __init__(self, session, tun, udp, clock: Callable[[], float] = time.monotonic,
                 tick: float = 0.5, batch: int = 256, offload: str = "auto") -> None:
        if offload not in ("auto", "off"):
            raise ConfigError("daemon.offload", f"must be 'auto' or 'off', not {offload!r}")
        self.session, self.tun, self.udp = session, tun, udp
        self.clock, self.tick, self.batch = clock, tick, batch
        self.counters: dict = dict.fromkeys(COUNTERS, 0)
        self.fast = None
        wants = getattr(tun, "vnet_hdr", False) or getattr(udp, "gso", False) or getattr(udp, "gro", False)
        # GRO or a vnet header cannot be read by the plain path: "off" only where the devices allow it.
        if wants and (offload == "auto" or getattr(udp, "gro", False) or getattr(tun, "vnet_hdr", False)):
            from grouptun.offload.datapath import BatchPath

            self.fast = BatchPath(session, tun, udp, self.counters, self._bug)
            self.counters.update(dict.fromkeys(BATCH_COUNTERS, 0))
        self.path = self.fast.describe() if self.fast else "plain (one packet per read and send)"
        self.counters["path"] = self.path
        self.last_progress = clock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._last_error_log = 0.0

    # --- wiring ---
    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        log.info("data path: %s", self.path)
        loop.add_reader(self.tun.fileno(), self.on_tun_readable)
        loop.add_reader(self.udp.fileno(), self.on_udp_readable)
        self._timer = loop.call_later(self.tick, self._on_tick)

    def detach(self) -> None:
        if self._loop is None:
            return
        self._loop.remove_reader(self.tun.fileno())
        self._loop.remove_reader(self.udp.fileno())
        if self._timer is not None:
            self._timer.cancel()
        self._loop = None

    # --- handlers (also called directly by tests) ---
    def _send_all(self, datagrams) -> None:
        c = self.counters
        for endpoint, data in datagrams:
            if self.udp.sendto(data, endpoint):
                c["udp_tx"] += 1
            else:
                c["udp_tx_dropped"] += 1

    def _bug(self, where: str, exc: Exception) -> None:
        self.counters["internal_errors"] += 1
        now = self.clock()
        if now - self._last_error_log >= 10.0:
            self._last_error_log = now
            log.error("%s failed (counted, traffic continues): %r", where, exc, exc_info=True)

    def on_tun_readable(self) -> None:
        now = self.clock()
        if self.fast is not None:
            try:
                self.fast.on_tun_readable(now, min(self.batch, 64))
            except Exception as exc:  # noqa: BLE001 - a bug on one read must not kill the data plane
                self._bug("batched TUN drain", exc)
                self.fast.abandon()
            self.last_progress = now
            return
        for _ in range(self.batch):
            try:
                packet = self.tun.read()
            except OSError as exc:  # counted like the batched path's; the loop comes back on the next event
                self._bug("TUN read", exc)
                break
            if packet is None:
                break
            self.counters["tun_rx"] += 1
            try:
                out = self.session.on_tun_packet(packet, now)
            except Exception as exc:  # noqa: BLE001 - a session bug must not kill the data plane
                self._bug("session.on_tun_packet", exc)
                continue
            self._send_all(out)
        self.last_progress = now

    def on_udp_readable(self) -> None:
        now = self.clock()
        if self.fast is not None:
            try:
                self.fast.on_udp_readable(now, min(self.batch, 64))
            except Exception as exc:  # noqa: BLE001
                self._bug("batched UDP drain", exc)
            self.last_progress = now
            return
        c = self.counters
        for _ in range(self.batch):
            try:
                got = self.udp.recvfrom()
            except OSError as exc:
                self._bug("UDP receive", exc)
                break
            if got is None:
                break
            data, source = got
            c["udp_rx"] += 1
            try:
                inner = self.session.on_datagram(data, source, now)
            except Exception as exc:  # noqa: BLE001
                self._bug("session.on_datagram", exc)
                continue
            if inner is None:
                continue
            if self.tun.write(inner):
                c["tun_tx"] += 1
            else:
                c["tun_tx_dropped"] += 1
        self.last_progress = now

    def on_tick(self) -> None:
        now = self.clock()
        try:
            self._send_all(self.session.on_timer(now))
        except Exception as exc:  # noqa: BLE001
            self._bug("session.on_timer", exc)
        self.last_progress = now

    def _on_tick(self) -> None:
        self.on_tick()
        if self._loop is not None:
            self._timer = self._loop.call_later(self.tick, self._on_tick)

    def healthy(self) -> bool:
        """For the watchdog: the loop ran our timer recently."""
        return self.clock() - self.last_progress < max(10.0, 20 * self.tick)


class LoopPort:
    """The control thread's door to the session: each call runs on the loop thread.

    Every call raises LoopUnavailable: ``closed`` when the loop is closed
    (shutdown), else when the loop does not answer within ``timeout`` -- a
    call the loop had already started still finishes there later.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, session, clock: Callable[[], float] = time.monotonic,
                 on_install: Callable[[object], None] | None = None, timeout: float = 10.0) -> None:
        self.loop, self.session, self.clock = loop, session, clock
        self.on_install, self.timeout = on_install, timeout

    def _call(self, fn: Callable, on_cancel: Callable[[], None] | None = None):
        future: concurrent.futures.Future = concurrent.futures.Future()

        def run() -> None:
            if not future.set_running_or_notify_cancel():
                if on_cancel is not None:
                    on_cancel()
                return
            try:
                future.set_result(fn())
            except BaseException as exc:  # handed to the waiting thread, which re-raises it
                future.set_exception(exc)

        try:
            self.loop.call_soon_threadsafe(run)
        except RuntimeError as exc:  # asyncio and uvloop both say "Event loop is closed"
            if on_cancel is not None:
                on_cancel()
            raise LoopUnavailable("event loop is closed (shutting down)", closed=True) from exc
        try:
            return future.result(self.timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise LoopUnavailable(f"event loop did not answer within {self.timeout:g} s") from None

    def install(self, material) -> None:
        def run():
            self.session.install_epoch(material, self.clock())
            if self.on_install is not None:
                self.on_install(material)

        def abandoned() -> None:  # never reached the loop: never installed
            material.wipe_secrets()

        self._call(run, abandoned)

    def update_endpoints(self, members) -> int:
        """``Session.update_endpoints`` on the loop thread; the number of peers changed."""
        return self._call(lambda: self.session.update_endpoints(members))

    def take_requests(self) -> set[str]:
        return self._call(self.session.take_requests)

    def packets_sent(self) -> dict[int, int]:
        return self._call(self.session.packets_sent)

    def stop_sending(self) -> None:
        """Wipe every epoch of the session (it seals nothing afterwards): another daemon owns our member."""
        self._call(self.session.close)
