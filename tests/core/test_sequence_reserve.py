"""SequenceAllocator.reserve and ReplayWindow.mark_range: the run forms equal their one-at-a-time forms."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from grouptun.core.replay import RING_BYTES, WINDOW, ReplayWindow
from grouptun.core.sequence import N_MAX, REKEY_AFTER_PACKETS_MAX, SequenceAllocator
from grouptun.errors import SequenceExhausted

FAST = settings(max_examples=150, deadline=None, database=None)


def state(alloc: SequenceAllocator) -> tuple:
    return alloc._next_s, alloc.next_n, alloc.sent, alloc.rekey_due, alloc.rekey_after


def calls_of_next(alloc: SequenceAllocator, count: int) -> list[int]:
    """Up to ``count`` s values from next(), stopping at the first SequenceExhausted."""
    got = []
    for _ in range(count):
        try:
            got.append(alloc.next())
        except SequenceExhausted:
            break
    return got


allocators = st.integers(2, 65535).flatmap(lambda size: st.tuples(
    st.integers(0, 2**32 - 1), st.just(size), st.integers(0, size - 1),
    st.one_of(st.integers(0, 300), st.integers(N_MAX - 300, N_MAX + 1)),  # start_n: far from and near n_max
    st.one_of(st.integers(1, 400), st.just(REKEY_AFTER_PACKETS_MAX), st.integers(N_MAX // 2 - 10, N_MAX // 2))))


@FAST
@given(params=allocators, counts=st.lists(st.integers(1, 400), min_size=1, max_size=4))
def test_reserve_equals_that_many_calls_of_next(params, counts):
    nonce_start, size, index, start_n, rekey_after = params
    a = SequenceAllocator(nonce_start, size, index, rekey_after, start_n=start_n)
    b = SequenceAllocator(nonce_start, size, index, rekey_after, start_n=start_n)
    for count in counts:
        before = state(a)
        want = calls_of_next(b, count)
        if not want:  # exhausted: refused, state unchanged
            with pytest.raises(SequenceExhausted):
                a.reserve(count)
            assert state(a) == before
        else:
            first, got = a.reserve(count)
            assert [first + j * size for j in range(got)] == want
            assert got == min(count, N_MAX + 1 - before[1])  # short grant exactly at n_max
        assert state(a) == state(b)
        # both agree on what comes next
        assert calls_of_next(a, 1) == calls_of_next(b, 1)
        assert state(a) == state(b)


def test_short_grant_at_n_max_then_refusal():
    alloc = SequenceAllocator(1000, 7, 3, start_n=N_MAX - 2)
    first, got = alloc.reserve(10)
    assert (first, got) == (1000 + 3 + (N_MAX - 2) * 7, 3)
    assert alloc.next_n == N_MAX + 1
    before = state(alloc)
    for count in (1, 5):
        with pytest.raises(SequenceExhausted):
            alloc.reserve(count)
        assert state(alloc) == before
    with pytest.raises(SequenceExhausted):
        alloc.next()


@pytest.mark.parametrize("count", [0, -1])
def test_reserve_refuses_non_positive_count_state_unchanged(count):
    alloc = SequenceAllocator(5, 3, 1, start_n=4)
    before = state(alloc)
    with pytest.raises(ValueError):
        alloc.reserve(count)
    assert state(alloc) == before


def test_reserve_raises_rekey_due_exactly_when_next_would():
    alloc = SequenceAllocator(0, 2, 0, rekey_after=10)
    alloc.reserve(9)
    assert not alloc.rekey_due
    alloc.reserve(1)
    assert alloc.rekey_due and alloc.sent == 10


# --- mark_range ------------------------------------------------------------------------------

def observable(window: ReplayWindow, low: int, high: int) -> tuple:
    return window.top, tuple(window.check(n) for n in range(max(0, low), high))


def assert_same_window(a: ReplayWindow, b: ReplayWindow) -> None:
    top = max(a.top, b.top)
    assert observable(a, top - WINDOW - 24, top + 24) == observable(b, top - WINDOW - 24, top + 24)


gaps = st.one_of(st.integers(1, 8), st.integers(1, 600), st.integers(WINDOW - 16, WINDOW + 16),
                 st.sampled_from([8 * RING_BYTES - 1, 8 * RING_BYTES, 8 * RING_BYTES + 7, 3 * WINDOW]))


def check_and_mark(window: ReplayWindow, n: int) -> bool:
    if not window.check(n):
        return False
    window.mark(n)
    return True


def assert_run_form_equals_one_by_one(prior: list[int], later: list[int], mark_run) -> None:
    """``mark_run(window)`` marks a run at once on a window that saw ``prior`` and returns its numbers; the
    window must be what mark() of each gives, then and for ``later`` numbers (nothing left behind in the
    ring may show)."""
    a, b = ReplayWindow(), ReplayWindow()
    for n in prior:
        assert check_and_mark(a, n) == check_and_mark(b, n)
    for n in mark_run(a):
        b.mark(n)
    assert_same_window(a, b)
    for delta in later:
        n = max(0, a.top + delta)
        assert check_and_mark(a, n) == check_and_mark(b, n)
    assert_same_window(a, b)


@settings(max_examples=80, deadline=None, database=None)
@given(prior=st.lists(st.integers(0, 3 * WINDOW), max_size=40), start=gaps,
       count=st.one_of(st.integers(1, 20), st.integers(1, 400), st.integers(WINDOW - 20, WINDOW + 20),
                       st.sampled_from([8 * RING_BYTES - 9, 8 * RING_BYTES, 8 * RING_BYTES + 9, 3 * WINDOW])),
       later=st.lists(st.integers(-WINDOW - 20, 2 * WINDOW), max_size=12))
def test_mark_range_equals_mark_one_by_one(prior, start, count, later):
    def run(window: ReplayWindow) -> range:
        first = max(window.top, -1) + start
        window.mark_range(first, count)
        return range(first, first + count)
    assert_run_form_equals_one_by_one(prior, later, run)


def test_mark_range_edges():
    a, b = ReplayWindow(), ReplayWindow()
    a.mark_range(5, 0)
    assert a.top == -1 and a.check(5)
    # within one byte, across two, across the ring's end, and longer than the window
    for first, count in ((0, 1), (1, 6), (7, 2), (9, 30), (8 * RING_BYTES - 4, 9), (9 * RING_BYTES, WINDOW + 40)):
        a.mark_range(first, count)
        for n in range(first, first + count):
            b.mark(n)
        assert_same_window(a, b)
