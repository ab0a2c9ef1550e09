"""The access policy in the data path: the sender leaves denied packets out of a run before sealing,
the receiver drops what its policy denies after authentication and the inner check (issue 17 item 6)."""

from __future__ import annotations

from grouptun.core import policy as P
from grouptun.core.session import Session

from . import builders
from .builders import NAMES, material
from .test_policy import icmp, tcp

ATTRIBUTES = {0: {"role": "web"}, 1: {"role": "db"}, 2: {"role": "ci"}}  # alice, bob, carol (builders.NAMES)
RULES = "role=web -> role=db tcp/5432 allow\ndefault deny"
ALICE, BOB = builders.v4(1).packed, builders.v4(2).packed


def _pair(alice_rules: str | None = RULES, bob_rules: str | None = RULES):
    sessions = {}
    for name, rules in (("alice", alice_rules), ("bob", bob_rules)):
        enforcer = P.PolicyEnforcer()
        enforcer.update(1, None if rules is None else P.parse(rules), 1, NAMES.index(name), ATTRIBUTES)
        session = Session(name, policy=enforcer)
        session.install_epoch(material(name, 1), 0.0)
        sessions[name] = session
    return sessions["alice"], sessions["bob"]


def _deliver(sender: Session, receiver: Session, packet: bytes, now: float = 1.0) -> bytes | None:
    out = sender.on_tun_packet(packet, now)
    assert len(out) <= 1
    return receiver.on_datagram(out[0][1], builders.endpoint(sender.own_name), now) if out else None


def test_an_allowed_flow_and_its_replies_pass_both_ways():
    alice, bob = _pair()
    request = tcp(ALICE, BOB, 40000, 5432)
    assert _deliver(alice, bob, request) == request
    reply = tcp(BOB, ALICE, 5432, 40000)
    assert _deliver(bob, alice, reply) == reply  # conntrack: the reply of an allowed flow
    assert alice.policy.counters.denied == bob.policy.counters.denied == [0, 0]


def test_the_sender_does_not_seal_what_its_policy_denies():
    alice, bob = _pair()
    sent_before = alice._keyring.current.allocator.sent
    assert alice.on_tun_packet(tcp(ALICE, BOB, 40000, 22), 1.0) == []
    assert alice.on_tun_packet(icmp(ALICE, BOB), 1.0) == []
    assert alice.policy.counters.denied[0] == 2  # the default denied both
    assert alice._keyring.current.allocator.sent == sent_before  # no sequence number spent on them


def test_the_receiver_drops_what_its_policy_denies_after_authentication():
    alice, bob = _pair(alice_rules=None)  # a sender without the policy (an older archive, or an insider)
    assert _deliver(alice, bob, tcp(ALICE, BOB, 40000, 22)) is None
    assert bob.policy.counters.denied[0] == 1
    assert bob.peer("alice").rx_packets == 0
    assert _deliver(alice, bob, tcp(ALICE, BOB, 40000, 5432)) is not None  # the allowed port still passes
    forged = bytearray(alice.on_tun_packet(tcp(ALICE, BOB, 40000, 22), 2.0)[0][1])
    forged[-1] ^= 1
    assert bob.on_datagram(forged, builders.endpoint("alice"), 2.0) is None
    assert bob.policy.counters.denied[0] == 1  # a forgery never reaches the policy: the tag failed first


def test_a_run_keeps_its_allowed_packets_in_order():
    alice, bob = _pair()
    packets = [tcp(ALICE, BOB, 40000 + k, 5432 if k % 2 == 0 else 22) for k in range(5)]
    data, seg, endpoints = builders.seal_run(alice, packets)
    assert endpoints == (builders.endpoint("bob"),)
    assert len(data) == 3 * seg  # k = 0, 2, 4
    assert builders.open_run(bob, data, seg, builders.endpoint("alice")) == packets[0::2]
    assert alice.policy.counters.denied[0] == 2


def test_a_run_with_every_packet_denied_is_dropped_whole():
    alice, _ = _pair()
    data, _, endpoints = builders.seal_run(alice, [tcp(ALICE, BOB, 40000 + k, 22) for k in range(4)])
    assert data == b"" and endpoints == ()
    assert alice.policy.counters.denied[0] == 4


def test_runs_on_the_receive_side_are_checked_per_packet():
    alice, bob = _pair(alice_rules=None)
    packets = [tcp(ALICE, BOB, 40000 + k, 5432 if k < 10 else 22) for k in range(14)]  # a long run: numpy checks
    data, seg, _ = builders.seal_run(alice, packets)
    assert len(data) > 13 * seg
    assert builders.open_run(bob, data, seg, builders.endpoint("alice")) == packets[:10]
    assert bob.policy.counters.denied[0] == 4 and bob.peer("alice").rx_packets == 10
