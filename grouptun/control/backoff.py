"""Retry delays for the control path's provider calls, and the rotation over the provider's URLs."""

from __future__ import annotations

import random
import threading
from typing import Callable


class Backoff:
    """Exponential backoff with 'equal jitter': delay in [d/2, d], d = min(cap, base * 2^k).

    Starts at attempt 0; ``reset`` after a success. ``cap`` may be changed
    while in use (SIGHUP applies ``daemon.backoff_max``).
    """

    def __init__(self, base: float = 1.0, cap: float = 60.0, rng: Callable[[], float] = random.random) -> None:
        self.base, self.cap, self._rng = base, cap, rng
        self.attempt = 0

    def next(self) -> float:
        d = min(self.cap, self.base * (2 ** min(self.attempt, 32)))
        self.attempt += 1
        return d / 2 + self._rng() * d / 2

    def reset(self) -> None:
        self.attempt = 0


class ReplicaRotation:
    """Which provider URL to ask next, and how long to wait before moving on after a failure.

    The URLs are the provider's (join token, then the newest archive's
    ``provider_urls``), tried in order. A failure of the current URL moves
    to the next one after a delay drawn uniformly from [0, d], d doubling
    with each failure in a row from ``base`` up to ``cap``: a fleet whose
    replica died spreads over the next one instead of arriving at once. The
    cap is small: once every URL failed, the caller's :class:`Backoff`
    waits between rounds. An answer resets it and becomes
    :attr:`answered_by` (``grouptun status``).

    Sans-IO: the caller sleeps and the randomness is ``rng``. Thread-safe:
    the watch and the request thread share one rotation; a failure reported
    for a URL the other thread has moved off already does not move it again.
    """

    def __init__(self, urls, base: float = 0.25, cap: float = 1.0, rng: Callable[[], float] = random.random) -> None:
        self.base, self.cap, self._rng = base, cap, rng
        self._lock = threading.Lock()
        self._urls: tuple[str, ...] = ()
        self._index = 0
        self.failures = 0                     # in a row, over all URLs
        self.answered_by: str | None = None   # the URL that answered last
        self.replace(urls)

    @property
    def urls(self) -> tuple[str, ...]:
        return self._urls

    @property
    def current(self) -> str:
        with self._lock:
            return self._urls[self._index]

    def replace(self, urls) -> None:
        """A new list (a newer archive's); the current URL stays current if it is still listed."""
        urls = tuple(urls)
        if not urls:
            raise ValueError("a provider needs at least one URL")
        with self._lock:
            current = self._urls[self._index] if self._urls else None
            self._urls = urls
            self._index = urls.index(current) if current in urls else 0

    def failed(self, url: str) -> float:
        """``url`` did not answer: move past it; returns the delay before asking :attr:`current`."""
        with self._lock:
            if self._urls[self._index] == url:
                self._index = (self._index + 1) % len(self._urls)
            spread = min(self.cap, self.base * 2 ** min(self.failures, 32))
            self.failures += 1
        return self._rng() * spread

    def answered(self, url: str) -> None:
        with self._lock:
            self.failures = 0
            self.answered_by = url
