"""Held epochs and when to send on which (PROTOCOL.md 6).

Rules, all timed from the ``now`` the caller passes in:

- At most two epochs are held: the current one and the previous one.
  Installing a newer epoch makes it current at once (it receives at once),
  the old current becomes previous, and the old previous is dropped (its
  keys wiped).
- The wire carries ``epoch mod 2^16``; two held epochs never share that
  value: installing an epoch whose wire value equals the current one's
  drops the current one too.
- We send on the current epoch once an authenticated packet arrived on it,
  or ``switch_delay`` after installing it, whichever is first. Until then we
  send on the previous one. The very first epoch (nothing to fall back on)
  sends at once. If installing drops the epoch we were still sending on
  (two installs within switch_delay), the old current, now previous,
  takes over sending at once.
- The previous epoch is forgotten ``grace`` (the current epoch's) after we
  started sending on the current one.

Limits: epochs must be installed in increasing order (EpochRejected
"epoch" otherwise, state unchanged); the clock must not go backwards.
"""

from __future__ import annotations

from grouptun.core.epoch import EpochState
from grouptun.errors import EpochRejected


class Keyring:
    """Current and previous :class:`EpochState`, looked up by wire epoch."""

    __slots__ = ("current", "previous", "by_wire")

    def __init__(self) -> None:
        self.current: EpochState | None = None
        self.previous: EpochState | None = None
        # wire epoch -> state; the receive path reads it directly and calls
        # lookup() only for the previous epoch (which may have expired).
        self.by_wire: dict[int, EpochState] = {}

    def install(self, state: EpochState, now: float) -> list[EpochState]:
        """Make ``state`` current; returns the epochs dropped (already wiped)."""
        current = self.current
        if current is not None and state.epoch <= current.epoch:
            raise EpochRejected("epoch", f"epoch {state.epoch} is not newer than held epoch {current.epoch}")
        dropped = []
        if self.previous is not None:
            dropped.append(self.previous)
        if current is not None and current.wire == state.wire:
            dropped.append(current)
            current = None
        for old in dropped:
            old.wipe()
        state.installed_at = now
        state.send_started = None
        self.previous, self.current = current, state
        if current is None:
            state.send_started = now
        elif current.send_started is None:
            # The epoch we were sending on is gone: the old current takes over.
            current.send_started = now
        self.by_wire = {held.wire: held for held in (current, state) if held is not None}
        return dropped

    def lookup(self, wire: int, now: float) -> EpochState | None:
        """The held epoch for a wire epoch value (the previous one only within grace).

        Read-only on purpose: the receive path calls it from a header alone,
        before any tag is checked, so an expired previous epoch is only
        hidden here; :meth:`advance` drops it, and the session does its
        bookkeeping for the drop there.
        """
        state = self.by_wire.get(wire)
        if state is not None and state is self.previous and self._previous_expired(now):
            return None
        return state

    def sending(self, now: float) -> EpochState | None:
        """The epoch to send on at ``now``, switching after switch_delay."""
        current = self.current
        if current is None:
            return None
        if current.send_started is None:
            due = current.installed_at + current.switch_delay
            if now < due:
                return self.previous
            current.send_started = due
        return current

    def authenticated(self, state: EpochState, now: float) -> None:
        """A packet on ``state`` verified: if it is the current one, send on it from now."""
        if state is self.current and state.send_started is None:
            state.send_started = now

    def advance(self, now: float) -> list[EpochState]:
        """Apply switch_delay and grace; returns the epochs dropped (already wiped)."""
        self.sending(now)
        if self.previous is not None and self._previous_expired(now):
            return [self._drop_previous()]
        return []

    def held(self) -> list[EpochState]:
        return [state for state in (self.current, self.previous) if state is not None]

    def close(self) -> None:
        """Wipe and forget every epoch."""
        for state in self.held():
            state.wipe()
        self.current = self.previous = None
        self.by_wire = {}

    def _previous_expired(self, now: float) -> bool:
        current = self.current
        if current is None:
            return False
        self.sending(now)  # applies a switch_delay that has passed
        started = current.send_started
        return started is not None and now - started >= current.grace

    def _drop_previous(self) -> EpochState:
        previous = self.previous
        assert previous is not None
        previous.wipe()
        self.previous = None
        self.by_wire.pop(previous.wire, None)
        return previous
