"""Keeping a member's voucher fresh (PROTOCOL.md 8): renew before it expires, and after the owner rotated its keys.

A member in a group a linked provider owns verifies the owner's archives
through the voucher its home provider signed (``grouptun.core.vouch``),
which expires. :class:`VouchHolder` holds the current one for the control
path and replaces it with a fresh one from the home provider (``GET
/v1/groups/ALIAS/vouch``, a signed member request) in two cases:

- :meth:`renew_if_due`: the voucher is in the last quarter of its lifetime
  (``renewal_due``; a voucher without ``expires_at`` at once), asked by the
  control path's request thread;
- :meth:`verify_or_refresh`: an archive failed the voucher check (step
  ``signature``: the owner signs with keys the voucher does not name,
  because it rotated them and the home's ``link check`` re-pinned; step
  ``link``: the voucher expired). The archive is verified once more with a
  fresh voucher, and only if that passes is the fresh one kept.

A fresh voucher is taken only when it verifies against the member's pinned
home keys at the current wall time; it is then saved (``save``: the
daemon's ``vouchfile.save``) before use, so a restart starts with it.
Fetches are spaced at least ``min_interval`` seconds apart whatever
happens (an archive the owner's forger sends again and again costs one
request per interval, not one per archive). Thread-safe: the watch and the
request threads both use it.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, TypeVar

from grouptun.core.envelope import ProviderKeys
from grouptun.core.vouch import Vouch, renewal_due, verify_vouch
from grouptun.errors import EpochRejected, ProviderError

log = logging.getLogger("grouptun.control")
MIN_INTERVAL = 300.0  # seconds between two fetches of a voucher
T = TypeVar("T")


class VouchHolder:
    def __init__(self, current: bytes, pinned: ProviderKeys, fetch: Callable[[], bytes],
                 save: Callable[[bytes], None] = lambda signed: None, wall: Callable[[], float] = time.time,
                 clock: Callable[[], float] = time.monotonic, min_interval: float = MIN_INTERVAL) -> None:
        self.current = current
        self.pinned, self._fetch, self._save, self._wall, self._clock = pinned, fetch, save, wall, clock
        self.min_interval = min_interval
        self._last_fetch: float | None = None
        self._parsed: tuple[bytes, Vouch | None] | None = None  # (voucher, its parse; None: it did not verify)
        self._lock = threading.Lock()

    def renew_if_due(self) -> bool:
        """Fetch a fresh voucher if the current one is due for renewal; whether it was replaced."""
        held = self.current
        if self._parsed is None or self._parsed[0] != held:  # verify each voucher once, not every call
            try:
                self._parsed = (held, verify_vouch(held, self.pinned, now=self._wall()))
            except EpochRejected:  # expired (or never verified): renewing is the way out
                self._parsed = (held, None)
        parsed = self._parsed[1]
        if parsed is not None and not renewal_due(parsed, self._wall()):
            return False
        return self._refresh(lambda fresh: fresh) is not None

    def verify_or_refresh(self, verify: Callable[[bytes], T]) -> T:
        """``verify(voucher)`` with the current voucher; if it fails the voucher check, once more with a fresh
        one (kept only if it passes). The first refusal is raised when no fresh voucher helps."""
        held = self.current
        try:
            return verify(held)
        except EpochRejected as exc:
            if exc.step not in ("signature", "link"):
                raise
            refused = exc
        result = self._refresh(verify, unless_changed_from=held)
        if result is None:
            raise refused
        return result[1]

    def _refresh(self, verify: Callable[[bytes], T], unless_changed_from: bytes | None = None):
        """(fresh voucher, verify(fresh)) once a fresh voucher passed and was saved; None if none was fetched
        (too soon after the last fetch, unreachable, refused) or it did not pass."""
        with self._lock:
            if unless_changed_from is not None and self.current != unless_changed_from:
                fresh = self.current  # the other thread renewed it meanwhile: try that one
            elif self._last_fetch is not None and self._clock() - self._last_fetch < self.min_interval:
                return None
            else:
                self._last_fetch = self._clock()
                try:
                    fresh = self._fetch()
                    verify_vouch(fresh, self.pinned, now=self._wall())
                except (ProviderError, EpochRejected) as exc:
                    log.warning("could not renew the voucher of our provider: %s", exc)
                    return None
            try:
                result = verify(fresh)
            except EpochRejected as exc:
                log.warning("a fresh voucher of our provider does not help: %s", exc)
                return None
            if fresh != self.current:
                try:
                    self._save(fresh)
                except OSError as exc:  # it still serves from memory; the next start renews again
                    log.warning("cannot keep the renewed voucher: %s", exc.strerror or exc)
                self.current = fresh
                log.info("our provider's voucher for the group's owner renewed")
            return fresh, result
