"""Prometheus metrics for the trust provider, enabled with one call.

    from provider.metrics import install_metrics
    metrics = install_metrics(app)            # before the app starts
    metrics.epoch_created(group)              # where an epoch is opened
    with metrics.watching(group): ...         # around a long-poll (watch)

What it measures:

    grouptun_provider_http_requests_total{route,method,status}
    grouptun_provider_http_request_duration_seconds{route,method}   (histogram)
    grouptun_provider_http_requests_in_flight
    grouptun_provider_http_response_body_bytes_total{route}
                                               response body bytes as sent (after gzip): what a rekey's
                                               fan-out costs in traffic
    grouptun_provider_epochs_created_total{group}
    grouptun_provider_watchers{group}          long-polls waiting right now
    grouptun_provider_link_state{link,state}  1 for each link's contact state (up | unreachable | unchecked:
                                               provider/linkstate.py), read from the database at each scrape
    grouptun_provider_link_pending_removals{link}
                                               removals of our members the linked owner has not confirmed
    grouptun_provider_connections_refused_total{reason}
                                               refused by the connection limits (provider/connlimits.py:
                                               header-too-large, too-many-headers, bad-request,
                                               header-timeout, body-timeout, address-connections,
                                               total-connections); they never reach the app

``route`` is the route TEMPLATE (``/v1/groups/{group}/capsule``), never the
raw path, so label cardinality stays bounded whatever clients send;
unmatched paths count as ``<unmatched>``.

Loopback only, two ways: ``GET /metrics`` on the app answers 404 to any
client whose address is not loopback, and :func:`serve_metrics` starts a
separate listener that refuses non-loopback binds. Behind a reverse proxy
on the same host every client looks like loopback: then pass
``mount=False`` and use :func:`serve_metrics`.

The middleware is pure ASGI (not BaseHTTPMiddleware) so it neither buffers
responses nor breaks long-polls; it costs one dict lookup and a histogram
observation per request.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import start_http_server

# Watch long-polls last up to ~25 s; keep buckets past that.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
UNMATCHED = "<unmatched>"
log = logging.getLogger("grouptun.provider")
CONFIG_KEY = "metrics.listen"


class ProviderMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.requests = Counter("grouptun_provider_http_requests", "HTTP requests answered",
                                ["route", "method", "status"], registry=r)
        self.latency = Histogram("grouptun_provider_http_request_duration_seconds",
                                 "Time from request to end of response", ["route", "method"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.body_bytes = Counter("grouptun_provider_http_response_body_bytes", "Response body bytes sent",
                                  ["route"], registry=r)
        self.in_flight = Gauge("grouptun_provider_http_requests_in_flight", "Requests being handled",
                               registry=r)
        self.epochs = Counter("grouptun_provider_epochs_created", "Epochs opened", ["group"], registry=r)
        self.watchers = Gauge("grouptun_provider_watchers", "Members long-polling for a new archive",
                              ["group"], registry=r)
        self.refused = Counter("grouptun_provider_connections_refused", "Connections refused by the HTTP limits",
                               ["reason"], registry=r)

    def watch_links(self, read: Callable[[], list[dict]]) -> None:
        """Report ``read()`` (``links.list_links``) at each scrape as the link gauges (a database read)."""
        self.registry.register(_LinkCollector(read))

    def connection_refused(self, reason: str) -> None:
        self.refused.labels(reason).inc()

    def epoch_created(self, group: str) -> None:
        self.epochs.labels(group).inc()

    @contextmanager
    def watching(self, group: str) -> Iterator[None]:
        gauge = self.watchers.labels(group)
        gauge.inc()
        try:
            yield
        finally:
            gauge.dec()

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _LinkCollector:
    """The links' state and pending removals, as they are in the database when scraped."""

    STATES = ("up", "unreachable", "unchecked")

    def __init__(self, read: Callable[[], list[dict]]) -> None:
        self.read = read

    def describe(self):
        return []  # the families depend on the links: not known at registration

    def collect(self):
        state = GaugeMetricFamily("grouptun_provider_link_state", "Link contact state (1: the current one)",
                                  labels=["link", "state"])
        pending = GaugeMetricFamily("grouptun_provider_link_pending_removals",
                                    "Member removals the linked owner has not confirmed", labels=["link"])
        try:
            shown = self.read()
        except Exception:  # noqa: BLE001 -- a scrape must not fail with the database; the log says why
            log.exception("link metrics: reading the links failed")
            shown = []
        for link in shown:
            for name in self.STATES:
                state.add_metric([link["name"], name], 1.0 if link["contact"] == name else 0.0)
            pending.add_metric([link["name"]], float(len(link.get("pending_removals", ()))))
        yield state
        yield pending


def _route_template(scope: dict) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else UNMATCHED


class MetricsMiddleware:
    """Pure ASGI middleware: counts and times every HTTP request."""

    def __init__(self, app: Any, metrics: ProviderMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = {"code": 500, "bytes": 0}  # an exception before the response starts is a 500

        async def send_wrapper(message: dict) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            elif message["type"] == "http.response.body":
                status["bytes"] += len(message.get("body", b""))
            await send(message)

        start = time.perf_counter()
        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.metrics.in_flight.dec()
            # FastAPI's router stores the matched route in the (shared) scope.
            route = _route_template(scope)
            method = scope.get("method", "?")
            self.metrics.requests.labels(route, method, str(status["code"])).inc()
            self.metrics.body_bytes.labels(route).inc(status["bytes"])
            self.metrics.latency.labels(route, method).observe(time.perf_counter() - start)


def _is_loopback(host: str | None) -> bool:
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def install_metrics(app: Any, registry: CollectorRegistry | None = None, *,
                    path: str = "/metrics", mount: bool = True) -> ProviderMetrics:
    """Add the middleware (and ``GET path`` for loopback clients) to ``app``.

    Call before the app starts serving. Returns the :class:`ProviderMetrics`
    (also stored as ``app.state.metrics``) for the epoch/watch hooks.
    """
    from starlette.requests import Request
    from starlette.responses import Response

    metrics = ProviderMetrics(registry)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.state.metrics = metrics
    if mount:
        async def metrics_endpoint(request: Request) -> Response:
            if not _is_loopback(request.client.host if request.client else None):
                return Response("Not Found", status_code=404, media_type="text/plain")
            return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

        app.add_route(path, metrics_endpoint, methods=["GET"], include_in_schema=False)
    return metrics


def parse_listen(text: str) -> tuple[str, int]:
    """Loopback ``host:port`` / ``[v6]:port``; anything else is a ConfigError."""
    from grouptun.ops.metrics import parse_listen as _parse

    return _parse(text, key=CONFIG_KEY)


def serve_metrics(metrics: ProviderMetrics, listen: str = "127.0.0.1:9587"):
    """Separate loopback listener (own thread). Returns (server, thread);
    stop with ``server.shutdown(); server.server_close()``."""
    host, port = parse_listen(listen)
    return start_http_server(port, host, registry=metrics.registry)
