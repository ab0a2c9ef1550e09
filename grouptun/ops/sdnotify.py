"""The systemd notification protocol (sd_notify(3)), without libsystemd.

A service of ``Type=notify`` tells the manager how it is doing by sending
``KEY=VALUE`` lines in one AF_UNIX datagram to ``$NOTIFY_SOCKET``:

    READY=1                         startup finished (``systemctl start`` returns)
    STATUS=...                      one line shown by ``systemctl status``
    RELOADING=1 + MONOTONIC_USEC=   a reload (SIGHUP) began; READY=1 ends it
    STOPPING=1                      shutdown began (drain)
    WATCHDOG=1                      still alive (``WatchdogSec=``)
    EXTEND_TIMEOUT_USEC=            startup/shutdown needs longer than the unit says

When ``NOTIFY_SOCKET`` is unset (a terminal, a test, another supervisor)
every method is a no-op that returns False, so callers never branch on
"am I under systemd". Limits: one datagram per call, no file-descriptor
passing (FDSTORE), no ``BARRIER=1``; failures to send are logged once and
otherwise ignored because a broken manager socket must not stop the VPN.
A manager that does not read its socket makes a state message wait at most
``send_timeout`` (1 s) and a watchdog ping not at all, then they are dropped.

:func:`run_watchdog` pings from the asyncio loop itself, at half the
interval systemd asked for: when a callback blocks the loop (a stalled data
plane), pings stop and systemd restarts the service. Pinging from a thread
would keep a wedged daemon alive, which is exactly what the watchdog exists
to catch.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping

log = logging.getLogger(__name__)

# STATUS= is one line in `systemctl status`; longer text only hides the rest.
MAX_STATUS_CHARS = 200


def _socket_address(value: str) -> str | bytes | None:
    """NOTIFY_SOCKET -> sendto() address; '@name' is a Linux abstract socket."""
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    # vsock:... and relative paths are not ours to guess at.
    log.warning("NOTIFY_SOCKET %r is not a path or an abstract socket; notifications disabled", value)
    return None


def _one_line(text: str) -> str:
    # A newline would start a new KEY=VALUE assignment in the datagram.
    flat = " ".join(str(text).split())
    return flat[:MAX_STATUS_CHARS]


def _status_field(status: str | None) -> tuple[str, ...]:
    return () if status is None else ("STATUS=" + _one_line(status),)


class Notifier:
    """Sends sd_notify messages; every method is a no-op without a socket.

    Any thread may send (the socket is made up front, sendto is atomic);
    the watchdog means something only when pinged from the event loop.
    """

    def __init__(self, address: str | bytes | None, watchdog_usec: int | None = None,
                 send_timeout: float = 1.0) -> None:
        self._address = address
        # For messages: the '@name' form (bytes would be redacted by logsetup).
        self._shown = "@" + address[1:].decode(errors="replace") if isinstance(address, bytes) else address
        self.send_timeout = send_timeout
        self._watchdog_usec = watchdog_usec if watchdog_usec and watchdog_usec > 0 else None
        self._sock: socket.socket | None = None
        self._warned = False
        if address is not None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.setblocking(False)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, pid: int | None = None) -> "Notifier":
        """Build from NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID.

        WATCHDOG_PID names the process the watchdog is meant for; a child
        that inherited the variables must not ping on its parent's behalf.
        """
        env = os.environ if environ is None else environ
        pid = os.getpid() if pid is None else pid
        raw = env.get("NOTIFY_SOCKET", "")
        address = _socket_address(raw) if raw else None
        usec: int | None = None
        watchdog_pid = env.get("WATCHDOG_PID", "")
        if env.get("WATCHDOG_USEC") and (not watchdog_pid or watchdog_pid == str(pid)):
            try:
                usec = int(env["WATCHDOG_USEC"])
            except ValueError:
                log.warning("ignoring malformed WATCHDOG_USEC=%r", env["WATCHDOG_USEC"])
        return cls(address, usec)

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, *assignments: str, wait: float | None = None) -> bool:
        """Send ``KEY=VALUE`` assignments in one datagram. True if sent.

        Never blocks longer than ``wait`` seconds (default ``send_timeout``):
        when the manager does not drain its socket (queue full), the message
        is dropped rather than stalling the event loop.
        """
        if self._sock is None:
            return False
        payload = "\n".join(assignments).encode()
        limit = self.send_timeout if wait is None else wait
        deadline = time.monotonic() + limit
        try:
            while True:
                try:
                    self._sock.sendto(payload, self._address)
                    return True
                except BlockingIOError:
                    # An unconnected datagram socket cannot poll for the peer's
                    # queue; short sleeps bound the wait instead.
                    if time.monotonic() >= deadline:
                        raise BlockingIOError(f"manager queue full for {limit:.1f}s") from None
                    time.sleep(0.005)
        except OSError as exc:
            if not self._warned:
                log.warning("sd_notify %s to %s failed: %s (further failures not logged)",
                            assignments[0].split("=")[0], self._shown, exc)
                self._warned = True
            return False

    def ready(self, status: str | None = None) -> bool:
        """Startup (or a reload) finished."""
        return self.notify("READY=1", *_status_field(status))

    def status(self, text: str) -> bool:
        return self.notify("STATUS=" + _one_line(text))

    def reloading(self, status: str | None = None) -> bool:
        """A reload began. MONOTONIC_USEC lets Type=notify-reload (systemd
        253+) tell this reload from an older one; 252 ignores it."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}", *_status_field(status))

    def stopping(self, status: str | None = None) -> bool:
        return self.notify("STOPPING=1", *_status_field(status))

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for ``seconds`` more before the start/stop timeout fires."""
        return self.notify(f"EXTEND_TIMEOUT_USEC={int(seconds * 1_000_000)}")

    def watchdog(self) -> bool:
        if self._watchdog_usec is None:
            return False
        # Never wait: a ping that cannot go now is simply missed.
        return self.notify("WATCHDOG=1", wait=0.0)

    def watchdog_interval(self) -> float | None:
        """Seconds systemd waits between pings before it kills us, or None."""
        if self._sock is None or self._watchdog_usec is None:
            return None
        return self._watchdog_usec / 1_000_000

    def close(self) -> None:
        """Further calls are no-ops."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None


async def run_watchdog(notifier: Notifier, healthy: Callable[[], bool] | None = None) -> None:
    """Ping the watchdog from this event loop at half its interval, forever.

    ``healthy`` (optional, called on the loop) may veto a ping, e.g. when the
    data plane has not made progress; a vetoed ping is logged once per
    unhealthy spell. Returns at once when no watchdog is configured; cancel
    the task to stop.
    """
    interval = notifier.watchdog_interval()
    if interval is None:
        return
    period = interval / 2
    vetoed = False
    while True:
        ok = healthy() if healthy is not None else True
        if ok:
            notifier.watchdog()
            if vetoed:
                log.info("health check passes again; watchdog pings resumed")
            vetoed = False
        elif not vetoed:
            log.warning("health check failed; withholding watchdog pings (systemd will restart us)")
            vetoed = True
        await asyncio.sleep(period)


def start_watchdog(notifier: Notifier, healthy: Callable[[], bool] | None = None) -> asyncio.Task | None:
    """Start :func:`run_watchdog` on the running loop; None when not needed."""
    if notifier.watchdog_interval() is None:
        return None
    return asyncio.get_running_loop().create_task(run_watchdog(notifier, healthy), name="sd-watchdog")
