"""Access policy (grouptun/core/policy.py, conntrack.py): grammar, inner flows, first match, state, counters."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519, mldsa
from hypothesis import given
from hypothesis import strategies as st

from grouptun.core import policy as P
from grouptun.core.archive import Archive, ArchivePolicy, sign_archive, verify_archive
from grouptun.core.envelope import ProviderKeys
from grouptun.core.conntrack import IDLE
from grouptun.errors import EpochRejected

from .builders import ipv4, ipv6, v4, v6

KEYS = st.sampled_from(["role", "site", "env"])
VALUES = st.sampled_from(["web", "db", "a", "b"])
SELECTORS = st.dictionaries(KEYS, VALUES, max_size=2).map(lambda d: tuple(sorted(d.items())))
PORTS = st.one_of(st.none(), st.integers(0, 65535).map(lambda p: (p, p)),
                  st.tuples(st.integers(0, 65534), st.integers(1, 65535)).filter(lambda t: t[0] < t[1]))
RULES = st.builds(lambda s, d, proto, ports, action: P.Rule(s, d, proto, ports if proto in P.PORTED else None, action),
                  SELECTORS, SELECTORS, st.sampled_from(sorted(P.PROTOCOLS)), PORTS, st.sampled_from(P.ACTIONS))
POLICIES = st.builds(lambda rules, default, declared: P.Policy(tuple(rules), default, tuple(sorted(declared))),
                     st.lists(RULES, max_size=8), st.sampled_from(P.ACTIONS), st.sets(KEYS, max_size=2))
ATTRS = st.dictionaries(KEYS, VALUES, max_size=3)
# For matching: few ports, protocols and values, so that several rules often match one packet
CLOSE_RULES = st.builds(P.Rule, st.dictionaries(KEYS, st.sampled_from(["web", "db"]), max_size=1).map(
    lambda d: tuple(d.items())), st.just(()), st.sampled_from(["any", "tcp", "udp", "icmp"]),
    st.sampled_from([None, (22, 22), (22, 5432)]), st.sampled_from(P.ACTIONS)).map(
    lambda r: r if r.protocol in P.PORTED else P.Rule(r.source, r.destination, r.protocol, None, r.action))
CLOSE_POLICIES = st.builds(lambda rules, default: P.Policy(tuple(rules), default),
                           st.lists(CLOSE_RULES, max_size=8), st.sampled_from(P.ACTIONS))
WEB, DB = v4(2).packed, v4(1).packed


def tcp(src: bytes, dst: bytes, sport: int, dport: int, protocol: int = 6) -> bytes:
    """builders.ipv4 (UDP) with another protocol byte, and a 20-byte L4 header starting with the ports."""
    packet = bytearray(ipv4(ipaddress.IPv4Address(src), ipaddress.IPv4Address(dst),
                            struct.pack(">HH", sport, dport) + bytes(16)))
    packet[9] = protocol
    return bytes(packet)


def icmp(src: bytes, dst: bytes) -> bytes:
    return tcp(src, dst, 0x0800, 0, protocol=1)


# --- grammar ---------------------------------------------------------------------------------------------


@given(POLICIES)
def test_a_printed_policy_parses_back_to_itself(policy):
    assert P.parse(str(policy)) == policy
    assert str(P.parse(str(policy))) == str(policy)


@given(RULES)
def test_a_parsed_rule_prints_back_to_itself(rule):
    assert P.parse_rule(str(rule)) == rule
    assert str(P.parse_rule(str(rule))) == str(rule)


@given(POLICIES, st.lists(st.sampled_from(["\n", ";", " ;\n", "  # note\n", "\n\n", "\t;"]), min_size=1),
       st.sampled_from([" ", "  ", "\t"]))
def test_any_spelling_of_a_policy_prints_as_its_canonical_form(policy, separators, space):
    statements = str(policy).split("\n")
    text = "".join(space.join(line.split(" ")) + separators[i % len(separators)] for i, line in enumerate(statements))
    assert str(P.parse(text)) == str(policy)


def test_the_issue_example_with_semicolons_comments_and_spacing():
    text = "# web may reach the database\n  role=web  ->  role=db tcp/5432 allow ;default deny  # else nothing\n"
    policy = P.parse(text)
    assert str(policy) == "role=web -> role=db tcp/5432 allow\ndefault deny"
    assert P.parse("declare site,role\n* -> * udp/53-54 allow\ndefault allow").declared == ("role", "site")


@pytest.mark.parametrize("text, line, fault", [
    ("role=web -> role=db tcp/5432 allow", 1, "no 'default allow' or 'default deny'"),
    ("role=web -> role=db tcp/5432 alow\ndefault deny", 1, "unknown action 'alow'"),
    ("default deny\n* -> * any allow", 2, "after the 'default'"),
    ("* -> * gre allow\ndefault deny", 1, "unknown protocol 'gre'"),
    ("* -> * icmp/8 allow\ndefault deny", 1, "icmp has no ports"),
    ("* -> * tcp/70000 allow\ndefault deny", 1, "ports '70000'"),
    ("* -> * tcp/90-80 allow\ndefault deny", 1, "low end must be below"),
    ("* -> * tcp/80-80 allow\ndefault deny", 1, "low end must be below"),
    ("* -> * tcp/080 allow\ndefault deny", 1, "ports '080'"),
    ("\n\nRole=web -> * any allow\ndefault deny", 3, "selector 'Role=web'"),
    ("role=web,role=db -> * any allow\ndefault deny", 1, "given twice"),
    ("role=web role=db tcp allow\ndefault deny", 1, "SOURCE -> DESTINATION"),
    ("* -> * any allow\ndeclare role\ndefault deny", 2, "before the rules"),
    ("default maybe", 1, "'default allow' or 'default deny'"),
])
def test_a_malformed_policy_names_the_line_and_the_statement(text, line, fault):
    with pytest.raises(P.PolicyError) as info:
        P.parse(text)
    assert info.value.line == line and fault in str(info.value)
    assert f"line {line}" in str(info.value)


def test_too_many_rules_are_refused():
    with pytest.raises(P.PolicyError, match=f"more than {P.MAX_RULES} rules"):
        P.parse("* -> * any allow\n" * (P.MAX_RULES + 1) + "default deny")


# --- inner flows -----------------------------------------------------------------------------------------


def test_flow_of_reads_protocol_and_ports_with_bounds_checks():
    assert P.flow_of(tcp(WEB, DB, 40000, 5432)) == P.Flow(6, WEB, DB, 40000, 5432)
    assert P.flow_of(ipv4(v4(2), v4(1), struct.pack(">HH", 53, 5353) + bytes(4))).destination_port == 5353
    assert P.flow_of(icmp(WEB, DB)) == P.Flow(1, WEB, DB, None, None)
    truncated = ipv4(v4(2), v4(1), b"\x01")  # UDP with one byte of header
    assert P.flow_of(truncated).destination_port is None
    fragment = bytearray(tcp(WEB, DB, 40000, 5432))
    fragment[6:8] = (100).to_bytes(2, "big")  # offset 800: no L4 header here
    assert P.flow_of(bytes(fragment)).destination_port is None
    assert P.flow_of(b"\x00" * 30).protocol == 255 and P.flow_of(b"").protocol == 255


def test_flow_of_follows_cheap_ipv6_extension_headers():
    udp = struct.pack(">HH", 1000, 53) + bytes(4)
    assert P.flow_of(ipv6(v6(2), v6(1), udp)).destination_port == 53
    hop_by_hop = ipv6(v6(2), v6(1), bytes([17, 0]) + bytes(6) + udp)
    hop_by_hop = hop_by_hop[:6] + b"\x00" + hop_by_hop[7:]  # next header 0, then UDP
    assert P.flow_of(hop_by_hop) == P.Flow(17, v6(2).packed, v6(1).packed, 1000, 53)
    later_fragment = ipv6(v6(2), v6(1), bytes([17, 0]) + (8 << 3).to_bytes(2, "big") + bytes(4) + udp)
    later_fragment = later_fragment[:6] + bytes([44]) + later_fragment[7:]
    assert P.flow_of(later_fragment) == P.Flow(17, v6(2).packed, v6(1).packed, None, None)
    esp = ipv6(v6(2), v6(1), udp)
    esp = esp[:6] + bytes([50]) + esp[7:]
    assert P.flow_of(esp).protocol == 50 and P.flow_of(esp).destination_port is None


# --- matching --------------------------------------------------------------------------------------------


def _first_match(policy, source, destination, protocol, port):
    """The specification, written out: the first rule whose every part holds, else the default (0)."""
    for number, rule in enumerate(policy.rules, 1):
        protocols = P.PROTOCOLS[rule.protocol]
        if protocols is not None and protocol not in protocols:
            continue
        if rule.ports is not None and (port is None or not rule.ports[0] <= port <= rule.ports[1]):
            continue
        if all(source.get(k) == v for k, v in rule.source) and all(
                destination.get(k) == v for k, v in rule.destination):
            return number
    return 0


@given(st.one_of(POLICIES, CLOSE_POLICIES), ATTRS, ATTRS, st.sampled_from([1, 6, 17, 58, 47]),
       st.one_of(st.none(), st.sampled_from([22, 53, 5432]), st.integers(0, 65535)), st.booleans())
def test_the_first_matching_rule_decides_else_the_default(policy, mine, theirs, protocol, port, outgoing):
    compiled = P.CompiledPolicy(policy, 0, {0: mine, 1: theirs})
    source, destination = (mine, theirs) if outgoing else (theirs, mine)
    assert compiled.decide(1, outgoing, protocol, port) == _first_match(policy, source, destination, protocol, port)


def _enforcer(text="role=web -> role=db tcp/5432 allow\ndefault deny", own=0, **kwargs):
    enforcer = P.PolicyEnforcer(**kwargs)
    enforcer.update(7, P.parse(text), 3, own, {0: {"role": "db"}, 1: {"role": "web"}})
    return enforcer


def test_no_policy_allows_everything_and_tracks_nothing():
    enforcer = P.PolicyEnforcer()
    enforcer.update(7, None, None, 0, {0: {}, 1: {}})
    assert enforcer.inbound(7, 1, tcp(WEB, DB, 1, 22), 0.0) is None
    assert enforcer.outbound(99, 1, icmp(DB, WEB), 0.0) is None
    assert len(enforcer.conntrack) == 0 and enforcer.status() == {"version": None}


def test_denied_packets_are_counted_per_rule_and_on_the_default():
    enforcer = _enforcer("role=web -> role=db tcp/22 deny\nrole=web -> role=db tcp allow\ndefault deny")
    assert enforcer.inbound(7, 1, tcp(WEB, DB, 40000, 22), 0.0) == 1
    assert enforcer.inbound(7, 1, tcp(WEB, DB, 40000, 5432), 0.0) is None
    assert enforcer.inbound(7, 1, icmp(WEB, DB), 0.0) == 0
    assert enforcer.inbound(7, 1, icmp(WEB, DB), 0.0) == 0
    status = enforcer.status()
    assert status["version"] == 3 and status["default_denied"] == 2
    assert [(r["rule"], r["text"], r["denied"]) for r in status["rules"]] == [
        (1, "role=web -> role=db tcp/22 deny", 1), (2, "role=web -> role=db tcp allow", 0)]
    assert enforcer.inbound(8, 1, tcp(WEB, DB, 40000, 5432), 0.0) == 0  # no table for epoch 8: closed


def test_a_reply_to_an_allowed_flow_passes_both_ways_and_nothing_else_does():
    db = _enforcer(own=0)  # the database's daemon: web opens to it
    assert db.inbound(7, 1, tcp(WEB, DB, 40000, 5432), 0.0) is None
    assert db.outbound(7, 1, tcp(DB, WEB, 5432, 40000), 1.0) is None      # the reply
    assert db.outbound(7, 1, tcp(DB, WEB, 5432, 40001), 1.0) == 0          # not a reply: another port
    assert db.outbound(7, 1, tcp(DB, WEB, 40000, 5432), 1.0) == 0          # db may not open to web
    web = _enforcer(own=1)  # the web daemon checks its own sending, and admits the reply
    assert web.outbound(7, 0, tcp(WEB, DB, 40000, 5432), 0.0) is None
    assert web.inbound(7, 0, tcp(DB, WEB, 5432, 40000), 1.0) is None
    assert web.inbound(7, 0, tcp(DB, WEB, 5432, 40002), 1.0) == 0


def test_an_allowed_ping_gets_its_reply_and_ipv6_flows_are_tracked_too():
    db = _enforcer("role=web -> role=db icmp allow\nrole=web -> role=db udp/53 allow\ndefault deny")
    assert db.inbound(7, 1, icmp(WEB, DB), 0.0) is None
    assert db.outbound(7, 1, icmp(DB, WEB), 0.5) is None
    query = ipv6(v6(2), v6(1), struct.pack(">HH", 5000, 53) + bytes(4))
    answer = ipv6(v6(1), v6(2), struct.pack(">HH", 53, 5000) + bytes(4))
    assert db.outbound(7, 1, answer, 0.5) == 0
    assert db.inbound(7, 1, query, 1.0) is None and db.outbound(7, 1, answer, 1.5) is None


def test_flow_state_goes_idle_after_its_timeout():
    db = _enforcer()
    db.inbound(7, 1, tcp(WEB, DB, 40000, 5432), 0.0)
    assert db.outbound(7, 1, tcp(DB, WEB, 5432, 40000), IDLE[6] - 1) is None  # refreshed here
    assert db.outbound(7, 1, tcp(DB, WEB, 5432, 40000), 2 * IDLE[6] - 2) is None
    assert db.outbound(7, 1, tcp(DB, WEB, 5432, 40000), 3 * IDLE[6]) == 0


def test_the_table_is_bounded_and_evicts_the_least_recently_used_flow():
    db = _enforcer(max_entries=2)
    for n, port in enumerate((40000, 40001, 40002)):
        db.inbound(7, 1, tcp(WEB, DB, port, 5432), float(n))
    assert len(db.conntrack) == 2 and db.conntrack.evicted == 1
    assert db.outbound(7, 1, tcp(DB, WEB, 5432, 40000), 3.0) == 0     # evicted: judged by the rules
    assert db.outbound(7, 1, tcp(DB, WEB, 5432, 40002), 3.0) is None


def test_a_policy_change_judges_tracked_flows_again():
    db = _enforcer()
    db.inbound(7, 1, tcp(WEB, DB, 40000, 5432), 0.0)
    db.inbound(7, 1, tcp(WEB, DB, 40001, 5432), 0.0)
    db.update(7, P.parse("role=web -> role=db tcp/5432 allow\ndefault deny"), 3, 0,
              {0: {"role": "db"}, 1: {"role": "web"}})  # same policy, new generation: still allowed
    assert db.outbound(7, 1, tcp(DB, WEB, 5432, 40000), 1.0) is None
    db.update(7, P.parse("* -> * icmp allow\ndefault deny"), 4, 0, {0: {"role": "db"}, 1: {"role": "web"}})
    assert db.outbound(7, 1, tcp(DB, WEB, 5432, 40001), 2.0) == 0      # the flow is no longer allowed
    assert db.status()["version"] == 4 and db.status()["default_denied"] == 1  # counters of version 4
    db.update(8, P.parse("* -> * icmp allow\ndefault deny"), 4, 0, {0: {"role": "web"}, 1: {"role": "db"}})
    assert set(db._compiled) == {7, 8}


def test_attributes_change_without_a_new_epoch_applies():
    db = _enforcer()
    assert db.inbound(7, 1, tcp(WEB, DB, 40000, 5432), 0.0) is None
    db.update(7, db.policy, 3, 0, {0: {"role": "db"}, 1: {"role": "ci"}})
    assert db.inbound(7, 1, tcp(WEB, DB, 40005, 5432), 1.0) == 0
    assert db.outbound(7, 1, tcp(DB, WEB, 5432, 40000), 1.0) == 0   # the tracked flow re-judged: gone


# --- in the archive --------------------------------------------------------------------------------------


def _signed(document_policy) -> tuple[bytes, ProviderKeys]:
    ed, ml = ed25519.Ed25519PrivateKey.generate(), mldsa.MLDSA65PrivateKey.generate()
    keys = ProviderKeys(ed.public_key().public_bytes_raw(), ml.public_key().public_bytes_raw())
    archive = Archive(bytes(16), "lan", 5, None, (), "10.77.0.0/24", None, 1420, 0.0, policy=document_policy)
    return sign_archive(archive, ed, ml), keys


def test_the_archive_carries_the_policy_under_its_signature():
    policy = ArchivePolicy(2, P.parse("declare site\nrole=web -> role=db tcp/5432 allow\ndefault deny"))
    signed, keys = _signed(policy)
    assert verify_archive(signed, keys).policy == policy
    assert b'\\"policy\\":{\\"rules\\"' in signed
    assert verify_archive(*_signed(None)).policy is None
    tampered = signed.replace(b"tcp/5432", b"tcp/5433")
    with pytest.raises(EpochRejected) as info:
        verify_archive(tampered, keys)
    assert info.value.step == "signature"


@pytest.mark.parametrize("obj, fault", [
    ({"version": 1, "rules": ["* -> * any allow"]}, "no 'default"),
    ({"version": 1, "rules": ["*  ->  * any allow", "default deny"]}, "canonical"),
    ({"version": 1}, "version and rules"),
    ({"version": -1, "rules": ["default deny"]}, "out of range"),
])
def test_an_archive_policy_that_is_not_a_canonical_policy_is_refused(obj, fault):
    from grouptun.core.archive import parse_document

    document = Archive(bytes(16), "lan", 5, None, (), "10.77.0.0/24", None, 1420, 0.0).to_json()
    with pytest.raises(EpochRejected) as info:
        parse_document({**document, "policy": obj})
    assert info.value.step == "format" and fault in str(info.value)
