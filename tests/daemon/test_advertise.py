"""The daemon asks the provider's admin for its advertised subnet routes (grouptun/control/advertise.py)."""

from __future__ import annotations

import threading

from grouptun.control import advertise
from grouptun.errors import ProviderRefused

from .fakes import FakeProvider

ROUTES = ("192.168.5.0/24",)


def _requests(provider: FakeProvider) -> list[tuple]:
    return [c for c in provider.calls if c[1] == "request_routes"]


def test_sent_once_when_the_provider_answers():
    provider = FakeProvider(["alice", "bob"])
    assert advertise.advertise_routes(provider.client("bob"), ROUTES, threading.Event())
    assert _requests(provider) == [("bob", "request_routes", ROUTES)]


def test_unreachable_provider_is_retried_a_bounded_number_of_times(monkeypatch):
    monkeypatch.setattr(advertise, "FIRST_PAUSE", 0.001)
    provider = FakeProvider(["alice", "bob"])
    provider.down = True
    assert not advertise.advertise_routes(provider.client("bob"), ROUTES, threading.Event())
    assert len(_requests(provider)) == advertise.ATTEMPTS


def test_a_refusal_is_not_retried_and_stop_ends_the_waiting():
    provider = FakeProvider(["alice", "bob"])
    provider.refusing = ProviderRefused(400, "prefix '192.168.5.1/24': has host bits set")
    assert not advertise.advertise_routes(provider.client("bob"), ROUTES, threading.Event())
    assert len(_requests(provider)) == 1
    provider.refusing, provider.down = None, True
    stop = threading.Event()
    stop.set()
    assert not advertise.advertise_routes(provider.client("bob"), ROUTES, stop)
    assert len(_requests(provider)) == 2  # one attempt, then the stop


def test_nothing_to_advertise_starts_no_thread():
    assert advertise.start_advertising(None, (), threading.Event()) is None
