"""Pending start challenges: daemons waiting for their group's first epoch.

A group with fewer than 2 members has no epoch (PROTOCOL.md 1), so a
daemon's start challenge cannot be answered yet; it waits here until an
epoch lists it. One challenge per member: a later start of the same member
replaces the earlier one (its daemon was started again, or elsewhere:
PROTOCOL.md 4, one running instance per member; two challenges of one
member are never answered by one epoch). Limits: in memory only (a
provider restart forgets them; the daemon starts again when it sees an
epoch without its challenge), at most ``MAX_PENDING_STARTS`` members per
group (the oldest goes first), each for ``PENDING_START_TTL`` seconds.
Thread-safe; works from its empty state.
"""

from __future__ import annotations

import threading
from typing import Callable, Mapping

MAX_PENDING_STARTS = 256  # per group; the oldest goes first (its daemon starts again when it sees an epoch)
PENDING_START_TTL = 600.0


class PendingStarts:
    """Per group: member -> (challenge, expiry), oldest first (dicts keep insertion order)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._pending: dict[str, dict[str, tuple[bytes, float]]] = {}

    def add(self, group: str, starts: Mapping[str, bytes]) -> None:
        """Record ``starts`` (member -> challenge); each replaces that member's earlier one."""
        now = self._clock()
        with self._lock:
            pending = self._pending.setdefault(group, {})
            for member, (_challenge, expires) in list(pending.items()):
                if expires <= now:
                    del pending[member]
            for member, challenge in starts.items():
                pending.pop(member, None)  # re-added: moves to the young end
                pending[member] = (challenge, now + PENDING_START_TTL)
            while len(pending) > MAX_PENDING_STARTS:
                del pending[next(iter(pending))]

    def get(self, group: str) -> dict[str, bytes]:
        """Unexpired pending starts of ``group`` (member -> challenge), oldest first."""
        now = self._clock()
        with self._lock:
            return {m: c for m, (c, expires) in self._pending.get(group, {}).items() if expires > now}

    def drop(self, group: str, listed: Mapping[str, bytes]) -> None:
        """Forget the starts in ``listed`` (an epoch that lists them committed), unless replaced meanwhile."""
        with self._lock:
            pending = self._pending.get(group, {})
            for member, challenge in listed.items():
                if member in pending and pending[member][0] == challenge:
                    del pending[member]
