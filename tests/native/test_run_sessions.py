"""Sessions on the native run cipher against sessions on the reference path, byte for byte and state for state.

Two identically built senders seal the same run through ``Session.seal_run`` (native: one RunKey call;
reference: seal.ReferenceRun, one cryptography call per datagram); two identically built receivers open
the same runs, forged, truncated, replayed or clean, through ``Session.open_run``. Everything the
receive path may change must end equal: accepted packets, drop counters, replay window, peer state,
requests.
"""

from __future__ import annotations

import pytest
from hypothesis import given, note, settings
from hypothesis import strategies as st

from grouptun import native
from grouptun.core import wire
from grouptun.core.replay import WINDOW
from grouptun.core.session import Session
from tests.core import builders
from tests.core.builders import endpoint, ipv4, ipv6, material, v4, v6

pytestmark = pytest.mark.skipif(native.RunKey is None, reason=native.UNAVAILABLE or "")

OVER = wire.OVERHEAD
BUF = 48 * 1500 + 4096
ALICE = endpoint("alice")


def build(name: str, suite: int, run_key) -> Session:
    session = Session(name, run_key=run_key)
    session.install_epoch(material(name, 1, suite), 0.0)
    return session


def inner(v6_: bool, size: int, tag: int) -> bytes:
    if v6_:
        return ipv6(v6(1), v6(2), bytes((tag + k) % 251 for k in range(size - 40)))
    return ipv4(v4(1), v4(2), bytes((tag + k) % 251 for k in range(size - 20)))


def seal_run(session: Session, packets: list[bytes], stride: int) -> tuple[bytes, object]:
    """The datagrams of ``packets`` (at ``stride`` in the source) sealed as one run: (bytes, (count, endpoints))."""
    data, _, endpoints = builders.seal_run(session, packets, 1.0, stride)
    return data, (len(packets) if endpoints else 0, endpoints)


def allocator_state(session: Session) -> tuple:
    a = session._keyring.current.allocator
    return a._next_s, a.next_n, a.rekey_due


@settings(max_examples=150, deadline=None, database=None)
@given(suite=st.sampled_from([1, 2]), v6_=st.booleans(), size=st.integers(40, 1400), count=st.integers(1, 46),
       data=st.data(), pad=st.integers(0, 40))
def test_native_sender_equals_reference(suite, v6_, size, count, data, pad):
    last = data.draw(st.integers(40 if v6_ else 20, size), "last")
    packets = [inner(v6_, size, j) for j in range(count - 1)] + [inner(v6_, last if count > 1 else size, 99)]
    a_native, a_reference = build("alice", suite, native.RunKey), build("alice", suite, None)
    got_native, result = seal_run(a_native, packets, size + pad)
    got_reference, _ = seal_run(a_reference, packets, size + pad)
    assert result[0] == count and got_native == got_reference
    assert allocator_state(a_native) == allocator_state(a_reference)
    assert dict(a_native.drops) == dict(a_reference.drops)


def snapshot(session: Session) -> tuple:
    state = session._keyring.current
    receiver = state.receivers.get(0)
    window = ()
    if receiver is not None:
        top = receiver.window.top
        window = (top, tuple(receiver.window.check(n) for n in range(max(0, top - WINDOW - 8), top + 80)))
    peer = session.peer("alice")
    return (dict(session.drops), peer.endpoint, peer.last_seen, peer.rx_packets, peer.rx_bytes, window,
            state.send_started, state.auth_failures, frozenset(session._requests))


class Receivers:
    """bob on the native path and bob on the reference path."""

    def __init__(self, suite: int) -> None:
        self.sides = []
        for run_key in (native.RunKey, None):
            self.sides.append(build("bob", suite, run_key))

    def feed(self, run: bytes, stride: int, now: float, source=ALICE) -> list[bytes]:
        results = []
        for session in self.sides:
            results.append(builders.open_run(session, run, stride, source, now))
        assert results[0] == results[1]
        assert snapshot(self.sides[0]) == snapshot(self.sides[1])
        return results[0]


KINDS = ["clean", "header", "body", "tag", "truncate", "replay", "partial_replay", "skip"]


def as_run(datagrams: list, stride: int) -> bytes:
    return b"".join(bytes(d) + bytes(stride - len(d)) for d in datagrams[:-1]) + bytes(datagrams[-1])


@settings(max_examples=200, deadline=None, database=None)
@given(suite=st.sampled_from([1, 2]), v6_=st.booleans(), size=st.integers(40, 1400), count=st.integers(2, 46),
       kind=st.sampled_from(KINDS), data=st.data())
def test_native_receiver_equals_reference(suite, v6_, size, count, kind, data):
    last = data.draw(st.integers(40 if v6_ else 20, size), "last")
    victims = data.draw(st.sets(st.integers(0, count - 1), min_size=1, max_size=3), "victims")
    note(f"suite={suite} v6={v6_} size={size} count={count} last={last} kind={kind} victims={victims}")
    packets = [inner(v6_, size, j) for j in range(count - 1)] + [inner(v6_, last, 77)]
    run, _ = seal_run(build("alice", suite, None), packets, size)
    stride = size + OVER
    datagrams = [bytearray(run[at:at + stride]) for at in range(0, len(run), stride)]
    if kind in ("header", "body", "tag"):
        for j in victims:
            low, high = {"header": (0, wire.HEADER_SIZE), "tag": (len(datagrams[j]) - 16, len(datagrams[j]))}.get(
                kind, (wire.HEADER_SIZE, len(datagrams[j]) - 16))
            datagrams[j][data.draw(st.integers(low, high - 1))] ^= 1 << data.draw(st.integers(0, 7))
    elif kind == "truncate":
        datagrams[-1] = datagrams[-1][:-data.draw(st.integers(1, len(datagrams[-1]) - OVER))]
    elif kind == "skip" and count >= 3:
        del datagrams[1]
    receivers = Receivers(suite)
    if kind == "replay":
        receivers.feed(as_run(datagrams, stride), stride, 1.0)
    elif kind == "partial_replay":
        cut = min(victims) + 1
        receivers.feed(as_run(datagrams[:cut], stride), stride, 1.0)
    got = receivers.feed(as_run(datagrams, stride), stride, 2.0)
    if kind == "clean":
        assert got == packets
    if kind == "replay":
        assert got == []


@pytest.mark.parametrize("suite", [1, 2])
def test_native_run_opens_datagram_by_datagram_at_a_reference_receiver(suite):
    packets = [inner(False, 300, j) for j in range(5)] + [inner(False, 120, 9)]
    run, _ = seal_run(build("alice", suite, native.RunKey), packets, 300)
    bob = build("bob", suite, None)
    at, got = 0, []
    for p in packets:
        got.append(bob.on_datagram(run[at:at + len(p) + OVER], ALICE, 1.0))
        at += len(p) + OVER
    assert got == packets and bob.drops.total() == 0
