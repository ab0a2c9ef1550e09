"""Anti-replay sliding window over a sender's packet numbers n (RFC 6479 style).

One :class:`ReplayWindow` per (epoch, sender). The receiver calls
:meth:`ReplayWindow.check` before any decryption and :meth:`ReplayWindow.mark`
only after the tag verified, so a forged packet never moves the window.

The bitmap is a ring of ``RING_BYTES`` bytes indexed by ``n``: bit
``n & 7`` of byte ``(n >> 3) mod RING_BYTES``. Moving the top forward
clears the bytes it passes (one slice assignment, however far it jumps),
never shifts the bitmap. The byte holding the top is shared with numbers
above it, so the window guaranteed is ``WINDOW = 8 * (RING_BYTES - 1)``
numbers below the top (16376 >= the 8192 PROTOCOL.md asks for).

Limits: n must be a non-negative int (the sequence code bounds it by
n_max); anything more than ``WINDOW`` below the highest marked n is
refused as too old; the window starts empty and accepts any n first.
Memory: ``RING_BYTES`` bytes per active sender.
"""

from __future__ import annotations

RING_BYTES = 2048
_RING_MASK = RING_BYTES - 1
WINDOW = 8 * (RING_BYTES - 1)  # 16376
_FULL = b"\xff" * RING_BYTES


class ReplayWindow:
    """Which n of one sender have been accepted, for the last WINDOW values."""

    __slots__ = ("top", "_ring")

    def __init__(self) -> None:
        self.top = -1  # highest n marked; -1 = empty
        self._ring = bytearray(RING_BYTES)

    def check(self, n: int) -> bool:
        """True if n is new: above the top, or inside the window and unmarked."""
        top = self.top
        if n > top:
            return True
        if top - n >= WINDOW:
            return False
        return not self._ring[(n >> 3) & _RING_MASK] & (1 << (n & 7))

    def mark(self, n: int) -> None:
        """Record n as received (call after authentication, with check(n) True)."""
        top = self.top
        ring = self._ring
        if n > top:
            first = (top >> 3) + 1 if top >= 0 else 0  # first byte not yet in use
            last = n >> 3
            if last - first + 1 >= RING_BYTES:
                ring[:] = bytes(RING_BYTES)
            elif last >= first:
                start, end = first & _RING_MASK, last & _RING_MASK
                if start <= end:
                    ring[start : end + 1] = bytes(end + 1 - start)
                else:  # wraps around the ring end
                    ring[start:] = bytes(RING_BYTES - start)
                    ring[: end + 1] = bytes(end + 1)
            self.top = n
        ring[(n >> 3) & _RING_MASK] |= 1 << (n & 7)

    def mark_range(self, first: int, count: int) -> None:
        """mark() for each of first .. first+count-1, all above the top (a whole run that authenticated):
        whole bytes at a time instead of a bit per number."""
        if count <= 0:
            return
        last = first + count - 1
        self.mark(last)
        low = max(first, last - WINDOW + 1)  # older ones fell out of the window, as with mark() one by one
        high = last - 1
        if low > high:
            return
        ring = self._ring
        b0, b1 = low >> 3, high >> 3
        head = (0xFF << (low & 7)) & 0xFF
        tail = (1 << ((high & 7) + 1)) - 1
        if b0 == b1:
            ring[b0 & _RING_MASK] |= head & tail
            return
        ring[b0 & _RING_MASK] |= head
        ring[b1 & _RING_MASK] |= tail
        if b1 - b0 < 2:
            return
        start, end = (b0 + 1) & _RING_MASK, (b1 - 1) & _RING_MASK  # the full bytes between
        if start <= end:
            ring[start:end + 1] = _FULL[:end + 1 - start]
        else:  # wraps around the ring end
            ring[start:] = _FULL[:RING_BYTES - start]
            ring[:end + 1] = _FULL[:end + 1]
