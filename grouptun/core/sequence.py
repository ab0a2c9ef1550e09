"""Stream sequence numbers (PROTOCOL.md 4).

Member ``i``'s n-th packet of an epoch carries ``s = nonce_start + i + n * N``
(a u64; with nonce_start < 2^32, N <= 65535 and n <= n_max = 2^28 - 1 it
stays below 2^45). A receiver recovers ``i = (s - nonce_start) mod N`` and
``n = (s - nonce_start) div N`` and drops ``s < nonce_start``,
``n > n_max`` and ``i`` equal to its own index.

:class:`SequenceAllocator` hands out the sender's s values in order, raises
the "rekey soon" flag when ``rekey_after_packets`` packets have been sent,
and refuses (SequenceExhausted) after n_max: it never wraps.
"""

from __future__ import annotations

from grouptun.errors import SequenceExhausted

N_MAX = 2**28 - 1
GROUP_SIZE_MIN = 2
GROUP_SIZE_MAX = 65535
NONCE_START_MAX = 2**32 - 1
REKEY_AFTER_PACKETS_MAX = 2**27


def check_parameters(nonce_start: int, group_size: int, index: int | None = None) -> None:
    """ValueError unless nonce_start is a u32, 2 <= N <= 65535 and 0 <= index < N."""
    if not 0 <= nonce_start <= NONCE_START_MAX:
        raise ValueError(f"nonce_start {nonce_start!r} out of u32 range")
    if not GROUP_SIZE_MIN <= group_size <= GROUP_SIZE_MAX:
        raise ValueError(f"group size {group_size!r} outside {GROUP_SIZE_MIN}..{GROUP_SIZE_MAX}")
    if index is not None and not 0 <= index < group_size:
        raise ValueError(f"member index {index!r} outside 0..{group_size - 1}")


def stream_sequence(nonce_start: int, group_size: int, index: int, n: int) -> int:
    """``s`` of member ``index``'s n-th packet; ValueError outside the limits."""
    check_parameters(nonce_start, group_size, index)
    if not 0 <= n <= N_MAX:
        raise ValueError(f"n {n!r} outside 0..n_max ({N_MAX})")
    return nonce_start + index + n * group_size


def recover(nonce_start: int, group_size: int, sequence: int) -> tuple[int, int] | None:
    """``(i, n)`` of a received s, or None if ``s < nonce_start`` or ``n > n_max``.

    The own-index check is the caller's: it knows its index.
    """
    offset = sequence - nonce_start
    if offset < 0:
        return None
    n, index = divmod(offset, group_size)
    if n > N_MAX:
        return None
    return index, n


class SequenceAllocator:
    """The s values of one sender in one epoch, from n = 0 upwards.

    ``rekey_due`` becomes True once ``rekey_after`` packets have been
    allocated; :meth:`next` keeps working until n_max and then raises
    SequenceExhausted on every call (state unchanged).
    """

    __slots__ = ("_next_s", "_step", "_last_s", "next_n", "rekey_after", "rekey_due")

    def __init__(self, nonce_start: int, group_size: int, index: int,
                 rekey_after: int = REKEY_AFTER_PACKETS_MAX, *, start_n: int = 0) -> None:
        """``start_n`` > 0 only for tests that need to reach n_max quickly."""
        check_parameters(nonce_start, group_size, index)
        if not 0 <= start_n <= N_MAX + 1:
            raise ValueError(f"start_n {start_n!r} outside 0..n_max + 1")
        if not 1 <= rekey_after <= REKEY_AFTER_PACKETS_MAX:
            raise ValueError(f"rekey_after_packets {rekey_after!r} outside 1..{REKEY_AFTER_PACKETS_MAX}")
        self._next_s = nonce_start + index + start_n * group_size
        self._step = group_size
        self._last_s = nonce_start + index + N_MAX * group_size
        self.next_n = start_n
        self.rekey_after = rekey_after
        self.rekey_due = start_n >= rekey_after

    @property
    def sent(self) -> int:
        """Packets allocated so far (= the next n)."""
        return self.next_n

    def next(self) -> int:
        """The next s; raises SequenceExhausted after n_max."""
        s = self._next_s
        if s > self._last_s:
            raise SequenceExhausted(f"sender used every n up to n_max ({N_MAX}) in this epoch")
        self._next_s = s + self._step
        self.next_n += 1
        if self.next_n >= self.rekey_after:
            self.rekey_due = True
        return s

    def reserve(self, count: int) -> tuple[int, int]:
        """The next ``count`` s values at once, as ``(first s, how many)``: s, s + N, s + 2N, ...

        Fewer than ``count`` when n_max comes first; SequenceExhausted (state unchanged) when none is left.
        Same effect on the allocator as that many calls of :meth:`next`.
        """
        if count < 1:
            raise ValueError(f"count {count!r} must be positive")
        s = self._next_s
        if s > self._last_s:
            raise SequenceExhausted(f"sender used every n up to n_max ({N_MAX}) in this epoch")
        got = min(count, (self._last_s - s) // self._step + 1)
        self._next_s = s + got * self._step
        self.next_n += got
        if self.next_n >= self.rekey_after:
            self.rekey_due = True
        return s, got
