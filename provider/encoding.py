"""gzip for the archive responses (``GET .../archive`` and ``.../watch``), negotiated by Accept-Encoding.

Why: every member fetches the whole signed archive after each rekey, so
one rekey moves members x archive size (``scripts/bench-provider``
measures it). The archive is JSON with base64 keys inside a JSON string,
so gzip takes about a quarter off; members' clients (``requests``) ask
for gzip by default and decode it transparently, so the signed bytes they
verify are unchanged: nothing in the protocol changes.

One compressed body per group, form (full or compact, PROTOCOL.md 2.2) and
archive version (:class:`GzipCache`, keyed by ``(group, compact)``),
made on first demand and shared by every watcher of that version, so a
fan-out to N watchers compresses once, not N times. Compression is
deterministic (``mtime=0``). The archive is no secret to its members and
the response carries nothing else, so compressing it leaks nothing
(no CRIME/BREACH-style mix of secret and attacker-chosen bytes).
"""

from __future__ import annotations

import gzip
import threading
from typing import Hashable

from starlette.responses import Response

__all__ = ["CHUNK", "GZIP_LEVEL", "ChunkedResponse", "GzipCache", "accepts_gzip"]

GZIP_LEVEL = 6  # zlib's default: ~ -30 % on an archive; 9 saves < 1 % more for twice the CPU
CHUNK = 64 * 1024  # uvicorn waits for the socket to drain between body messages, not within one


def accepts_gzip(header: str | None) -> bool:
    """Whether an Accept-Encoding value (RFC 9110 12.5.3) accepts gzip: ``gzip``/``x-gzip``/``*``
    with a q-value above 0; an explicit ``gzip;q=0`` wins over ``*``."""
    if not header:
        return False
    wildcard = False
    for item in header.split(","):
        coding, _, params = item.strip().partition(";")
        coding = coding.strip().lower()
        q = 1.0
        for param in params.split(";"):
            name, _, value = param.strip().partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0  # malformed: treat as not acceptable
        if coding in ("gzip", "x-gzip"):
            return q > 0
        if coding == "*":
            wildcard = q > 0
    return wildcard


class GzipCache:
    """The gzip body of the newest archive version per group (older versions are dropped).

    Thread-safe (routes call :meth:`body` from the thread pool); the watch hub fills it when it reads a
    new version, so a fan-out finds the body ready (:meth:`cached`)."""

    def __init__(self, level: int = GZIP_LEVEL) -> None:
        self.level = level
        self._lock = threading.Lock()
        self._bodies: dict[Hashable, tuple[int, bytes]] = {}  # (group, compact?) -> (version, gzip body)

    def cached(self, group: Hashable, version: int) -> bytes | None:
        """The body of exactly this version if it was compressed already (no work: safe on the event loop)."""
        cached = self._bodies.get(group)
        return cached[1] if cached is not None and cached[0] == version else None

    def body(self, group: Hashable, version: int, raw: bytes) -> bytes:
        """The body of ``raw`` (the archive of ``version``), compressing it at most once per version."""
        with self._lock:  # held while compressing: concurrent askers of a new version wait, not redo it
            cached = self.cached(group, version)
            if cached is not None:
                return cached
            body = gzip.compress(raw, self.level, mtime=0)
            current = self._bodies.get(group)
            if current is None or current[0] <= version:
                self._bodies[group] = (version, body)
            return body


class ChunkedResponse(Response):
    """A response whose (Content-Length) body goes out in ``CHUNK`` pieces.

    uvicorn writes one body message into the connection's buffer whole and
    waits for the socket to drain only before the next message; TLS then
    holds an encrypted copy per connection. Sent whole, a rekey's fan-out
    to W watchers held W x archive at once (10,000 watchers of a 184 KiB
    archive: 2.8 GiB peak RSS, ``scripts/bench-provider``); in pieces each
    connection holds about one piece plus the transport's high-water mark,
    and a watcher that reads slowly holds only its own."""

    async def __call__(self, scope, receive, send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        body = memoryview(self.body)
        for offset in range(0, max(len(body), 1), CHUNK):
            await send({"type": "http.response.body", "body": bytes(body[offset:offset + CHUNK]),
                        "more_body": offset + CHUNK < len(body)})
