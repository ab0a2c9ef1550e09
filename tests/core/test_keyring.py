"""Held epochs, switch and grace with a fake clock (PROTOCOL.md 6)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from grouptun.core.epoch import EpochState
from grouptun.core.keyring import Keyring
from grouptun.errors import EpochRejected

from .builders import material


def state(epoch: int, now: float = 0.0, **extra) -> EpochState:
    return EpochState(material("alice", epoch, switch_delay=2.0, grace=30.0, **extra), now)


def test_first_epoch_sends_at_once():
    ring = Keyring()
    e1 = state(1)
    assert ring.install(e1, 100.0) == []
    assert ring.sending(100.0) is e1 and ring.lookup(1, 100.0) is e1


def test_new_epoch_receives_at_once_sends_after_switch_delay():
    ring = Keyring()
    e1, e2 = state(1), state(2)
    ring.install(e1, 0.0)
    ring.install(e2, 10.0)
    assert ring.lookup(2, 10.0) is e2 and ring.lookup(1, 10.0) is e1
    assert ring.sending(11.999) is e1
    assert ring.sending(12.0) is e2
    assert e2.send_started == 12.0


def test_authenticated_packet_switches_sending_early():
    ring = Keyring()
    e1, e2 = state(1), state(2)
    ring.install(e1, 0.0)
    ring.install(e2, 10.0)
    ring.authenticated(e1, 10.5)  # the previous epoch: no effect
    assert ring.sending(10.5) is e1
    ring.authenticated(e2, 10.6)
    assert ring.sending(10.6) is e2 and e2.send_started == 10.6


def test_previous_forgotten_grace_after_sending_on_new_and_wiped():
    ring = Keyring()
    e1, e2 = state(1), state(2)
    ring.install(e1, 0.0)
    ring.install(e2, 10.0)
    assert ring.advance(41.9) == []  # sending started at 12.0: grace runs to 42.0
    assert ring.lookup(1, 41.9) is e1
    assert ring.advance(42.0) == [e1]
    assert ring.lookup(1, 42.0) is None and ring.previous is None
    assert e1.keys._prk is None and not any(e1.keys.nonce_common)


def test_lookup_hides_an_expired_previous_but_only_advance_drops_it():
    # lookup() runs on a header alone, before any tag: it must change nothing.
    ring = Keyring()
    e1, e2 = state(1), state(2)
    ring.install(e1, 0.0)
    ring.install(e2, 10.0)
    assert ring.lookup(1, 50.0) is None
    assert ring.held() == [e2, e1] and any(e1.keys.nonce_common)
    assert ring.advance(50.0) == [e1]
    assert ring.held() == [e2]


def test_at_most_two_epochs_third_install_drops_oldest():
    ring = Keyring()
    e1, e2, e3 = state(1), state(2), state(3)
    ring.install(e1, 0.0)
    ring.install(e2, 10.0)
    key = e1.keys.enc_key(0)
    assert ring.install(e3, 11.0) == [e1]
    assert not any(key)
    assert ring.held() == [e3, e2]
    # e2 had not started sending yet; e1 is gone, so e2 sends at once.
    assert ring.sending(11.0) is e2 and ring.sending(13.0) is e3


def test_same_wire_epoch_never_held_twice():
    ring = Keyring()
    e1, e65537 = state(1), state(65537)
    ring.install(e1, 0.0)
    assert ring.install(e65537, 5.0) == [e1]
    assert ring.lookup(1, 5.0) is e65537 and ring.sending(5.0) is e65537


def test_older_or_equal_epoch_refused_state_unchanged():
    ring = Keyring()
    e2 = state(2)
    ring.install(e2, 0.0)
    for epoch in (1, 2):
        with pytest.raises(EpochRejected) as info:
            ring.install(state(epoch), 1.0)
        assert info.value.step == "epoch"
    assert ring.held() == [e2] and ring.sending(1.0) is e2


def test_close_wipes_everything():
    ring = Keyring()
    e1, e2 = state(1), state(2)
    ring.install(e1, 0.0)
    ring.install(e2, 1.0)
    keys = [e1.keys.enc_key(1), e2.keys.enc_key(2), e1.keys.prk, e2.keys.prk]
    ring.close()
    assert ring.held() == [] and ring.sending(5.0) is None
    assert not any(any(k) for k in keys)


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["install", "auth", "advance", "lookup"]),
                          st.floats(0, 40), st.sampled_from([1, 2, 65536, 3])), max_size=25))
def test_invariants_under_random_events(events):
    ring, now, epoch, last_sending = Keyring(), 0.0, 0, None
    for kind, step, jump in events:
        now += step
        if kind == "install":
            epoch += jump
            ring.install(state(epoch), now)
        elif kind == "auth" and ring.current is not None:
            ring.authenticated(ring.current, now)
        elif kind == "advance":
            ring.advance(now)
        elif ring.current is not None:
            ring.lookup(ring.current.wire, now)
        held = ring.held()
        assert len(held) <= 2 and len({s.wire for s in held}) == len(held)
        assert set(ring.by_wire.values()) == set(held)
        sending = ring.sending(now)
        assert sending is None or sending in held
        if sending is not None and last_sending is not None:
            assert sending.epoch >= last_sending.epoch  # never back to an older epoch
        last_sending = sending
        if ring.previous is not None and ring.current.send_started is not None:
            assert now - ring.current.send_started < ring.current.grace or kind != "advance"
