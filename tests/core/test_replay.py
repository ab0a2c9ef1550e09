"""The replay window against a naive set-based model."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from grouptun.core.replay import RING_BYTES, WINDOW, ReplayWindow
from grouptun.core.sequence import N_MAX


class NaiveWindow:
    """Every n ever marked, and the rule PROTOCOL.md 6 states in words."""

    def __init__(self) -> None:
        self.seen: set[int] = set()
        self.top = -1

    def check(self, n: int) -> bool:
        return n not in self.seen and n > self.top - WINDOW

    def mark(self, n: int) -> None:
        self.seen.add(n)
        self.top = max(self.top, n)


def test_window_is_at_least_8192():
    assert WINDOW >= 8192 and WINDOW == 8 * (RING_BYTES - 1)


def test_empty_window_accepts_anything_once():
    for n in (0, 5, N_MAX):
        window = ReplayWindow()
        assert window.check(n)
        window.mark(n)
        assert not window.check(n)


def test_edges_of_the_window():
    window = ReplayWindow()
    window.mark(100_000)
    assert window.check(100_000 - WINDOW + 1)
    assert not window.check(100_000 - WINDOW)
    assert window.check(100_001)


# Steps: small moves around the top, duplicates of recent values, jumps near
# and beyond the window and the ring size; "forged" steps check but never mark.
step = st.one_of(
    st.tuples(st.just("rel"), st.integers(-40, 40)),
    st.tuples(st.just("rel"), st.sampled_from([-WINDOW - 1, -WINDOW, -WINDOW + 1, WINDOW, 8 * RING_BYTES,
                                              8 * RING_BYTES + 7, 3 * 8 * RING_BYTES, -8 * RING_BYTES + 3])),
    st.tuples(st.just("dup"), st.integers(0, 30)),
    st.tuples(st.just("forge"), st.integers(-50, 50)),
)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 3 * WINDOW), st.lists(step, max_size=120))
def test_agrees_with_naive_model(start, steps):
    real, model, history = ReplayWindow(), NaiveWindow(), []
    for kind, value in steps:
        if kind == "dup" and history:
            n = history[-1 - value % len(history)]
        else:
            n = max(0, (model.top if model.top >= 0 else start) + (value if kind != "dup" else 0))
        expected = model.check(n)
        assert real.check(n) == expected, (n, model.top)
        if expected and kind != "forge":
            real.mark(n)
            model.mark(n)
            history.append(n)
        assert real.top == model.top


@given(st.lists(st.integers(0, 20_000), max_size=200))
def test_random_orders(ns):
    real, model = ReplayWindow(), NaiveWindow()
    for n in ns:
        ok = model.check(n)
        assert real.check(n) == ok
        if ok:
            real.mark(n)
        if ok:
            model.mark(n)
