"""Run-wise sealing and opening with numpy: one cipher call per datagram, nothing else per datagram.

A *run* is k datagrams at a fixed stride in one buffer, all of one size except
a shorter last one: what one TSO/USO super-packet gives once segmented
(sender), and what one UDP GRO receive holds (receiver). The batch path
(:mod:`grouptun.core.batch`) spends most of its time per datagram in Python
around the AES-GCM call (header, IV, window, inner-packet checks); here those
steps run once per run as numpy array operations, and only the AEAD call
itself stays in the loop, on buffer views cut once per layout and reused.

Same rules as the batch path, in the same order (PROTOCOL.md 4-6):

- :class:`RunSealer`: the sequence numbers of a run are reserved in one step
  from the epoch's allocator (:meth:`Sealer.reserve`), so no (epoch, s) is
  ever produced twice; headers and IVs are written for the whole run.
- :class:`RunOpener`: takes a run only when every header is a data packet
  of one held epoch and one sender, every n is above the sender's window
  top and strictly ascending (hence all fresh and distinct), and the
  datagrams are long enough. Anything else returns None having changed
  nothing, and the caller uses :func:`grouptun.core.batch.open_batch`,
  which counts each drop by reason. Each datagram's tag is verified; only
  authenticated n are marked in the window, only authenticated inner
  packets that fit the receiver (``Receiver.misfit``: source, destination)
  are accepted, and the session's state changes (epoch switch, roaming,
  counters) happen once, after the loop, only if something was accepted.

The per-datagram cipher loop has two forms, chosen by the cipher objects
(``cipher.run``, :mod:`grouptun.native`): the native run cipher seals or
opens the whole run, headers and IVs included, in one C call, for both
suites; without it (the reference path) the loop here calls AES-GCM per
datagram, for suite 1 only, since suite 2's HMAC has no such shortcut (its
runs then go through the batch path). Admission, the window and the inner
checks are the same Python for both.

Limits: numpy is optional
(``AVAILABLE``); buffers are bound at construction and must not be resized;
not thread-safe, like the Session.
"""

from __future__ import annotations

from grouptun.core.batch import authenticated
from grouptun.core.inner import MIN_INNER
from grouptun.core.keys import SUITE_AES_GCM
from grouptun.core.sequence import N_MAX
from grouptun.core.wire import BYTE0_DATA, HEADER, HEADER_SIZE, OVERHEAD, TAG_SIZE

try:
    import numpy as np
except ImportError:  # pragma: no cover - exercised where numpy is absent
    np = None

AVAILABLE = np is not None
IV_SIZE = 12
_LAYOUTS_KEPT = 16  # cached view lists (one per stride/size pair seen); cleared beyond this

if AVAILABLE:
    _IV = np.dtype([("hi", ">u4"), ("lo", ">u8")])
    _HEAD_S = np.dtype([("head", ">u4"), ("s", ">u8")])  # byte0, flags, epoch as one word; s
    _HEADER_BYTES = np.dtype("V12")
    # version/IHL, total length, source, destination; version/class, payload length, source, destination
    _INNER_COLUMNS = {4: np.array([0, 2, 3, *range(12, 20)]), 6: np.array([0, 4, 5, *range(8, 40)])}
    _INNER_WIDTH = 40
    assert _HEAD_S.itemsize == HEADER_SIZE and _IV.itemsize == IV_SIZE


def _invalid_tag():
    from cryptography.exceptions import InvalidTag
    return InvalidTag


class _Layout:
    """Views of the IVs, inputs, AADs and outputs of a run's full-size datagrams, cut once."""

    def __init__(self) -> None:
        self._cache: dict[tuple, list] = {}

    def views(self, key: tuple, count: int, cut) -> list:
        views = self._cache.get(key)
        if views is None:
            if len(self._cache) >= _LAYOUTS_KEPT:
                self._cache.clear()
            views = self._cache[key] = []
        while len(views) < count:
            views.append(cut(len(views)))
        return views


class RunSealer:
    """Seals runs of segments from ``source`` (at ``stride``) into ``out`` (at size + 28)."""

    def __init__(self, source: bytearray, out: bytearray, max_run: int = 2048) -> None:
        if not AVAILABLE:
            raise RuntimeError("RunSealer needs numpy")
        self._src, self._out = memoryview(source), memoryview(out)
        self._out_buf = out
        self._ivs = bytearray(IV_SIZE * max_run)
        self._iv_view = memoryview(self._ivs)
        self._iv_rows = np.frombuffer(self._ivs, _IV)
        self._iv_hi = -1
        self._steps = np.arange(max_run, dtype=np.uint64)
        self._layout = _Layout()

    def seal(self, sealer, stride: int, lengths: list[int], offset: int = 0) -> tuple[int, int] | None:
        """Seal the segments ``source[offset + j*stride:][:lengths[j]]``; returns (datagrams, bytes) written
        to ``out``.

        Datagram j starts at ``j * (lengths[0] + 28)``. None (nothing done) unless suite 1, every length
        but the last equal to the first and the last not longer; (0, 0) when n_max is reached (counted
        by the sealer).
        """
        count = len(lengths)
        run = sealer.cipher.run  # the native run cipher (both suites), or None: the numpy loop below (suite 1)
        if not count or (run is None and sealer.suite != SUITE_AES_GCM) or count > len(self._iv_rows):
            return None
        size, last = lengths[0], lengths[-1]
        datagram = size + OVERHEAD
        if last > size or lengths.count(size) != (count if last == size else count - 1) \
                or count * datagram > len(self._out) or offset + (count - 1) * stride + size > len(self._src):
            return None
        first, got = sealer.reserve(count)
        if not got:
            return 0, 0
        if got < count:
            last = size
        sealer.bytes += size * (got - 1) + last
        if run is not None:
            run.seal_run(self._src, offset, stride, self._out, 0, datagram, got, size, last,
                         BYTE0_DATA << 24 | sealer.wire, first, sealer.step)
            return got, (got - 1) * datagram + last + OVERHEAD
        self._headers_and_ivs(sealer, first, got, datagram)
        encrypt = sealer.cipher.aead.encrypt_into
        full = got - 1 if last < size else got
        cut = self._cutter(stride, size, offset)
        for iv, plain, aad, dst in self._layout.views((stride, size, offset), full, cut)[:full]:
            encrypt(iv, plain, aad, dst)
        if full < got:
            j = got - 1
            at, src = j * datagram, offset + j * stride
            encrypt(self._iv_view[j * IV_SIZE:(j + 1) * IV_SIZE], self._src[src:src + last],
                    self._out[at:at + HEADER_SIZE], self._out[at + HEADER_SIZE:at + HEADER_SIZE + last + TAG_SIZE])
        return got, (got - 1) * datagram + last + OVERHEAD

    def _headers_and_ivs(self, sealer, first: int, got: int, datagram: int) -> None:
        s = self._steps[:got] * np.uint64(sealer.step)
        s += np.uint64(first)
        rows = np.ndarray((got,), _HEAD_S, buffer=self._out_buf, strides=(datagram,))
        rows["head"] = BYTE0_DATA << 24 | sealer.wire  # byte0, flags 0, epoch
        rows["s"] = s
        hi, lo = sealer.iv_parts()
        if hi != self._iv_hi:  # the same for every packet of an epoch: filled once
            self._iv_rows["hi"] = self._iv_hi = hi
        self._iv_rows["lo"][:got] = s ^ np.uint64(lo)

    def _cutter(self, stride: int, size: int, offset: int):
        src, out, ivs, datagram = self._src, self._out, self._iv_view, size + OVERHEAD

        def cut(j: int) -> tuple:
            at, base = j * datagram, offset + j * stride
            return (ivs[j * IV_SIZE:(j + 1) * IV_SIZE], src[base:base + size],
                    out[at:at + HEADER_SIZE], out[at + HEADER_SIZE:at + datagram])
        return cut


class OpenedRun:
    """What :meth:`RunOpener.open` accepted: ``views`` is None when all ``count`` inner packets were
    accepted (packet j at ``out[j*stride:][:size]``, the last ``last_size`` long), else the list of
    accepted ones."""

    __slots__ = ("count", "stride", "size", "last_size", "views")

    def __init__(self, count: int, stride: int, size: int, last_size: int, views: list | None) -> None:
        self.count, self.stride, self.size, self.last_size, self.views = count, stride, size, last_size, views

    @property
    def accepted(self) -> int:
        return self.count if self.views is None else len(self.views)

    def all_views(self, out: memoryview) -> list[memoryview]:
        if self.views is not None:
            return self.views
        views = [out[j * self.stride:j * self.stride + self.size] for j in range(self.count - 1)]
        at = (self.count - 1) * self.stride
        views.append(out[at:at + self.last_size])
        return views


class RunOpener:
    """Opens GRO runs from ``data`` (the receive buffer) into ``out`` (plaintext j at ``j * stride``)."""

    def __init__(self, data: bytearray, out: bytearray, max_run: int = 2048) -> None:
        if not AVAILABLE:
            raise RuntimeError("RunOpener needs numpy")
        self._data_buf, self._out_buf = data, out
        self._data, self._out = memoryview(data), memoryview(out)
        self._ivs = bytearray(IV_SIZE * max_run)
        self._iv_view = memoryview(self._ivs)
        self._iv_rows = np.frombuffer(self._ivs, _IV)
        self._iv_hi = -1
        self._steps = np.arange(max_run, dtype=np.uint64)
        self._expected = np.zeros(max_run, _HEAD_S)
        self._expected_head = -1
        self._layout = _Layout()
        self._invalid_tag = _invalid_tag()
        self._ok = bytearray(max_run)  # the native opener's per-datagram verdicts

    def open(self, session, length: int, stride: int, source, now: float) -> OpenedRun | None:
        """Open ``data[:length]`` (datagrams of ``stride`` bytes, the last may be shorter) from ``source``.

        None (nothing changed) when the run is not one clean run of one sender's fresh data packets;
        the caller then hands it to the batch path.
        """
        count = -(-length // stride) if stride > 0 else 0
        last = length - (count - 1) * stride
        if (count < 2 or count > len(self._iv_rows) or stride < OVERHEAD + MIN_INNER
                or last < OVERHEAD + MIN_INNER or len(self._out) < length + 15):
            return None
        byte0, flags, wire, first = HEADER.unpack_from(self._data_buf, 0)
        if byte0 != BYTE0_DATA or flags:
            return None
        state = session.epoch_for_wire(wire, now)
        if state is None or first < state.nonce_start:
            return None
        n, index = divmod(first - state.nonce_start, state.group_size)
        if index == state.own_index or n + count - 1 > N_MAX:
            return None
        receiver = state.receivers.get(index) or state.receiver(index)
        run = receiver.cipher.run  # the native run cipher (both suites), or None: the numpy loop (suite 1)
        if n <= receiver.window.top or (run is None and state.suite != SUITE_AES_GCM):
            return None
        # Every header must be the first one's with s stepping by N: one sender's consecutive packets.
        # (Compared as bytes: one memcmp instead of numpy reductions, which cost more than the data.)
        s = self._steps[:count] * np.uint64(state.group_size)
        s += np.uint64(first)
        expected = self._expected[:count]
        expected["s"] = s
        if self._expected_head != byte0 << 24 | wire:  # once per epoch, for every row
            self._expected["head"] = self._expected_head = byte0 << 24 | wire
        headers = np.ndarray((count,), _HEADER_BYTES, buffer=self._data_buf, strides=(stride,))
        if headers.tobytes() != expected.tobytes():
            return None
        if run is not None:
            ok = self._ok
            good = run.open_run(self._data_buf, 0, stride, self._out_buf, 0, stride, count, stride, last,
                                first, state.group_size, ok)
            failed = [] if good == count else [j for j in range(count) if not ok[j]]
        else:
            self._fill_ivs(state.iv_maker.parts(), s, count)
            failed = self._decrypt(receiver.cipher.aead.decrypt_into, count, stride, last)
        return self._accept(session, state, index, receiver, range(n, n + count), failed, count, stride, last,
                            source, now)

    def _fill_ivs(self, parts: tuple[int, int], s, count: int) -> None:
        hi, lo = parts
        if hi != self._iv_hi:  # the same for every packet of an epoch: filled once
            self._iv_rows["hi"] = self._iv_hi = hi
        self._iv_rows["lo"][:count] = s ^ np.uint64(lo)

    def _decrypt(self, decrypt_into, count: int, stride: int, last: int) -> list[int]:
        """Decrypt every datagram; the positions whose tag did not verify."""
        invalid, failed = self._invalid_tag, []
        views = self._layout.views((stride,), count - 1, self._cutter(stride))
        j = 0
        for iv, packet, aad, dst in views[:count - 1]:
            try:
                decrypt_into(iv, packet, aad, dst)
            except invalid:
                failed.append(j)
            j += 1
        at, data = j * stride, self._data
        try:
            decrypt_into(self._iv_view[j * IV_SIZE:(j + 1) * IV_SIZE], data[at + HEADER_SIZE:at + last],
                         data[at:at + HEADER_SIZE], self._out[at:at + last - OVERHEAD])
        except invalid:
            failed.append(j)
        return failed

    def _accept(self, session, state, index, receiver, ns, failed, count, stride, last, source, now):
        """Window, inner-packet check and session bookkeeping for what authenticated."""
        for _ in failed:
            session.count_auth_failure(state)
        if len(failed) == count:
            return OpenedRun(count, stride, stride - OVERHEAD, last - OVERHEAD, [])
        if failed:
            ok = [j for j in range(count) if j not in failed]
            receiver.window.mark_ascending([ns[j] for j in ok])
        else:
            ok = range(count)
            receiver.window.mark_range(ns.start, count)
        size, last_size = stride - OVERHEAD, last - OVERHEAD
        if not failed and self._inner_uniform(count, stride, size, last_size, receiver):
            run = OpenedRun(count, stride, size, last_size, None)
            accepted, total, highest = count, size * (count - 1) + last_size, ns[count - 1]
        else:
            views, misfit, drops, highest = [], receiver.misfit, session.drops, None
            for j in ok:
                plain = self._out[j * stride:j * stride + (last_size if j == count - 1 else size)]
                reason = misfit(BYTE0_DATA, plain)
                if reason is not None:
                    drops[reason] += 1
                else:
                    views.append(plain)
                    highest = ns[j]
            run = OpenedRun(count, stride, size, last_size, views)
            accepted, total = len(views), sum(map(len, views))
        if accepted:  # only packets that were for us move endpoints, timers and last seen
            authenticated(session, state, index, highest, accepted, total, source, now)
        return run

    def _inner_uniform(self, count: int, stride: int, size: int, last_size: int, receiver) -> bool:
        """True if every inner packet fits ``receiver`` (``Receiver.misfit``, the rule).

        The first and last are checked with the rule; the others must match the first in version,
        header length, total length, source and destination address (so, being of the first's size,
        they fit as it does).
        """
        out, misfit = self._out, receiver.misfit
        if misfit(BYTE0_DATA, out[:size]) is not None \
                or misfit(BYTE0_DATA, out[(count - 1) * stride:(count - 1) * stride + last_size]) is not None:
            return False
        if count <= 2:
            return True
        rows = np.ndarray((count - 1, _INNER_WIDTH), np.uint8, buffer=self._out_buf, strides=(stride, 1))
        part = rows[:, _INNER_COLUMNS[out[0] >> 4]]
        return part.tobytes() == part[0].tobytes() * (count - 1)

    def _cutter(self, stride: int):
        data, out, ivs = self._data, self._out, self._iv_view

        def cut(j: int) -> tuple:
            at = j * stride
            return (ivs[j * IV_SIZE:(j + 1) * IV_SIZE], data[at + HEADER_SIZE:at + stride],
                    data[at:at + HEADER_SIZE], out[at:at + stride - OVERHEAD])
        return cut
