"""Member names over DNS: the sans-IO answer function (grouptun/apps/names.py) and its asyncio shell.

The shell runs here on 127.0.0.1 (the daemon binds the tunnel addresses; tests/integration asks
``dig`` inside namespaces); the host resolver is the shared fake (FakeLinkDns).
"""

from __future__ import annotations

import asyncio
import base64
import socket
import struct
from types import SimpleNamespace

import dns.flags
import dns.message
import dns.opcode
import dns.query
import dns.rcode
import dns.rdatatype
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from grouptun import config as cfgmod
from grouptun.errors import ConfigError
from grouptun.apps.names import MAX_QUERY, ClientBudgets, NameCounters, QueryBudget, Zone, answer
from grouptun.apps.names_server import NameService, ResolvectlLink, server_text

from .fakes import FakeClock, FakeLinkDns

ARCHIVE = SimpleNamespace(version=7, members=[
    SimpleNamespace(name="alice", addresses=("10.77.0.2/24", "fd77::2/64")),
    SimpleNamespace(name="b", addresses=("10.77.0.3/24", "fd77::3/64")),
    SimpleNamespace(name="v4only", addresses=("10.77.0.4/24",)),
    SimpleNamespace(name="odd.name", addresses=("10.77.0.5/24",)),
])
ZONE = Zone.from_archive(ARCHIVE, "lan.grouptun")


def ask(name: str, rdtype: str = "A", zone: Zone = ZONE, **query_options) -> tuple[dns.message.Message, NameCounters]:
    counters = NameCounters()
    wire = answer(dns.message.make_query(name, rdtype, **query_options).to_wire(), zone, counters)
    assert wire is not None
    return dns.message.from_wire(wire), counters


def records(reply: dns.message.Message) -> list[str]:
    return sorted(item.to_text() for rrset in reply.answer for item in rrset)


@pytest.mark.parametrize("name", ["b.lan.grouptun", "B.LAN.GROUPTUN.", "b.Lan.grouptun"])
def test_a_and_aaaa_of_a_member_from_the_archive(name):
    reply, counters = ask(name, "A")
    assert reply.rcode() == dns.rcode.NOERROR and records(reply) == ["10.77.0.3"]
    assert reply.flags & dns.flags.AA and reply.flags & dns.flags.QR and not reply.flags & dns.flags.RA
    assert counters.answered == 1
    assert records(ask(name, "AAAA")[0]) == ["fd77::3"]
    assert records(ask(name, "ANY")[0]) == ["10.77.0.3", "fd77::3"]


def test_nodata_nxdomain_refused_each_clean_and_counted():
    for name, rdtype in (("b.lan.grouptun", "MX"), ("v4only.lan.grouptun", "AAAA"), ("lan.grouptun", "A")):
        reply, counters = ask(name, rdtype)
        assert reply.rcode() == dns.rcode.NOERROR and not reply.answer and counters.answered == 1
        assert reply.authority[0].rdtype == dns.rdatatype.SOA  # negative caching (RFC 2308)
    for name in ("carol.lan.grouptun", "x.b.lan.grouptun", "odd.name.lan.grouptun"):
        reply, counters = ask(name)
        assert reply.rcode() == dns.rcode.NXDOMAIN and counters.nxdomain == 1
    for name in ("example.com", "grouptun", "lan.grouptun.evil"):
        reply, counters = ask(name)
        assert reply.rcode() == dns.rcode.REFUSED and counters.refused == 1 and not reply.answer
    chaos = dns.message.make_query("b.lan.grouptun", "A", rdclass="CH")
    assert dns.message.from_wire(answer(chaos.to_wire(), ZONE, NameCounters())).rcode() == dns.rcode.REFUSED


def test_edns_is_answered_with_edns():
    reply, _ = ask("b.lan.grouptun", "A", use_edns=0, payload=1232)
    assert reply.edns == 0 and records(reply) == ["10.77.0.3"]


def test_malformed_queries_get_formerr_or_are_dropped_and_counted():
    counters = NameCounters()
    query = dns.message.make_query("b.lan.grouptun", "A")
    formerr = dns.message.from_wire(answer(query.to_wire()[:-3], ZONE, counters))  # cut inside the question
    assert formerr.rcode() == dns.rcode.FORMERR and formerr.id == query.id and counters.formerr == 1
    two = query.to_wire()
    two = two[:4] + struct.pack(">H", 2) + two[6:]  # QDCOUNT 2, one question present
    assert dns.message.from_wire(answer(two, ZONE, counters)).rcode() == dns.rcode.FORMERR
    empty = struct.pack(">HHHHHH", 77, 0, 0, 0, 0, 0)  # no question at all
    assert dns.message.from_wire(answer(empty, ZONE, counters)).rcode() == dns.rcode.FORMERR
    assert counters.formerr == 3
    response = dns.message.make_response(query).to_wire()
    for dropped in (b"\x01\x02", response, b"\x00" * (MAX_QUERY + 1), response[:-3]):
        assert answer(dropped, ZONE, counters) is None
    assert counters.dropped == 4
    status = dns.message.make_query("b.lan.grouptun", "A")
    status.set_opcode(dns.opcode.STATUS)
    assert dns.message.from_wire(answer(status.to_wire(), ZONE, counters)).rcode() == dns.rcode.NOTIMP


@given(st.binary(max_size=600))
@settings(max_examples=2000, deadline=None)
def test_random_bytes_never_crash_and_get_formerr_or_nothing(data):
    counters = NameCounters()
    reply = answer(data, ZONE, counters)
    if reply is None:
        assert counters.dropped == 1
        return
    parsed = dns.message.from_wire(reply)
    assert parsed.flags & dns.flags.QR
    assert sum(counters.snapshot().values()) - counters.truncated == 1


@given(st.binary(min_size=1, max_size=40))
@settings(max_examples=500, deadline=None)
def test_a_real_query_with_flipped_tail_bytes_never_crashes(tail):
    wire = dns.message.make_query("b.lan.grouptun", "AAAA", use_edns=0).to_wire()
    mutated = wire[:12] + bytes(a ^ b for a, b in zip(wire[12:12 + len(tail)], tail)) + wire[12 + len(tail):]
    answer(mutated, ZONE, NameCounters())


def test_budget_allows_the_burst_then_the_rate():
    budget = QueryBudget(rate=10, burst=3)
    assert [budget.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert budget.take(0.05) is False and budget.take(0.1) is True
    assert sum(budget.take(100.0) for _ in range(10)) == 3  # refills to the burst, not beyond


def test_domain_is_configurable_and_validated(tmp_path):
    base = "[group]\nname='Lan'\nmember='a'\ngroup_id='" + "0" * 32 + "'\n[provider]\nurl='https://x:1'\n" \
           f"tls_fingerprint='{'0' * 64}'\nkeys_hash='k'\ned25519_public='{'A' * 43}='\n" \
           f"mldsa65_public='{base64.b64encode(bytes(1952)).decode()}'\n"
    path = tmp_path / "lan.toml"
    path.write_text(base)
    assert cfgmod.load(path).names_domain == "lan.grouptun"
    path.write_text(base + "[names]\ndomain = 'Corp.Example.'\nport = 5353\n")
    loaded = cfgmod.load(path)
    assert loaded.names_domain == "corp.example" and loaded.names.port == 5353
    assert cfgmod.load(path) == cfgmod.parse(__import__("tomllib").loads(cfgmod.render(loaded)), source=path)
    for bad, key in (("domain = 'a..b'", "names.domain"), ("domain = '-x.y'", "names.domain"),
                     ("rate = 0", "names.rate"), ("resolved = 'yes'", "names.resolved"),
                     ("enabled = 'no'", "names.enabled"), ("colour = 1", "names.colour")):
        path.write_text(base + "[names]\n" + bad + "\n")
        with pytest.raises(ConfigError) as info:
            cfgmod.load(path)
        assert info.value.key == key


def test_resolvectl_link_runs_the_commands_resolvectl_users_would():
    ran: list[list[str]] = []
    link = ResolvectlLink(run=ran.append)
    link.register("gt-lan", [server_text("10.77.0.2", 53), server_text("fd77::2", 5353)], "lan.grouptun")
    link.revert("gt-lan")
    assert ran == [["dns", "gt-lan", "10.77.0.2", "[fd77::2]:5353"], ["domain", "gt-lan", "lan.grouptun"],
                   ["default-route", "gt-lan", "false"], ["llmnr", "gt-lan", "no"], ["mdns", "gt-lan", "no"],
                   ["revert", "gt-lan"]]


def _free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 (bounded tries)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp, socket.socket() as tcp:
            udp.bind(("127.0.0.1", 0))
            port = udp.getsockname()[1]
            try:
                tcp.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise AssertionError("no port free for both UDP and TCP")


def test_service_answers_udp_and_tcp_registers_and_reverts():
    async def scenario():
        link = FakeLinkDns()
        port = _free_port()
        service = NameService("gt-lan", "lan.grouptun", port, QueryBudget(1000, 100), ClientBudgets(1000, 100), lambda: 0.0, link)
        await service.start(["127.0.0.1/8", "192.0.2.99/24"])  # the second is on no interface: skipped
        assert service.bound == ["127.0.0.1"]
        assert link.calls == [("register", "gt-lan", (f"127.0.0.1:{port}",), "lan.grouptun")]
        loop = asyncio.get_running_loop()
        query = dns.message.make_query("b.lan.grouptun", "A")
        before = await loop.run_in_executor(None, lambda: dns.query.udp(query, "127.0.0.1", 2, port))
        assert before.rcode() == dns.rcode.NXDOMAIN  # no archive yet
        service.apply(ARCHIVE)
        udp = await loop.run_in_executor(None, lambda: dns.query.udp(query, "127.0.0.1", 2, port))
        tcp = await loop.run_in_executor(None, lambda: dns.query.tcp(query, "127.0.0.1", 2, port))
        assert records(udp) == records(tcp) == ["10.77.0.3"]
        assert service.status()["answered"] == 2 and service.status()["names"] == 3
        assert service.status()["clients"] == 1  # UDP and TCP from 127.0.0.1 share one bucket
        await service.close()
        assert link.calls[-1] == ("revert", "gt-lan")
    asyncio.run(scenario())


WIRE = dns.message.make_query("b.lan.grouptun", "A").to_wire()


def test_service_over_the_total_budget_drops_and_counts():
    service = NameService("gt-lan", "lan.grouptun", 53, QueryBudget(1, 2), ClientBudgets(1, 10), lambda: 0.0, None)
    replies = [service.on_query(WIRE, f"10.77.0.{i}") for i in range(5)]  # five clients, each within its own
    assert sum(r is not None for r in replies) == 2 and service.counters.rate_limited == 3
    assert service.counters.client_limited == 0


def test_client_budgets_give_each_source_its_own_bucket_on_a_fake_clock():
    clock = FakeClock()  # steps of 1/16 s: exact in binary, so the refill is exact
    budgets = ClientBudgets(rate=8, burst=3)
    assert [budgets.take("10.77.0.2", clock()) for _ in range(4)] == [True, True, True, False]
    assert budgets.take("10.77.0.3", clock()) is True  # another client: untouched by the first one's flood
    clock.advance(1 / 16)
    assert budgets.take("10.77.0.2", clock()) is False  # half a token back
    clock.advance(1 / 16)
    assert budgets.take("10.77.0.2", clock()) is True
    clock.advance(100.0)
    assert sum(budgets.take("10.77.0.2", clock()) for _ in range(10)) == 3  # refills to the burst only
    with pytest.raises(ValueError):
        ClientBudgets(rate=0, burst=3)
    with pytest.raises(ValueError):
        ClientBudgets(rate=1, burst=3, max_clients=0)


def test_client_table_is_bounded_and_evicts_the_least_recently_heard():
    clock = FakeClock()
    budgets = ClientBudgets(rate=1, burst=1, max_clients=3)
    for source in ("a", "b", "c"):
        assert budgets.take(source, clock())
    assert not budgets.take("a", clock())  # a is now the most recent; b the least
    assert budgets.take("d", clock()) and len(budgets) == 3 and budgets.evicted == 1
    assert not budgets.take("a", clock()) and not budgets.take("c", clock())  # kept, still empty
    assert budgets.take("b", clock())  # was evicted: back with a full bucket
    assert len(budgets) == 3 and budgets.evicted == 2
    for i in range(10_000):
        budgets.take(f"10.66.{i // 256}.{i % 256}", clock())
    assert len(budgets) == 3  # never more than max_clients


def test_a_flooding_client_is_limited_without_using_up_the_others_share():
    clock = FakeClock()
    service = NameService("gt-lan", "lan.grouptun", 53, QueryBudget(100, 20), ClientBudgets(4, 4), clock, None)
    service.apply(ARCHIVE)
    answered = {"flooder": 0, "quiet": 0}
    for step in range(64):  # one second in steps of 1/64 s: the flooder asks 50 times a step
        for _ in range(50):
            answered["flooder"] += service.on_query(WIRE, "10.77.0.9") is not None
        if step % 16 == 0:  # the quiet client: 4 per second, its own rate
            answered["quiet"] += service.on_query(WIRE, "10.77.0.3") is not None
        clock.advance(1 / 64)
    # the flooder: its burst of 4, then one token per 1/4 s (steps 16, 32, 48)
    assert answered == {"flooder": 4 + 3, "quiet": 4}
    assert service.counters.client_limited == 64 * 50 - 7 and service.counters.answered == 11
    assert service.counters.rate_limited == 0  # the flood never reached the shared budget
    status = service.status()
    assert (status["client_limited"], status["clients"], status["clients_evicted"]) == (64 * 50 - 7, 2, 0)


def test_status_text_says_how_many_queries_were_over_the_rate():
    from grouptun.cli.status import format_status

    names = {"domain": "lan.grouptun", "listening": ["10.77.0.2"], "port": 53, "clients": 2}
    quiet = format_status({"group": "lan", "names": {**names, "client_limited": 0, "rate_limited": 0}})
    assert "over the rate" not in quiet
    text = format_status({"group": "lan", "names": {**names, "client_limited": 3193, "rate_limited": 4}})
    assert "  names over the rate: 3193 queries dropped per client (2 clients), 4 over the total" in text


def test_failed_registration_leaves_names_answering():
    async def scenario():
        link = FakeLinkDns(fail=True)
        service = NameService("gt-lan", "lan.grouptun", _free_port(), QueryBudget(10, 10), ClientBudgets(10, 10), lambda: 0.0, link)
        await service.start(["127.0.0.1/8"])
        assert service.bound == ["127.0.0.1"] and service.status()["resolved"] is False
        await service.close()
        assert [c[0] for c in link.calls] == ["register"]  # nothing registered: nothing to revert
    asyncio.run(scenario())


def test_rebind_moves_the_server_to_new_addresses_and_registers_them():
    async def scenario():
        link = FakeLinkDns()
        port = _free_port()
        service = NameService("gt-lan", "lan.grouptun", port, QueryBudget(100, 10), ClientBudgets(100, 10), lambda: 0.0, link)
        await service.start(["127.0.0.1/8"])
        service.apply(ARCHIVE)
        await service.rebind(["127.0.0.2/8"])  # the archive gave us another address
        assert service.bound == ["127.0.0.2"]
        loop = asyncio.get_running_loop()
        query = dns.message.make_query("alice.lan.grouptun", "AAAA")
        reply = await loop.run_in_executor(None, lambda: dns.query.udp(query, "127.0.0.2", 2, port))
        assert records(reply) == ["fd77::2"]
        assert [c[0] for c in link.calls] == ["register", "register"] and link.calls[1][2] == (f"127.0.0.2:{port}",)
        await service.close()
    asyncio.run(scenario())
