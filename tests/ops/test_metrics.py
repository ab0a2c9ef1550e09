"""Daemon metrics: loopback-only listener, series from a fake status snapshot."""

from __future__ import annotations

import asyncio
import re
import threading
import time
import urllib.request

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from grouptun.errors import ConfigError, ProviderRefused
from grouptun.ops.metrics import DEFAULT_PORT, DaemonMetrics, parse_listen
from ops.units import REPO

STATUS = {
    "epochs": [{"epoch": 6, "age": 40.0, "sending": False, "packets_sent": 5},
               {"epoch": 7, "age": 12.5, "sending": True, "packets_sent": 9}],
    "members": [
        {"name": "alpha", "index": 0, "rx_bytes": 1000, "tx_bytes": 2000, "rx_packets": 10,
         "tx_packets": 20, "last_seen_age": 0.5},
        {"name": "beta", "index": 1, "rx_bytes": 0, "tx_bytes": 0, "rx_packets": 0,
         "tx_packets": 0, "last_seen_age": None},
        "garbage",
    ],
    "drops": {"replay": 3, "auth": 1, "tx_no_route": 0},
}


def samples(text: str) -> dict[tuple, float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


@pytest.mark.parametrize("listen", ["0.0.0.0:9586", "[::]:9586", "10.1.2.3:80", "[fd00::1]:9586",
                                    "localhost:9586", "example.org:1", "127.0.0.1", "127.0.0.1:x",
                                    "127.0.0.1:70000"])
def test_refuses_non_loopback_or_malformed(listen):
    with pytest.raises(ConfigError) as err:
        parse_listen(listen)
    assert err.value.key == "daemon.metrics_listen"


def test_suggested_port_is_not_wireguard_exporters_and_every_doc_suggests_it():
    assert DEFAULT_PORT != 9586  # wireguard_exporter's: an admin running both would collide
    assert not 9100 <= DEFAULT_PORT <= 9999  # the Prometheus exporters' range, all of it allocated
    docs = "".join((REPO / name).read_text() for name in ("grouptun/example.toml", "systemd/README.md", "README.md"))
    suggested = re.findall(r'metrics_listen = "127\.0\.0\.1:(\d+)"', docs)
    assert len(suggested) >= 3 and set(suggested) == {str(DEFAULT_PORT)}


def test_accepts_loopback():
    assert parse_listen("127.0.0.1:9586") == ("127.0.0.1", 9586)
    assert parse_listen("127.0.0.53:1") == ("127.0.0.53", 1)
    assert parse_listen("[::1]:9586") == ("::1", 9586)


def test_serve_refuses_before_binding():
    m = DaemonMetrics("lan", lambda: STATUS, registry=CollectorRegistry())
    with pytest.raises(ConfigError):
        m.serve("0.0.0.0:0")
    assert m._server is None


def test_serves_expected_series_over_http():
    m = DaemonMetrics("lan", lambda: STATUS)
    m.rekey("packets")
    m.rekey("packets")
    m.epoch_installed()
    m.epoch_refused("signature")
    with m.provider_call("capsule"):
        pass
    with pytest.raises(ProviderRefused), m.provider_call("salt"):
        raise ProviderRefused(403, "credential")
    host, port = m.serve("127.0.0.1:0")
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10) as resp:
            text = resp.read().decode()
    finally:
        m.close()
    got = samples(text)
    g = ("group", "lan")
    assert got[("grouptun_snapshot_ok", (g,))] == 1
    assert got[("grouptun_epoch", (g,))] == 7
    assert got[("grouptun_epoch_age_seconds", (g,))] == 12.5
    assert got[("grouptun_epochs_held", (g,))] == 2
    assert got[("grouptun_member_receive_bytes_total", (g, ("member", "alpha")))] == 1000
    assert got[("grouptun_member_transmit_bytes_total", (g, ("member", "alpha")))] == 2000
    assert got[("grouptun_member_receive_packets_total", (g, ("member", "alpha")))] == 10
    assert got[("grouptun_member_transmit_packets_total", (g, ("member", "beta")))] == 0
    assert got[("grouptun_member_last_seen_age_seconds", (g, ("member", "alpha")))] == 0.5
    assert ("grouptun_member_last_seen_age_seconds", (g, ("member", "beta"))) not in got
    assert got[("grouptun_epoch_packets_sent_total", (("epoch", "6"), g))] == 5
    assert got[("grouptun_drops_total", (g, ("reason", "replay")))] == 3
    assert got[("grouptun_drops_total", (g, ("reason", "tx_no_route")))] == 0
    assert got[("grouptun_rekeys_total", (g, ("reason", "packets")))] == 2
    assert got[("grouptun_epochs_installed_total", (g,))] == 1
    assert got[("grouptun_epochs_refused_total", (g, ("step", "signature")))] == 1
    assert got[("grouptun_provider_request_duration_seconds_count",
                (("call", "capsule"), g, ("outcome", "ok")))] == 1
    assert got[("grouptun_provider_request_duration_seconds_count",
                (("call", "salt"), g, ("outcome", "refused")))] == 1


def test_ipv6_loopback_listener():
    m = DaemonMetrics("lan", lambda: {})
    host, port = m.serve("[::1]:0")
    try:
        with urllib.request.urlopen(f"http://[::1]:{port}/metrics", timeout=10) as resp:
            assert b"grouptun_snapshot_ok" in resp.read()
    finally:
        m.close()


def test_snapshot_failure_is_reported_not_raised():
    def broken():
        raise RuntimeError("session gone")

    m = DaemonMetrics("lan", broken)
    from prometheus_client import generate_latest
    got = samples(generate_latest(m.registry).decode())
    assert got[("grouptun_snapshot_ok", (("group", "lan"),))] == 0


def test_snapshot_is_taken_on_the_event_loop():
    """The collector runs the snapshot in the loop thread, not the scrape thread."""
    from prometheus_client import generate_latest

    seen = {}

    async def main():
        loop = asyncio.get_running_loop()

        def snapshot():
            seen["thread"] = threading.get_ident()
            return STATUS

        m = DaemonMetrics("lan", snapshot, loop=loop)
        text = await loop.run_in_executor(None, generate_latest, m.registry)
        return threading.get_ident(), text.decode()

    loop_thread, text = asyncio.run(main())
    assert seen["thread"] == loop_thread
    assert samples(text)[("grouptun_epoch", (("group", "lan"),))] == 7


def test_blocked_loop_gives_snapshot_ok_zero():
    from prometheus_client import generate_latest

    async def main():
        loop = asyncio.get_running_loop()
        m = DaemonMetrics("lan", lambda: STATUS, loop=loop, snapshot_timeout=0.2)
        scrape = loop.run_in_executor(None, generate_latest, m.registry)
        time.sleep(0.6)  # the loop is stuck: it cannot answer the scrape
        return (await scrape).decode()

    got = samples(asyncio.run(main()))
    assert got[("grouptun_snapshot_ok", (("group", "lan"),))] == 0
    assert ("grouptun_epoch", (("group", "lan"),)) not in got


def test_timed_client_times_contract_calls_only():
    class FakeClient:
        url = "https://p"

        def capsule(self, epoch):
            return b"c" * epoch

        def salt(self, epoch, credential):
            raise ProviderRefused(403, "credential")

        def helper(self):
            return "untimed"

    from prometheus_client import generate_latest

    m = DaemonMetrics("lan", lambda: {})
    client = m.instrument(FakeClient())
    assert client.capsule(3) == b"ccc"
    with pytest.raises(ProviderRefused):
        client.salt(1, b"x")
    assert client.helper() == "untimed" and client.url == "https://p"
    got = samples(generate_latest(m.registry).decode())
    name = "grouptun_provider_request_duration_seconds_count"
    assert got[(name, (("call", "capsule"), ("group", "lan"), ("outcome", "ok")))] == 1
    assert got[(name, (("call", "salt"), ("group", "lan"), ("outcome", "refused")))] == 1
    assert not any(k[0] == name and ("call", "helper") in k[1] for k in got)


def test_collector_reads_a_real_session_status():
    """Schema drift guard: the collector against grouptun.core.session.Session."""
    import ipaddress

    from prometheus_client import generate_latest

    from grouptun.core.epoch import EpochMaterial
    from grouptun.core.keys import SUITES
    from grouptun.core.session import MemberInfo, Session

    session = Session("alpha")
    members = (MemberInfo("alpha", 0, (ipaddress.ip_address("10.77.0.1"),), ("127.0.0.1", 40001)),
               MemberInfo("beta", 1, (ipaddress.ip_address("10.77.0.2"),), ("127.0.0.1", 40002)))
    session.install_epoch(EpochMaterial(
        group_id=b"g" * 16, epoch=3, suite=min(SUITES), nonce_start=0, group_size=2, own_index=0,
        members=members, shared_secret=bytearray(32), salt=bytearray(32)), now=100.0)
    m = DaemonMetrics("lan", lambda: session.status(105.0))
    got = samples(generate_latest(m.registry).decode())
    session.close()
    g = ("group", "lan")
    assert got[("grouptun_snapshot_ok", (g,))] == 1
    assert got[("grouptun_epochs_held", (g,))] == 1
    assert got[("grouptun_epoch", (g,))] == 3  # the first epoch sends at once
    assert got[("grouptun_epoch_age_seconds", (g,))] == 5.0
    assert got[("grouptun_epoch_packets_sent_total", (("epoch", "3"), g))] == 0
    assert got[("grouptun_member_transmit_bytes_total", (g, ("member", "beta")))] == 0
    assert got[("grouptun_drops_total", (g, ("reason", "replay")))] == 0


def test_names_counters_are_exported_by_outcome():
    from prometheus_client import generate_latest

    from grouptun.apps.names import NameCounters

    counters = NameCounters(answered=5, rate_limited=7, formerr=1, client_limited=11)
    m = DaemonMetrics("lan", lambda: {"epochs": [], "members": [], "drops": {}, "names": counters.snapshot()})
    got = samples(generate_latest(m.registry).decode())
    g = ("group", "lan")
    assert got[("grouptun_dns_queries_total", (g, ("outcome", "answered")))] == 5
    assert got[("grouptun_dns_queries_total", (g, ("outcome", "rate_limited")))] == 7
    assert got[("grouptun_dns_queries_total", (g, ("outcome", "client_limited")))] == 11
    assert got[("grouptun_dns_queries_total", (g, ("outcome", "nxdomain")))] == 0
    without = samples(generate_latest(DaemonMetrics("lan", lambda: {"drops": {}}).registry).decode())
    assert not any(name == "grouptun_dns_queries_total" for name, _ in without)
