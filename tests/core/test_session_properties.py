"""Hypothesis properties of the Session: exactly-once delivery, and no exception on any input."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from grouptun.core import wire
from grouptun.core.session import Session

from .builders import NAMES, endpoint, ipv4, material, v4

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def fresh_group(suite: int) -> dict[str, Session]:
    sessions = {}
    for name in NAMES:
        sessions[name] = Session(name)
        sessions[name].install_epoch(material(name, 1, suite), 0.0)
    return sessions


@SETTINGS
@given(suite=st.sampled_from([1, 2]),
       sends=st.lists(st.tuples(st.integers(0, 2), st.integers(0, 2)), min_size=1, max_size=25),
       deliveries=st.lists(st.integers(0, 10_000), max_size=80))
def test_each_datagram_delivered_exactly_once_in_any_order(suite, sends, deliveries):
    sessions = fresh_group(suite)
    sent = []  # (sender, receiver, datagram, inner packet)
    for number, (i, j) in enumerate(sends):
        if i == j:
            continue
        packet = ipv4(v4(i + 1), v4(j + 1), number.to_bytes(2, "big"))
        for dest, datagram in sessions[NAMES[i]].on_tun_packet(packet, 1.0):
            sent.append((NAMES[i], NAMES[j], bytes(datagram), packet))
    delivered: dict[int, int] = {}
    replays = 0
    # Deliver a random selection with repeats (reordered, duplicated), then everything once more.
    order = [d % len(sent) for d in deliveries] if sent else []
    order += list(range(len(sent)))
    for k in order:
        sender, receiver, datagram, packet = sent[k]
        inner = sessions[receiver].on_datagram(datagram, endpoint(sender), 2.0)
        if inner is None:
            replays += 1
        else:
            assert bytes(inner) == packet
            delivered[k] = delivered.get(k, 0) + 1
    assert delivered == {k: 1 for k in range(len(sent))}
    drops = {reason: sum(s.drops[reason] for s in sessions.values()) for reason in sessions["alice"].drops}
    assert drops["replay"] == replays and sum(drops.values()) == replays


@SETTINGS
@given(suite=st.sampled_from([1, 2]), byte0=st.sampled_from([0x11, 0x12, 0x13, 0x01]),
       flags=st.sampled_from([0, 0, 0, 1]), wire_epoch=st.sampled_from([1, 1, 1, 2, 0xFFFF]),
       offset=st.integers(-3, 10**6), body=st.binary(max_size=80), raw=st.binary(max_size=60))
def test_any_datagram_dropped_and_counted_once_never_raises(suite, byte0, flags, wire_epoch, offset, body, raw):
    b = fresh_group(suite)["bob"]
    state = b._keyring.current
    datagrams = [raw, wire.HEADER.pack(byte0, flags, wire_epoch, max(0, state.nonce_start + offset)) + body]
    for datagram in datagrams:
        before = b.drops.total()
        assert b.on_datagram(datagram, endpoint("alice"), 1.0) is None
        assert b.drops.total() == before + 1
    assert b.peer("alice").endpoint == endpoint("alice") and b.peer("alice").last_seen is None
