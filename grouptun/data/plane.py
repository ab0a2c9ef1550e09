"""The hot path: TUN <-> session <-> UDP on one event loop (uvloop), one run at a time.

    TUN readable -> for each run of tun.read_runs():  session.seal_run -> udp.send_run per endpoint
    UDP readable -> for each run of udp.recv_runs():  session.open_run -> tun.write; tun.flush
    timer (tick) -> session.on_timer(now)            -> udp.send_run per keepalive

The devices (:mod:`grouptun.data.devices`) hide every offload, so this is the only path, for a lone packet
(a run of one, sent at once) as for a TSO super-packet. Drains stop after :data:`DRAIN_BYTES` so one
busy direction cannot starve the other or the control socket. Nothing here touches the provider, a
file or a lock; the control thread reaches the session only through ``loop.call_soon_threadsafe``
(:class:`LoopPort`). The path is logged once at :meth:`DataPlane.attach` and shown in
``counters["path"]``, hence in ``grouptun status --json``.

Limits: a send the kernel refuses is dropped and counted, never retried (the inner protocol
retransmits) and never re-sealed, so no (epoch, s) goes out twice; a session bug on one run is logged
(rate-limited) and counted, and the loop carries on.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from typing import Callable

from grouptun.core.wire import OVERHEAD
from grouptun.data.devices import TunDevice, UdpTransport
from grouptun.errors import LoopUnavailable
from grouptun.data.offload.tunruns import SEND_ROOM
from grouptun.data.udp import RECV_ROOM, RECV_RUNS

log = logging.getLogger("grouptun.data")

COUNTERS = ("tun_rx", "tun_tx", "udp_rx", "udp_tx", "udp_tx_dropped", "tx_runs", "rx_runs", "internal_errors")
# A drain stops once it has read this much (either direction), so that the other direction, the TCP
# ACKs among it, gets its turn: a bulk TCP sender is held by its send buffer (4 MiB), and its rate is
# that buffer over the round trip, which an ACK waiting behind a 4 MiB drain lengthens by milliseconds.
# TCP x1, 6 interleaved rounds x 12 s: 3240 Mbit/s against 2951 without the limit (64 reads).
DRAIN_BYTES = 512 * 1024


class DataPlane:
    def __init__(self, session, tun: TunDevice, udp: UdpTransport, clock: Callable[[], float] = time.monotonic,
                 tick: float = 0.5) -> None:
        self.session, self.tun, self.udp = session, tun, udp
        self.clock, self.tick = clock, tick
        self.counters: dict = dict.fromkeys(COUNTERS, 0)
        self.path = f"runs (tun {tun.describe()}; {udp.describe()})"
        self.counters["path"] = self.path
        self.sbuf = bytearray(SEND_ROOM + 64 * 1024 + 64)  # a train's datagrams, or one 64 KiB packet's
        self.smv = memoryview(self.sbuf)
        self.pbuf = bytearray(RECV_RUNS * RECV_ROOM + 64)  # plaintexts of one received run (+ CTR slack)
        self.pmv = memoryview(self.pbuf)
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

    def status(self) -> dict:
        """The loop's counters and the devices' own (malformed reads, refused writes)."""
        return {**self.counters, **self.tun.counters}

    # --- handlers (also called directly by tests) ---
    def _bug(self, where: str, exc: Exception) -> None:
        self.counters["internal_errors"] += 1
        now = self.clock()
        if now - self._last_error_log >= 10.0:
            self._last_error_log = now
            log.error("%s failed (counted, traffic continues): %r", where, exc, exc_info=True)

    def _send(self, data: memoryview, seg: int, endpoints) -> None:
        c, send_run, count = self.counters, self.udp.send_run, -(-len(data) // seg)
        for endpoint in endpoints:
            sent = send_run(data, seg, endpoint)
            c["udp_tx"] += sent
            c["udp_tx_dropped"] += count - sent

    def on_tun_readable(self) -> None:
        now = self.clock()
        c, seal_run, smv = self.counters, self.session.seal_run, self.smv
        try:
            for buf, offset, stride, count, size, last in self.tun.read_runs(DRAIN_BYTES):  # PlainRun
                c["tun_rx"] += count
                try:
                    sealed = seal_run(buf, offset, stride, count, size, last, smv, now)
                except Exception as exc:  # noqa: BLE001 - a session bug must not kill the data plane
                    self._bug("session.seal_run", exc)
                    continue
                if sealed is not None:
                    length, endpoints = sealed
                    c["tx_runs"] += 1
                    self._send(smv[:length], size + OVERHEAD, endpoints)
        except Exception as exc:  # noqa: BLE001 - a refused read or a device bug: the drain ends, counted
            self._bug("TUN drain", exc)
        self.last_progress = now

    def on_udp_readable(self) -> None:
        now = self.clock()
        c, open_run, tun, pbuf, pmv = self.counters, self.session.open_run, self.tun, self.pbuf, self.pmv
        try:
            for data, seg, source in self.udp.recv_runs(DRAIN_BYTES):
                c["udp_rx"] += -(-len(data) // seg) if seg else 1
                try:
                    opened = open_run(data, seg, source, now, pmv)
                except Exception as exc:  # noqa: BLE001 - a session bug must not kill the data plane
                    self._bug("session.open_run", exc)
                    continue
                c["rx_runs"] += 1
                c["tun_tx"] += tun.write(pbuf, opened)
        except Exception as exc:  # noqa: BLE001 - as above
            self._bug("UDP drain", exc)
        tun.flush()
        self.last_progress = now

    def on_tick(self) -> None:
        now = self.clock()
        try:
            for endpoint, datagram in self.session.on_timer(now):
                self._send(memoryview(datagram), len(datagram), (endpoint,))
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
