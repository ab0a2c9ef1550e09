"""Token-bucket rate limits and the request-size guard (pure ASGI middleware).

``MemoryNonces`` / ``SharedNonces``: the replayed-signature check (a nonce is
accepted once per scope while its signature is fresh): in this process's
memory with one server (SQLite), in the ``nonces`` table with replicas
(PostgreSQL: a unique key, so two replicas never both accept one nonce).

``LocalBuckets`` / ``SharedBuckets``: the routes' per-member budgets for what
costs epochs, signatures or Argon2id work (start, rekey, report, salt, wrong
credentials), behind one async interface: a ``RateLimiter`` of this process
(SQLite: one server), or rows of the ``buckets`` table every replica
updates under a row lock (PostgreSQL: N replicas do not grant N budgets).

``RateLimiter``: one bucket per key (member, address), at most ``max_keys``
buckets (least recently used dropped, which forgets debt -- bounded memory
matters more). Not thread-safe: call it from the event loop only.

``Guard`` runs before routing: per-address budget (HTTP 429), body size
(HTTP 413, checked against Content-Length and while reading), malformed
Content-Length (HTTP 400). It buffers the (small) body and replays it to the
app, so no route ever reads more than ``max_body`` bytes.
"""

from __future__ import annotations

import itertools
import json
import time
from collections import OrderedDict
from typing import Callable

from sqlalchemy import delete, select, update
from starlette.concurrency import run_in_threadpool

from grouptun.control.reqsign import MAX_AGE, MAX_SKEW, NonceCache
from provider.store import Store, upsert
from provider.tables import buckets, nonces

NONCE_PRUNE_EVERY = 1000  # SharedNonces deletes expired rows once per this many requests


class MemoryNonces:
    """One server's nonces, in memory (call from the event loop only)."""

    def __init__(self) -> None:
        self.cache = NonceCache()

    async def fresh(self, scope: str, nonce: str, now: float) -> bool:
        return self.cache.check_and_add(scope, nonce, now)


class SharedNonces:
    """Every replica's nonces: one row per (scope, nonce) until its signature is stale."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._calls = itertools.count(1)

    async def fresh(self, scope: str, nonce: str, now: float) -> bool:
        return await run_in_threadpool(self.check_and_add, scope, nonce, now)

    def check_and_add(self, scope: str, nonce: str, now: float) -> bool:
        """True if new (and now recorded, committed); False for a replay."""
        with self.store.light() as conn:
            added = upsert(conn, nonces, {"scope": scope[:100], "nonce": nonce[:64],
                                          "expires_at": now + MAX_AGE + MAX_SKEW}, ["scope", "nonce"])
            if next(self._calls) % NONCE_PRUNE_EVERY == 0:
                conn.execute(delete(nonces).where(nonces.c.expires_at < now))
        return added


def nonces_for(store: Store) -> MemoryNonces | SharedNonces:
    return SharedNonces(store) if store.postgres else MemoryNonces()


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


class LocalBuckets:
    """A ``RateLimiter`` behind the routes' async interface (event loop only)."""

    def __init__(self, rate: float, burst: float) -> None:
        self.limiter = RateLimiter(rate, burst)

    async def allow(self, key: str, cost: float = 1.0) -> bool:
        return self.limiter.allow(key, cost)

    async def peek(self, key: str, cost: float = 1.0) -> bool:
        return self.limiter.peek(key, cost)


class SharedBuckets:
    """Token buckets in the ``buckets`` table (key ``NAME:KEY``), refilled by the wall clock every replica shares."""

    def __init__(self, store: Store, name: str, rate: float, burst: float,
                 clock: Callable[[], float] = time.time) -> None:
        self.store, self.name, self.rate, self.burst, self.clock = store, name, rate, burst, clock

    async def allow(self, key: str, cost: float = 1.0) -> bool:
        return await run_in_threadpool(self.take, key, cost, True)

    async def peek(self, key: str, cost: float = 1.0) -> bool:
        return await run_in_threadpool(self.take, key, cost, False)

    def take(self, key: str, cost: float, consume: bool) -> bool:
        """Whether ``cost`` tokens are there; with ``consume`` they are taken (committed) when they are."""
        now, key = self.clock(), f"{self.name}:{key}"[:120]
        with self.store.light() as conn:
            upsert(conn, buckets, {"key": key, "tokens": self.burst, "updated_at": now}, ["key"])
            row = conn.execute(select(buckets).where(buckets.c.key == key).with_for_update()).one()
            tokens = min(self.burst, row.tokens + max(0.0, now - row.updated_at) * self.rate)
            allowed = tokens >= cost
            if consume:
                conn.execute(update(buckets).where(buckets.c.key == key).values(
                    tokens=tokens - cost if allowed else tokens, updated_at=max(now, row.updated_at)))
        return allowed


def buckets_for(store: Store, name: str, rate: float, burst: float) -> LocalBuckets | SharedBuckets:
    return SharedBuckets(store, name, rate, burst) if store.postgres else LocalBuckets(rate, burst)


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
