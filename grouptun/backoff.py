"""Retry delays for the control path's provider calls."""

from __future__ import annotations

import random
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
