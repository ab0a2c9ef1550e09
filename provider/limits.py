"""Token-bucket rate limits and the request-size guard (pure ASGI middleware).

``RateLimiter``: one bucket per key (member, address), at most ``max_keys``
buckets (least recently used dropped, which forgets debt -- bounded memory
matters more). Not thread-safe: call it from the event loop only.

``Guard`` runs before routing: per-address budget (HTTP 429), body size
(HTTP 413, checked against Content-Length and while reading), malformed
Content-Length (HTTP 400). It buffers the (small) body and replays it to the
app, so no route ever reads more than ``max_body`` bytes.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from typing import Callable


class RateLimiter:
    def __init__(self, rate: float, burst: float, max_keys: int = 100_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.burst, self.max_keys, self.clock = rate, burst, max_keys, clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def peek(self, key: str, cost: float = 1.0) -> bool:
        """Would ``allow`` succeed? Consumes nothing (for budgets charged only on failure)."""
        now = self.clock()
        tokens, last = self._buckets.get(key, (self.burst, now))
        return min(self.burst, tokens + (now - last) * self.rate) >= cost

    def allow(self, key: str, cost: float = 1.0) -> bool:
        now = self.clock()
        tokens, last = self._buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        allowed = tokens >= cost
        self._buckets[key] = (tokens - cost if allowed else tokens, now)
        if len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        return allowed


async def _answer(send, status: int, reason: str) -> None:
    body = json.dumps({"detail": reason}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})  # the body is unread: do not wait for the rest of it
    await send({"type": "http.response.body", "body": body})


class Guard:
    """``larger(scope)``: a route's own body limit (None: ``max_body``), e.g. sealed-data part uploads."""

    def __init__(self, app, max_body: int, per_address: RateLimiter,
                 larger: Callable[[dict], int | None] | None = None) -> None:
        self.app, self.max_body, self.per_address, self.larger = app, max_body, per_address, larger

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        client = (scope.get("client") or ("unknown", 0))[0]
        if not self.per_address.allow(client):
            return await _answer(send, 429, "rate limit exceeded (address)")
        limit = (self.larger(scope) if self.larger else None) or self.max_body
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None:
            if not declared.isdigit() or len(declared) > 12:
                return await _answer(send, 400, "malformed Content-Length")
            if int(declared) > limit:
                return await _answer(send, 413, f"request body over {limit} bytes")
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # client went away
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return await _answer(send, 413, f"request body over {limit} bytes")
            chunks.append(chunk)
            if not message.get("more_body"):
                break
        body, delivered = b"".join(chunks), False

        async def replay():
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)
