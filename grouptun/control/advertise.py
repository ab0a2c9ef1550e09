"""Asking the provider's admin for the subnet routes this member is the gateway to.

``[network] advertise_routes`` is sent once per daemon start
(``POST .../routes``, provider/route_requests.py), on its own thread so the
control path never waits for it. A refusal (4xx: a bad or overlapping
prefix) is logged and not retried; an unreachable provider is retried a few
times with growing pauses. Nothing is routed until the admin approves a
prefix: it then arrives in the signed archive like any other change.
"""

from __future__ import annotations

import logging
import threading

from grouptun.errors import ProviderError, ProviderRefused

log = logging.getLogger("grouptun.control")

ATTEMPTS = 5
FIRST_PAUSE = 2.0  # seconds; doubled after each failed attempt


def advertise_routes(client, prefixes: tuple[str, ...], stop: threading.Event) -> bool:
    """Send ``prefixes`` (until sent, refused, ``stop`` set or :data:`ATTEMPTS` used); True once sent."""
    pause = FIRST_PAUSE
    for attempt in range(1, ATTEMPTS + 1):
        try:
            client.request_routes(list(prefixes))
        except ProviderRefused as exc:
            log.error("the provider refused the advertised routes %s: %s", ", ".join(prefixes), exc)
            return False
        except ProviderError as exc:
            log.warning("advertising routes (attempt %d of %d): %s", attempt, ATTEMPTS, exc)
            if stop.wait(pause):
                return False
            pause *= 2
            continue
        log.info("asked the provider to route %s to us (its admin approves)", ", ".join(prefixes))
        return True
    return False


def start_advertising(client, prefixes: tuple[str, ...], stop: threading.Event) -> threading.Thread | None:
    if not prefixes:
        return None
    thread = threading.Thread(target=advertise_routes, args=(client, prefixes, stop),
                              name="grouptun-advertise", daemon=True)
    thread.start()
    return thread
