"""Stream sequence allocation and recovery (PROTOCOL.md 4)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from grouptun.core import sequence
from grouptun.core.sequence import N_MAX, SequenceAllocator
from grouptun.errors import SequenceExhausted

params = st.integers(2, 65535).flatmap(
    lambda size: st.tuples(st.integers(0, 2**32 - 1), st.just(size), st.integers(0, size - 1), st.integers(0, N_MAX)))


@given(params)
def test_recover_inverts_stream_sequence(p):
    nonce_start, size, index, n = p
    s = sequence.stream_sequence(nonce_start, size, index, n)
    assert s < 2**64
    assert sequence.recover(nonce_start, size, s) == (index, n)


@given(params)
def test_below_nonce_start_and_beyond_n_max_dropped(p):
    nonce_start, size, index, _ = p
    if nonce_start:
        assert sequence.recover(nonce_start, size, nonce_start - 1) is None
    beyond = nonce_start + index + (N_MAX + 1) * size
    assert sequence.recover(nonce_start, size, beyond) is None
    assert sequence.recover(nonce_start, size, beyond - size) == (index, N_MAX)


def test_limits_refused():
    for args in ((2**32, 2, 0, 0), (0, 1, 0, 0), (0, 65536, 0, 0), (0, 3, 3, 0), (0, 3, 0, N_MAX + 1), (0, 3, -1, 0)):
        with pytest.raises(ValueError):
            sequence.stream_sequence(*args)


def test_allocator_counts_and_signals_rekey():
    alloc = SequenceAllocator(1000, 3, 2, rekey_after=3)
    assert [alloc.next() for _ in range(2)] == [1002, 1005]
    assert not alloc.rekey_due
    assert alloc.next() == 1008
    assert alloc.rekey_due and alloc.sent == 3


def test_allocator_stops_at_n_max_and_never_wraps():
    alloc = SequenceAllocator(7, 5, 4, start_n=N_MAX - 1)
    assert alloc.next() == 7 + 4 + (N_MAX - 1) * 5
    assert alloc.next() == 7 + 4 + N_MAX * 5
    for _ in range(3):
        with pytest.raises(SequenceExhausted):
            alloc.next()
    assert alloc.sent == N_MAX + 1
    assert alloc.rekey_due


def test_allocator_parameters_checked():
    with pytest.raises(ValueError):
        SequenceAllocator(0, 2, 2)
    with pytest.raises(ValueError):
        SequenceAllocator(0, 2, 0, rekey_after=2**27 + 1)
    with pytest.raises(ValueError):
        SequenceAllocator(0, 2, 0, rekey_after=0)
