"""A small connection table for stateful policy: a reply to an allowed flow passes (as nebula's conntrack).

Keyed by the flow seen from this host: ``(protocol, local address, local
port, remote address, remote port)``, so a packet and its reply have the
same key whichever way they go (ports are 0 for protocols without them).
Each entry remembers when it goes idle, which side opened the flow (so
the flow can be judged again after the policy changed) and the policy
generation that last allowed it.

Bounds: at most ``max_entries`` (default :data:`MAX_ENTRIES`) entries; a
new flow on a full table evicts the least recently used entry, so a flood
of new flows costs other flows their state (their replies are then judged
by the rules again), never memory. Idle timeouts per protocol
(:data:`IDLE`): TCP 720 s, UDP 180 s, anything else 600 s, nebula's
defaults; an entry past it is gone at its next lookup. No TCP state
machine: a FIN does not end an entry early. Time is passed in (sans-IO).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

MAX_ENTRIES = 65536
TCP, UDP = 6, 17
IDLE = {TCP: 720.0, UDP: 180.0}
IDLE_OTHER = 600.0

Key = tuple[int, bytes, int, bytes, int]


@dataclass(slots=True)
class Entry:
    idle_at: float
    generation: int          # the compiled policy generation that last allowed the flow
    opened_locally: bool     # True: this host sent the flow's first packet


class Conntrack:
    """The table; used from one thread (the data path's)."""

    def __init__(self, max_entries: int = MAX_ENTRIES) -> None:
        if max_entries < 1:
            raise ValueError("conntrack max_entries must be at least 1")
        self.max_entries = max_entries
        self._entries: OrderedDict[Key, Entry] = OrderedDict()
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, key: Key, now: float) -> Entry | None:
        """The live entry of ``key`` (an idle one is dropped), else None."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.idle_at <= now:
            del self._entries[key]
            return None
        return entry

    def refresh(self, key: Key, entry: Entry, now: float, generation: int) -> None:
        entry.idle_at = now + IDLE.get(key[0], IDLE_OTHER)
        entry.generation = generation
        self._entries.move_to_end(key)

    def add(self, key: Key, now: float, generation: int, opened_locally: bool) -> None:
        if key in self._entries:
            self.refresh(key, self._entries[key], now, generation)
            return
        if len(self._entries) >= self.max_entries:
            self._entries.popitem(last=False)
            self.evicted += 1
        self._entries[key] = Entry(now + IDLE.get(key[0], IDLE_OTHER), generation, opened_locally)

    def forget(self, key: Key) -> None:
        self._entries.pop(key, None)
