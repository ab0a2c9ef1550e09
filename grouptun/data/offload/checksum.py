"""Internet checksum (RFC 1071) at C speed.

The ones'-complement sum of 16-bit big-endian words equals the value of the
data read as one big-endian integer, modulo 0xFFFF (because 2**16 == 1 mod
0xFFFF), with one corner: ones'-complement addition of anything non-zero never
gives +0, so a non-zero input whose residue is 0 folds to 0xFFFF. Odd lengths
are padded with one zero byte at the end (a shift by 8). ``int.from_bytes``
and ``%`` run in C, so one call costs about as much as one AES-GCM call on a
1400-byte packet instead of ~100 us for a Python loop.

Limits: ``data`` must be a bytes-like object; sums are returned folded to
16 bits; the caller complements (``checksum``) or not (partial sums for
``CHECKSUM_PARTIAL``).
"""

from __future__ import annotations

import sys

_M = 0xFFFF


def ones_sum(data: bytes | bytearray | memoryview, initial: int = 0) -> int:
    """Folded 16-bit ones'-complement sum of ``data`` plus ``initial`` (0..0xFFFF).

    Result is in 0..0xFFFF; it is 0 only if the data and ``initial`` are all zero.
    """
    value = int.from_bytes(data, "big")
    # Reduce first: a bigint add or shift would copy the whole number again.
    folded = value % _M
    if len(data) & 1:
        folded = (folded << 8) % _M  # the zero pad byte: times 256
    folded = (folded + initial) % _M
    if folded == 0 and (value or initial):
        return _M
    return folded


def checksum(data: bytes | bytearray | memoryview, initial: int = 0) -> int:
    """The value to store in a checksum field: the complement of ``ones_sum``."""
    return ~ones_sum(data, initial) & _M


def fold_add(*sums: int) -> int:
    """Ones'-complement addition of already folded (or small) partial sums."""
    total = sum(sums)
    folded = total % _M
    if folded == 0 and total:
        return _M
    return folded


try:  # optional: one vectorised pass for a whole batch of equal-sized segments
    import numpy as _np
except ImportError:  # pragma: no cover - exercised where numpy is absent
    _np = None

HAVE_NUMPY = _np is not None
_SWAP = sys.byteorder == "little"


def strided_ones_sums(buf: bytearray | memoryview, first: int, stride: int, count: int, length: int,
                      use_numpy: bool | None = None) -> list[int]:
    """Folded sums of ``count`` regions ``buf[first + k*stride : first + k*stride + length]``.

    With numpy (and an even ``first`` and ``stride``) all regions are summed in
    one vectorised call, in host byte order, and each result swapped back
    (RFC 1071: the folded sum commutes with byte swapping); otherwise one
    ``ones_sum`` per region. Same results either way.
    """
    if use_numpy is None:
        use_numpy = HAVE_NUMPY and count >= 4
    if not use_numpy or first & 1 or stride & 1 or count == 0 or length == 0:
        mv = memoryview(buf)
        return [ones_sum(mv[first + k * stride:first + k * stride + length]) for k in range(count)]
    if first + (count - 1) * stride + length > len(buf):
        raise ValueError("regions run past the buffer")
    strided = _np.lib.stride_tricks.as_strided
    even = length & ~1
    if even:
        flat = _np.frombuffer(buf, dtype="=u2", offset=first, count=((count - 1) * stride + even) // 2)
        totals = strided(flat, shape=(count, even // 2), strides=(stride, 2)).sum(axis=1, dtype=_np.uint64)
    else:
        totals = _np.zeros(count, dtype=_np.uint64)
    if length & 1:
        raw = _np.frombuffer(buf, dtype=_np.uint8, offset=first + length - 1, count=(count - 1) * stride + 1)
        tail = strided(raw, shape=(count,), strides=(stride,)).astype(_np.uint64)
        totals += tail if _SWAP else tail << _np.uint64(8)
    out = []
    for t in totals.tolist():
        f = t % _M
        if f == 0 and t:
            f = _M
        out.append(((f & 0xFF) << 8 | f >> 8) if _SWAP else f)
    return out


def complete_rows(buf: bytearray, at: int, stride: int, rows: int, span: int, field: int, extra: int = 0,
                  zero_as_ffff: bool = True) -> None:
    """Write the checksums of ``rows`` regions of ``span`` bytes at ``buf[at + j*stride:]`` (numpy, one pass):
    the complement of each region's ones'-complement sum plus ``extra`` (a folded sum), stored at
    ``field`` bytes into the region. The field's present content is summed with it (zero, or a
    partial pseudo-header sum). ``zero_as_ffff``: write 0 as 0xFFFF (UDP: 0 means "no checksum").

    Sums are taken in host byte order and written through a host-order view, so no value is ever
    byte-swapped but ``extra``: swapping the two bytes of every word multiplies the ones'-complement
    sum by 256 mod 0xFFFF (RFC 1071). ``(t - 1) % 0xFFFF + 1`` is the end-around-carry fold of t > 0
    (each region's sum with ``extra`` must not be 0: a pseudo-header is in it); regions of at most
    65534 bytes cannot overflow the 32-bit sums.
    """
    sums = _np.add.reduce(_np.ndarray((rows, span // 2), "=u2", buffer=buf, offset=at, strides=(stride, 2)),
                          axis=1, dtype=_np.uint32)
    if span & 1:  # the pad byte after the last one
        tail = _np.ndarray((rows,), _np.uint8, buffer=buf, offset=at + span - 1, strides=(stride,))
        sums += tail.astype(_np.uint32) if _SWAP else tail.astype(_np.uint32) << 8
    if extra:
        sums += (extra & 0xFF) << 8 | extra >> 8 if _SWAP else extra
    sums -= 1
    sums %= _M
    checks = _np.subtract(0xFFFE, sums, out=sums)  # 0xFFFF - fold, fold = sums + 1
    if zero_as_ffff:
        checks[checks == 0] = _M  # 0 and 0xFFFF are both swap-invariant
    _np.ndarray((rows,), "=u2", buffer=buf, offset=at + field, strides=(stride,))[:] = checks
