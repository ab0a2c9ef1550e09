"""Provider metrics middleware on a tiny FastAPI app."""

from __future__ import annotations

import urllib.request
import warnings

import pytest
from fastapi import FastAPI, HTTPException
from prometheus_client.parser import text_string_to_metric_families

from grouptun.errors import ConfigError
from provider.metrics import install_metrics, serve_metrics

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient


def samples(text: str) -> dict[tuple, float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


@pytest.fixture
def app_and_metrics():
    app = FastAPI()

    @app.get("/v1/groups/{group}/capsule")
    def capsule(group: str):
        if group == "refused":
            raise HTTPException(status_code=403, detail="no")
        return {"group": group}

    @app.post("/v1/groups/{group}/epochs")
    def open_epoch(group: str):
        app.state.metrics.epoch_created(group)
        return {"epoch": 1}

    @app.get("/v1/groups/{group}/watch")
    def watch(group: str):
        with app.state.metrics.watching(group):
            inside = app.state.metrics.watchers.labels(group)._value.get()
        return {"watchers_inside": inside}

    @app.get("/boom")
    def boom():
        raise RuntimeError("handler bug")

    metrics = install_metrics(app)
    return app, metrics


def test_counts_requests_by_route_template_and_status(app_and_metrics):
    app, metrics = app_and_metrics
    client = TestClient(app, client=("127.0.0.1", 40000), raise_server_exceptions=False)
    for name in ("a", "b", "c"):
        assert client.get(f"/v1/groups/{name}/capsule").status_code == 200
    assert client.get("/v1/groups/refused/capsule").status_code == 403
    assert client.post("/v1/groups/lan/epochs").status_code == 200
    assert client.get("/v1/groups/lan/watch").json() == {"watchers_inside": 1.0}
    assert client.get("/no/such/path").status_code == 404
    assert client.get("/boom").status_code == 500
    got = samples(client.get("/metrics").text)
    cap = "/v1/groups/{group}/capsule"
    req = "grouptun_provider_http_requests_total"
    assert got[(req, (("method", "GET"), ("route", cap), ("status", "200")))] == 3
    assert got[(req, (("method", "GET"), ("route", cap), ("status", "403")))] == 1
    assert got[(req, (("method", "GET"), ("route", "<unmatched>"), ("status", "404")))] == 1
    assert got[(req, (("method", "GET"), ("route", "/boom"), ("status", "500")))] == 1
    assert got[("grouptun_provider_http_request_duration_seconds_count", (("method", "GET"), ("route", cap)))] == 4
    assert got[("grouptun_provider_epochs_created_total", (("group", "lan"),))] == 1
    assert got[("grouptun_provider_watchers", (("group", "lan"),))] == 0
    assert got[("grouptun_provider_http_requests_in_flight", ())] == 1  # the /metrics request itself
    # raw paths never become labels
    assert not any("/v1/groups/a/" in str(k) for k in got)


def test_metrics_route_hidden_from_non_loopback_clients(app_and_metrics):
    app, _ = app_and_metrics
    assert TestClient(app, client=("203.0.113.9", 40000)).get("/metrics").status_code == 404
    assert TestClient(app, client=("::1", 40000)).get("/metrics").status_code == 200


def test_no_mount_leaves_no_route():
    app = FastAPI()
    install_metrics(app, mount=False)
    assert TestClient(app, client=("127.0.0.1", 1)).get("/metrics").status_code == 404


def test_separate_listener_is_loopback_only(app_and_metrics):
    _, metrics = app_and_metrics
    with pytest.raises(ConfigError) as err:
        serve_metrics(metrics, "0.0.0.0:9587")
    assert err.value.key == "metrics.listen"
    server, thread = serve_metrics(metrics, "127.0.0.1:0")
    try:
        port = server.server_address[1]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
            assert b"grouptun_provider_http_requests_in_flight" in resp.read()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
