"""Bounded waiting: every loop in the lab has a deadline and a step count."""

from __future__ import annotations

import time
from typing import Callable, TypeVar

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout: float, interval: float = 0.1,
               max_tries: int | None = None) -> T | None:
    """Call ``predicate`` until it returns something truthy, at most ``timeout`` s.

    Returns that value, or None on timeout. ``max_tries`` bounds the number
    of calls as well (default: timeout / interval + 1). The predicate runs
    at least once even with timeout 0.
    """
    deadline = time.monotonic() + timeout
    tries = max_tries if max_tries is not None else int(timeout / max(interval, 1e-3)) + 2
    for _ in range(max(tries, 1)):
        value = predicate()
        if value:
            return value
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        time.sleep(min(interval, remaining))
    return None
