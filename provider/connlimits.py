"""Connection limits of the provider's HTTPS server: uvicorn on h11, plus what uvicorn has no knob for.

Why: uvicorn's default parser here is httptools, which buffers a request
header of any size (an 8 MB header was answered 200; 30 unfinished 16 MB
headers took the provider from 273 to 1004 MiB), and uvicorn's only timer
is the keep-alive between requests, so a connection that trickles its
header, or sends nothing after the TLS handshake, is held forever.

What is configuration of uvicorn: ``http="h11"`` with
``h11_max_incomplete_event_size`` (h11 refuses a buffered, unfinished
request header over that size). What uvicorn has no knob for, added by
:class:`LimitedH11Protocol` (a subclass of uvicorn's own h11 protocol):

- the size of a header that arrived complete in one read (h11 checks only
  unfinished ones) and the number of header fields -- 431;
- a deadline to finish the header, from the handshake or from the first
  byte of the next request on a kept-alive connection -- 408 and close;
- a deadline to finish the body, from the end of the header -- 408 or close;
- connections per client address (IPv6: per /64) -- 429 and close; and in
  total -- 503 and close. uvicorn's ``limit_concurrency`` answers 503 only
  once a whole request header has arrived, so the connection and its
  buffers would be held until then; here the refusal comes at connect.

The TLS handshake itself is bounded by the event loop (60 s, asyncio's and
uvloop's default) and happens before any protocol sees the connection.
Sizing: a connection that is sending costs about 0.8 MiB while it sends
(uvloop's TLS read buffers; 30 connections flooding 16 MiB headers raised
the RSS by 25 MiB), so ``http_max_connections`` bounds that too.

Config keys in ``STATE/provider.json`` (a missing key means its default)::

    "http_max_header_bytes": 16384          request line + header fields (1024 .. 1048576)
    "http_max_headers": 64                  header fields per request (8 .. 1000)
    "http_header_timeout": 10               seconds to finish a request header (0.1 .. 300)
    "http_body_timeout": 20                 seconds to finish a request body (0.1 .. 600)
    "http_max_connections_per_address": 32  open connections per client address (1 .. 100000)
    "http_max_connections": 1024            open connections in total (1 .. 1000000)

Each refusal is counted (``on_refused(reason)``, the metrics hook) and
logged as one line, at most ``LOG_RATE`` lines a second (no traceback).
"""

from __future__ import annotations

import asyncio
import http
import ipaddress
import json
import logging
from collections import Counter
from dataclasses import dataclass
from typing import Callable, ClassVar

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from provider.limits import RateLimiter
from provider.retention import bounded_setting

log = logging.getLogger("grouptun.provider.http")
LOG_RATE = 5.0
SPECS = {  # field: (config key, low, high, default)
    "max_header_bytes": ("http_max_header_bytes", 1024, 1 << 20, 16384),
    "max_headers": ("http_max_headers", 8, 1000, 64),
    "header_timeout": ("http_header_timeout", 0.1, 300, 10),
    "body_timeout": ("http_body_timeout", 0.1, 600, 20),
    "max_connections_per_address": ("http_max_connections_per_address", 1, 100_000, 32),
    "max_connections": ("http_max_connections", 1, 1_000_000, 1024),
}
REASONS = ("header-too-large", "too-many-headers", "bad-request", "header-timeout", "body-timeout",
           "address-connections", "total-connections")


@dataclass(frozen=True)
class HttpLimits:
    max_header_bytes: int = SPECS["max_header_bytes"][3]
    max_headers: int = SPECS["max_headers"][3]
    header_timeout: float = SPECS["header_timeout"][3]
    body_timeout: float = SPECS["body_timeout"][3]
    max_connections_per_address: int = SPECS["max_connections_per_address"][3]
    max_connections: int = SPECS["max_connections"][3]

    @classmethod
    def from_config(cls, config: dict) -> "HttpLimits":
        """Validated from ``provider.json``'s dict; ConfigError names the key at fault."""
        values = {}
        for name, spec in SPECS.items():
            if name.endswith("timeout"):
                values[name] = float(bounded_setting(config, spec, (int, float), "a number of seconds"))
            else:
                values[name] = int(bounded_setting(config, spec, (int,), "a whole number"))
        return cls(**values)

    def to_config(self) -> dict:
        return {spec[0]: getattr(self, name) for name, spec in SPECS.items()}


def address_key(host: str) -> str:
    """The per-address bucket: the IPv4 address, or the IPv6 /64 (one host usually has a whole /64)."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:  # a dual-stack listener sees IPv4 clients so
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


class _HeaderBoundConnection(h11.Connection):
    """h11's server connection that also refuses complete headers over the size or field count.

    h11 checks ``max_incomplete_event_size`` only while a header is unfinished,
    so a big header that arrives in one read would pass. The refusal is kept
    in ``refusal`` for :meth:`LimitedH11Protocol.send_400_response`.
    """

    def __init__(self, limits: HttpLimits) -> None:
        super().__init__(h11.SERVER, max_incomplete_event_size=limits.max_header_bytes)
        self.limits = limits
        self.refusal: tuple[int, str, str] | None = None

    def next_event(self):
        try:
            event = super().next_event()
        except h11.RemoteProtocolError as exc:
            if exc.error_status_hint == 431:
                self.refusal = (431, "header-too-large", f"request header over {self.limits.max_header_bytes} bytes")
            else:
                self.refusal = (400, "bad-request", f"malformed HTTP request: {str(exc)[:80]}")
            raise
        if isinstance(event, h11.Request):
            if len(event.headers) > self.limits.max_headers:
                self.refusal = (431, "too-many-headers", f"more than {self.limits.max_headers} header fields")
                raise h11.RemoteProtocolError(self.refusal[2], error_status_hint=431)
            size = len(event.method) + len(event.target) + sum(len(k) + len(v) + 4 for k, v in event.headers)
            if size > self.limits.max_header_bytes:
                self.refusal = (431, "header-too-large", f"request header over {self.limits.max_header_bytes} bytes")
                raise h11.RemoteProtocolError(self.refusal[2], error_status_hint=431)
        return event


def _raw_response(status: int, detail: str) -> bytes:
    body = json.dumps({"detail": detail}).encode()
    return (f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n").encode() + body


class LimitedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with header limits, header/body deadlines and connection caps.

    Build the class to hand to ``uvicorn.Config(http=...)`` with :func:`protocol_class`.
    Runs on the event loop only (uvicorn calls every method from it).
    """

    limits: ClassVar[HttpLimits]
    open_per_address: ClassVar[Counter]
    on_refused: ClassVar[Callable[[str], None]]
    log_budget: ClassVar[RateLimiter]

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.conn = _HeaderBoundConnection(self.limits)
        self._deadline: asyncio.TimerHandle | None = None
        self._waiting_for = ""  # "header" or "body" while a deadline runs
        self._address: str | None = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._address = address_key(self.client[0]) if self.client else "unknown"
        self.open_per_address[self._address] += 1
        if len(self.connections) > self.limits.max_connections:
            self._refuse(503, "total-connections", "too many connections to the provider; try again later")
        elif self.open_per_address[self._address] > self.limits.max_connections_per_address:
            self._refuse(429, "address-connections", "too many connections from this address")
        else:
            self._arm("header", self.limits.header_timeout)

    def connection_lost(self, exc) -> None:
        self._disarm()
        if self._address is not None:
            self.open_per_address[self._address] -= 1
            if self.open_per_address[self._address] <= 0:
                del self.open_per_address[self._address]
            self._address = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._follow(new_bytes=True)

    def on_response_complete(self) -> None:
        super().on_response_complete()  # may parse a pipelined request that was waiting
        self._follow(new_bytes=False)

    def send_400_response(self, msg: str) -> None:
        # uvicorn calls this on any h11.RemoteProtocolError, after its own one-line warning.
        status, reason, detail = self.conn.refusal or (400, "bad-request", "malformed HTTP request")
        self._refuse(status, reason, detail)

    def handle_websocket_upgrade(self, event) -> None:
        # The provider serves no WebSocket, and the switch would hand the transport to a protocol
        # that never calls our connection_lost: the address's count would never come down.
        self._refuse(400, "bad-request", "no WebSocket here")

    def shutdown(self) -> None:
        # A refused connection may wait for the client's TLS close_notify; h11 (to which our
        # refusal was never told) would refuse uvicorn's ConnectionClosed at server shutdown.
        if not self.transport.is_closing():
            super().shutdown()

    def _follow(self, new_bytes: bool) -> None:
        """Run the deadline that matches where the client is in its request."""
        state = self.conn.their_state
        if self.transport.is_closing():
            self._disarm()
        elif state is h11.IDLE:
            # Between requests uvicorn's keep-alive timer runs; the first byte of a header starts ours.
            if new_bytes and self._waiting_for != "header":
                self._arm("header", self.limits.header_timeout)
        elif state is h11.SEND_BODY:
            if self._waiting_for != "body":
                self._arm("body", self.limits.body_timeout)
        else:
            self._disarm()

    def _arm(self, what: str, seconds: float) -> None:
        self._disarm()
        self._waiting_for = what
        self._deadline = self.loop.call_later(seconds, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline, self._waiting_for = None, ""

    def _expired(self) -> None:
        what = self._waiting_for
        self._deadline, self._waiting_for = None, ""
        seconds = self.limits.header_timeout if what == "header" else self.limits.body_timeout
        answered = what == "body" and self.cycle is not None and self.cycle.response_started
        self._refuse(408, f"{what}-timeout", f"request {what} not finished within {seconds:g} s", answered)

    def _refuse(self, status: int, reason: str, detail: str, answered: bool = False) -> None:
        """Count, log (budgeted), answer ``status`` unless this request has its answer already, close."""
        self.on_refused(reason)
        if self.log_budget.allow("log"):
            log.warning("refused %s: %s (%d %s)", self.client[0] if self.client else "?", detail, status, reason)
        self._disarm()
        if self.transport.is_closing():
            return
        if not answered:
            # Written past h11 (whose state may not allow a response now): the connection closes next.
            self.transport.write(_raw_response(status, detail))
        self.transport.close()


def protocol_class(limits: HttpLimits, on_refused: Callable[[str], None] = lambda reason: None) -> type:
    """A :class:`LimitedH11Protocol` subclass bound to ``limits`` (one per server: it holds the address table)."""
    return type("LimitedH11Protocol", (LimitedH11Protocol,), {
        "limits": limits, "open_per_address": Counter(), "on_refused": staticmethod(on_refused),
        "log_budget": RateLimiter(LOG_RATE, LOG_RATE * 2)})
