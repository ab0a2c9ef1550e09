"""grouptun.control.endpoints: what a member reports as its UDP endpoints (split out of daemon.py)."""

from __future__ import annotations

import socket

import pytest

from grouptun import config, daemon

from grouptun.control import endpoints
from .test_config import good


def test_configured_endpoints_win():
    cfg = config.parse(good())
    assert endpoints.reported_endpoints(cfg, 51820) == ["192.0.2.1:51820", "[2001:db8::1]:51820"]


@pytest.mark.parametrize("listen, expected", [("127.0.0.1", "127.0.0.1:4000"), ("::1", "[::1]:4000")])
def test_a_specific_listen_address_is_reported_as_it_is(listen, expected):
    assert endpoints.seen_endpoints("https://127.0.0.1:8443", listen, 4000) == [expected]


def test_unspecified_listen_address_reports_the_source_towards_the_provider():
    # connect() on a UDP socket sends nothing: only the route lookup happens (loopback here).
    data = good()
    del data["network"]["endpoints"]
    data["network"]["listen_address"] = "0.0.0.0"
    cfg = config.parse(data)
    assert endpoints.reported_endpoints(cfg, 4000) == ["127.0.0.1:4000"]


def test_provider_that_does_not_resolve_gives_no_endpoint(monkeypatch):
    def no_name(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(endpoints.socket, "getaddrinfo", no_name)
    assert endpoints.local_address_towards("https://provider.example:8443") is None
    assert endpoints.seen_endpoints("https://provider.example:8443", "::", 4000) == []


def test_daemon_still_exports_what_its_users_import():
    # the daemon reports what grouptun.control.endpoints finds; tests import Daemon and Factories.
    assert daemon.reported_endpoints is endpoints.reported_endpoints
    assert {"Daemon", "Factories", "OpsHooks"} <= set(vars(daemon))

