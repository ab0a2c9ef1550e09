"""Prometheus metrics for the member daemon, off unless asked for.

The data path pays nothing: per-member bytes/packets, drops and epochs are
not Prometheus objects updated per packet but read from the session's own
counters at scrape time by :class:`SessionCollector`, which calls a
snapshot function (``Session.status(now)``). Because the session is not
thread-safe and the HTTP listener runs in its own thread, the snapshot is
taken ON the event loop (``loop.call_soon_threadsafe``) and the scrape waits
at most ``snapshot_timeout``; a loop that does not answer (stalled data
plane) shows up as ``grouptun_snapshot_ok 0`` instead of a hung scrape.

The cold path (control-plane thread) updates real Prometheus objects, which
are thread-safe: :meth:`DaemonMetrics.rekey` and
:meth:`DaemonMetrics.provider_call`.

The listener binds to a loopback address only (:func:`parse_listen` refuses
anything else): these figures describe who talks to whom.

Snapshot keys read (missing keys simply yield no series)::

    {"epochs":  [{"epoch": 7, "age": 12.5, "sending": true, "packets_sent": 9}, ...],
     "members": [{"name": "b", "index": 1, "rx_bytes": 0, "tx_bytes": 0,
                  "rx_packets": 0, "tx_packets": 0, "last_seen_age": 0.4 | None}, ...],
     "drops":   {"replay": 0, "auth": 0, ...},
     "names":   {"answered": 0, "rate_limited": 0, ...}}   (optional: grouptun.apps.names_server)

(the shape of ``grouptun.core.session.Session.status``; tests/ops checks
the collector against a real Session).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ipaddress
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import start_http_server
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from grouptun.errors import ConfigError, ProviderRefused, SystemSetupError

log = logging.getLogger(__name__)

# The port the docs and the example config suggest. Not 9586 (wireguard_exporter's, which an admin
# running both would collide with), and outside 9100-9999, the Prometheus exporters' range, all of
# it allocated; below Linux's ephemeral ports (32768-60999).
DEFAULT_PORT = 19586
CONFIG_KEY = "daemon.metrics_listen"
# Provider calls are HTTPS round trips, some of them long-polls (watch).
RTT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
NAME_OUTCOMES = ("answered", "nxdomain", "refused", "notimp", "formerr", "dropped", "client_limited",
                 "rate_limited", "truncated")


def parse_listen(text: str, key: str = CONFIG_KEY) -> tuple[str, int]:
    """``"127.0.0.1:19586"`` / ``"[::1]:19586"`` -> (host, port); loopback only."""
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
    else:
        host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:  # 0: any free port (tests)
        raise ConfigError(key, f"expected host:port or [v6]:port, got {text!r}")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(key, f"{host!r} is not an IP address (names are refused: use 127.0.0.1 or ::1)") from None
    if not address.is_loopback:
        raise ConfigError(key, f"{host} is not a loopback address; metrics are served on loopback only")
    return str(address), int(port)


def _num(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


class SessionCollector(Collector):
    """Turns one status snapshot into metric families at scrape time."""

    def __init__(self, group: str, snapshot: Callable[[], dict],
                 loop: asyncio.AbstractEventLoop | None = None, snapshot_timeout: float = 2.0) -> None:
        self.group = group
        self._snapshot = snapshot
        self._loop = loop
        self._timeout = snapshot_timeout

    def _take(self) -> dict | None:
        if self._loop is None:
            return self._snapshot()
        future: concurrent.futures.Future = concurrent.futures.Future()

        def run() -> None:
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(self._snapshot())
                except Exception as exc:  # handed to the scrape thread, which logs it
                    future.set_exception(exc)

        self._loop.call_soon_threadsafe(run)
        try:
            return future.result(self._timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            log.warning("metrics: event loop did not answer within %.1fs", self._timeout)
            return None

    def collect(self) -> Iterator[Metric]:
        try:
            status = self._take()
        except Exception:
            log.exception("metrics: status snapshot failed")
            status = None
        ok = GaugeMetricFamily("grouptun_snapshot_ok", "1 if the daemon's event loop answered this scrape",
                               labels=["group"])
        ok.add_metric([self.group], 1.0 if isinstance(status, dict) else 0.0)
        yield ok
        if isinstance(status, dict):
            yield from self._epochs(status.get("epochs") or [])
            yield from self._members(status.get("members") or [])
            yield from self._drops(status.get("drops") or {})
            if isinstance(status.get("names"), dict):
                yield self._names(status["names"])

    def _epochs(self, epochs: list) -> Iterator[Metric]:
        held = GaugeMetricFamily("grouptun_epochs_held", "Epochs whose keys are installed", labels=["group"])
        held.add_metric([self.group], float(len(epochs)))
        yield held
        sent = CounterMetricFamily("grouptun_epoch_packets_sent", "Packets this member sent, per held epoch",
                                   labels=["group", "epoch"])
        for e in epochs:
            if isinstance(e, dict) and _num(e.get("packets_sent")) is not None and _num(e.get("epoch")) is not None:
                sent.add_metric([self.group, str(int(e["epoch"]))], _num(e["packets_sent"]))
        yield sent
        sending = [e for e in epochs if isinstance(e, dict) and e.get("sending")]
        current = sending[-1] if sending else None
        if current is not None and _num(current.get("epoch")) is not None:
            num = GaugeMetricFamily("grouptun_epoch", "Epoch this member sends on", labels=["group"])
            num.add_metric([self.group], _num(current["epoch"]))
            yield num
            if _num(current.get("age")) is not None:
                age = GaugeMetricFamily("grouptun_epoch_age_seconds", "Age of the sending epoch",
                                        labels=["group"])
                age.add_metric([self.group], _num(current["age"]))
                yield age

    def _members(self, members: list) -> Iterator[Metric]:
        families = {
            key: CounterMetricFamily(f"grouptun_member_{name}", text, labels=["group", "member"])
            for key, name, text in (
                ("rx_bytes", "receive_bytes", "Bytes of inner packets received from the member"),
                ("tx_bytes", "transmit_bytes", "Bytes of inner packets sent to the member"),
                ("rx_packets", "receive_packets", "Packets received from the member"),
                ("tx_packets", "transmit_packets", "Packets sent to the member"),
            )
        }
        seen = GaugeMetricFamily("grouptun_member_last_seen_age_seconds",
                                 "Seconds since the member's last authenticated packet",
                                 labels=["group", "member"])
        for m in members:
            if not isinstance(m, dict) or not isinstance(m.get("name"), str):
                continue
            for key, family in families.items():
                if _num(m.get(key)) is not None:
                    family.add_metric([self.group, m["name"]], _num(m[key]))
            if _num(m.get("last_seen_age")) is not None:
                seen.add_metric([self.group, m["name"]], _num(m["last_seen_age"]))
        yield from families.values()
        yield seen

    def _drops(self, drops: dict) -> Iterator[Metric]:
        family = CounterMetricFamily("grouptun_drops", "Packets dropped, by reason", labels=["group", "reason"])
        for reason, count in sorted(drops.items()):
            if _num(count) is not None:
                family.add_metric([self.group, str(reason)], _num(count))
        yield family


    def _names(self, names: dict) -> Metric:
        family = CounterMetricFamily("grouptun_dns_queries", "Queries to the member names' DNS server, by outcome",
                                     labels=["group", "outcome"])
        for outcome in NAME_OUTCOMES:
            if _num(names.get(outcome)) is not None:
                family.add_metric([self.group, outcome], _num(names[outcome]))
        return family


class DaemonMetrics:
    """The daemon's metrics: session snapshot + cold-path counters + listener."""

    def __init__(self, group: str, snapshot: Callable[[], dict],
                 loop: asyncio.AbstractEventLoop | None = None,
                 registry: CollectorRegistry | None = None, snapshot_timeout: float = 2.0) -> None:
        self.group = group
        self.registry = registry if registry is not None else CollectorRegistry()
        self.registry.register(SessionCollector(group, snapshot, loop, snapshot_timeout))
        self._rekeys = Counter("grouptun_rekeys", "Rekeys this member asked for, by reason",
                               ["group", "reason"], registry=self.registry)
        self._epochs = Counter("grouptun_epochs_installed", "Epochs accepted and installed",
                               ["group"], registry=self.registry)
        self._refused = Counter("grouptun_epochs_refused", "Epochs refused, by acceptance step",
                                ["group", "step"], registry=self.registry)
        self._provider = Histogram("grouptun_provider_request_duration_seconds",
                                   "Round-trip time of calls to the trust provider",
                                   ["group", "call", "outcome"], buckets=RTT_BUCKETS, registry=self.registry)
        self._server = None
        self._thread = None

    # --- cold path (any thread) ---
    def rekey(self, reason: str) -> None:
        self._rekeys.labels(self.group, reason).inc()

    def epoch_installed(self) -> None:
        self._epochs.labels(self.group).inc()

    def epoch_refused(self, step: str) -> None:
        self._refused.labels(self.group, step).inc()

    @contextmanager
    def provider_call(self, call: str) -> Iterator[None]:
        """Time one provider call: ``with metrics.provider_call("capsule"): ...``.

        outcome is ``ok``, ``refused`` (ProviderRefused) or ``error``.
        """
        start = time.monotonic()
        outcome = "error"
        try:
            yield
            outcome = "ok"
        except ProviderRefused:
            outcome = "refused"
            raise
        finally:
            self._provider.labels(self.group, call, outcome).observe(time.monotonic() - start)

    def instrument(self, client: object) -> "TimedClient":
        """Wrap a ProviderClient so every call is timed: ``client = metrics.instrument(client)``."""
        return TimedClient(client, self)

    # --- listener ---
    def serve(self, listen: str) -> tuple[str, int]:
        """Start the loopback HTTP listener; returns the bound (host, port)."""
        host, port = parse_listen(listen)
        try:
            self._server, self._thread = start_http_server(port, host, registry=self.registry)
        except OSError as exc:
            raise SystemSetupError(f"metrics listener on {listen}: {exc.strerror or exc}") from exc
        bound = self._server.server_address
        log.info("metrics on http://%s/metrics", f"[{host}]:{bound[1]}" if ":" in host else f"{host}:{bound[1]}")
        return host, bound[1]

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)
            self._server = self._thread = None


class TimedClient:
    """Proxy around a ProviderClient that times the provider calls.

    Only the calls of contracts.md are timed (label ``call``); every other
    attribute passes through untouched.
    """

    CALLS = frozenset({"start", "archive", "watch", "capsule", "salt", "report", "rekey"})

    def __init__(self, client: object, metrics: DaemonMetrics) -> None:
        self._client = client
        self._metrics = metrics

    def __getattr__(self, name: str):
        attr = getattr(self._client, name)
        if name not in self.CALLS or not callable(attr):
            return attr

        def timed(*args, **kwargs):
            with self._metrics.provider_call(name):
                return attr(*args, **kwargs)

        return timed
