"""Pending start challenges: daemons waiting for their group's first epoch.

A group with fewer than 2 members has no epoch (PROTOCOL.md 1), so a
daemon's start challenge cannot be answered yet; it waits here until an
epoch lists it. Limits: in memory only (a provider restart forgets them; the
daemon starts again when it sees an epoch without its challenge), at most
``MAX_PENDING_STARTS`` per group (the oldest goes first), each for
``PENDING_START_TTL`` seconds. Thread-safe; works from its empty state.
"""

from __future__ import annotations

import threading
from typing import Callable, Iterable

MAX_PENDING_STARTS = 256  # per group; the oldest goes first (its daemon starts again when it sees an epoch)
PENDING_START_TTL = 600.0


class PendingStarts:
    """Per group: challenge -> expiry, oldest first (dicts keep insertion order)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._pending: dict[str, dict[bytes, float]] = {}

    def add(self, group: str, challenges: Iterable[bytes]) -> None:
        now = self._clock()
        with self._lock:
            pending = self._pending.setdefault(group, {})
            for challenge, expires in list(pending.items()):
                if expires <= now:
                    del pending[challenge]
            for challenge in challenges:
                pending.pop(challenge, None)  # re-added: moves to the young end
                pending[challenge] = now + PENDING_START_TTL
            while len(pending) > MAX_PENDING_STARTS:
                del pending[next(iter(pending))]

    def get(self, group: str) -> tuple[bytes, ...]:
        """Unexpired pending challenges of ``group``, oldest first."""
        now = self._clock()
        with self._lock:
            return tuple(c for c, expires in self._pending.get(group, {}).items() if expires > now)

    def drop(self, group: str, listed: Iterable[bytes]) -> None:
        """Forget ``listed`` (an epoch that lists them committed)."""
        with self._lock:
            pending = self._pending.get(group, {})
            for challenge in listed:
                pending.pop(challenge, None)
