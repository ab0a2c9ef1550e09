"""A keep-alive HTTP/1.1 client on raw asyncio TLS streams that counts every byte it receives.

No client library in the way: one connection per :class:`Conn`, requests
one after another on it, responses read by Content-Length (the provider
always sends one), ``Content-Encoding: gzip`` decoded only when asked
(counting is of the bytes on the wire, HTTP head + body, before TLS).
Loopback benchmark use only: the certificate is not checked.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gzip
import ssl
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from grouptun.control.reqsign import sign_headers

READ_LIMIT = 1 << 20


@functools.cache
def client_context() -> ssl.SSLContext:
    """One context for every connection (making one loads the CA store: ~50 ms)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE  # loopback benchmark: no pin needed
    return ctx


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes  # as received (still gzip when Content-Encoding says so)
    wire: int    # bytes of head + body

    def decoded(self) -> bytes:
        return gzip.decompress(self.body) if self.headers.get("content-encoding") == "gzip" else self.body


@dataclass
class Conn:
    url: str  # https://127.0.0.1:PORT
    ctx: ssl.SSLContext = field(default_factory=client_context)
    received: int = 0
    _reader: asyncio.StreamReader | None = None
    _writer: asyncio.StreamWriter | None = None

    async def open(self, timeout: float = 30.0) -> None:
        parts = urlsplit(self.url)
        self._reader, self._writer = await asyncio.wait_for(
            asyncio.open_connection(parts.hostname, parts.port, ssl=self.ctx, limit=READ_LIMIT), timeout)

    async def get(self, path: str, headers: dict[str, str] | None = None, timeout: float = 90.0) -> Reply:
        if self._writer is None:
            await self.open()
        head = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self._writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{head}\r\n".encode())
        return await asyncio.wait_for(self._read(), timeout)

    async def signed_get(self, path: str, member: str, key, encoding: str = "identity",
                         timeout: float = 90.0) -> Reply:
        """``GET path`` signed as ``member`` (RFC 9421, grouptun.control.reqsign), asking for ``encoding``."""
        headers = {"Accept-Encoding": encoding}
        sign_headers("GET", self.url + path, headers, b"", member, key)
        return await self.get(path, headers, timeout)

    async def _read(self) -> Reply:
        status_line = await self._reader.readline()
        if not status_line:
            raise ConnectionError("server closed the connection")
        wire, headers = len(status_line), {}
        while (line := await self._reader.readline()) not in (b"\r\n", b""):
            wire += len(line)
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        wire += 2
        length = int(headers.get("content-length", "0"))
        body = await self._reader.readexactly(length) if length else b""
        self.received += wire + length
        return Reply(int(status_line.split()[1]), headers, body, wire + length)

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            # ending this connection anyway: a server that already went, or a slow close_notify, is no error
            with contextlib.suppress(OSError, asyncio.TimeoutError, ssl.SSLError):
                await asyncio.wait_for(self._writer.wait_closed(), 5)
            self._writer = None


async def metric_sum(url: str, prefix: str, contains: str = "") -> float:
    """Sum of the ``/metrics`` samples of ``url`` whose line starts with ``prefix`` (and contains ``contains``)."""
    conn = Conn(url)
    try:
        reply = await conn.get("/metrics", {"Connection": "close"}, timeout=30)
    finally:
        await conn.close()
    return sum(float(line.split()[-1]) for line in reply.body.decode().splitlines()
               if line.startswith(prefix) and contains in line)

