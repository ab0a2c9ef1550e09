"""The session's requests on their way to the provider, and the member's periodic report.

The session asks for things the control path does on its behalf: a rekey
(``rekey:REASON``, a key or counter limit reached, an authentication
failure count, a wire-value collision) or a fetch of the archive (``fetch``,
a packet of the next epoch seen). The request thread
(:meth:`grouptun.control.plane.ControlPlane.request_loop`, its own HTTP
session) forwards the rekeys and sends the report every
``report_interval``, so neither waits behind the watch thread's long-poll (a
rekey reaches the provider within ``request_interval`` plus one round
trip). A "fetch" is the watch thread's: served after the current long-poll,
which returns at once anyway when a newer archive exists.

A request stays pending until the provider took it, so a failed call loses
none; one being forwarded is marked in flight, so a concurrent call (or the
same request taken again meanwhile) is not sent twice: one request, one
epoch. A refused rekey (e.g. rate-limited) is the provider's decision and is
not repeated; a refused report holds up nothing.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable

from grouptun.errors import ProviderRefused

log = logging.getLogger("grouptun.control")

REPORTED_EPOCHS = 4  # the provider looks at the current epoch only; older ones are context


def _latest(packets_sent: dict[int, int]) -> dict[int, int]:
    """The counts of the newest REPORTED_EPOCHS epochs (a report body is bounded at the provider)."""
    return {e: packets_sent[e] for e in sorted(packets_sent)[-REPORTED_EPOCHS:]}


class RequestForwarder:
    """Pending requests (both control threads) and the report schedule (the request thread)."""

    def __init__(self, *, client, port, endpoints: Callable[[], list[str]], report_interval: float,
                 clock: Callable[[], float], on_answer: Callable[[], None], metrics=None) -> None:
        self.client, self.port, self.endpoints = client, port, endpoints
        self.report_interval = report_interval
        self._clock, self.on_answer, self.metrics = clock, on_answer, metrics
        self.pending: set[str] = set()    # session requests not yet taken by the provider
        self.in_flight: set[str] = set()  # rekey requests being forwarded right now
        self.lock = threading.Lock()      # pending, in_flight, _next_report: both threads; never held
                                          # across a provider or event-loop call
        self._next_report = 0.0

    def queue(self, request: str) -> None:
        """Queue a request for the provider (the request thread forwards a rekey, the watch thread a fetch)."""
        with self.lock:
            self.pending.add(request)

    def wanted(self, request: str) -> bool:
        with self.lock:
            return request in self.pending

    def done(self, request: str) -> None:
        with self.lock:
            self.pending.discard(request)

    def service(self) -> None:
        """Forward the session's rekey requests and send the report when due (the request thread).

        The lock guards only ``pending``, ``in_flight`` and the report's
        schedule: the calls into the event loop and to the provider run
        outside it, so the watch thread (``queue``, ``wanted``) never waits
        behind a slow provider.
        """
        taken = self.port.take_requests()
        with self.lock:
            # Requests stay pending until the provider took them, so a failed call loses none.
            self.pending |= taken
            mine = sorted(r for r in self.pending - self.in_flight if r.startswith("rekey:"))
            self.in_flight.update(mine)
            report_due = self._clock() >= self._next_report
            if report_due:
                self._next_report = self._clock() + self.report_interval
        try:
            for req in mine:
                self._forward_rekey(req)
        finally:
            with self.lock:
                self.in_flight.difference_update(mine)
        if report_due:
            try:
                self.client.report(self.endpoints(), _latest(self.port.packets_sent()))
            except ProviderRefused as exc:  # a refused report must not hold up anything
                log.warning("report refused: %s", exc)
            self.on_answer()

    def _forward_rekey(self, req: str) -> None:
        """One rekey request to the provider (no lock held); taken off ``pending`` once answered."""
        log.info("asking the provider for a new epoch (%s)", req[6:])
        try:
            self.client.rekey(req[6:])
            if self.metrics is not None:
                self.metrics.rekey(req[6:])
        except ProviderRefused as exc:  # e.g. rate-limited: the provider decided; don't insist
            log.warning("rekey (%s) not granted: %s", req[6:], exc)
        with self.lock:
            self.pending.discard(req)
        self.on_answer()
