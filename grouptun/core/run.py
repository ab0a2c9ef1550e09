"""The data path's one unit of work, the run: seal and open whole runs of datagrams (PROTOCOL.md 4-6).

A *run* is k packets of one destination (send) or one source (receive) at a fixed stride in one
buffer, all ``size`` bytes long except a last one of ``last`` bytes (not longer). A lone packet is a
run of one. What a TSO super-packet gives once segmented, what the TUN gathers of one flow, and what
one UDP GRO receive holds are all runs; so is a keepalive.

Each rule is written once, here, in terms of :mod:`grouptun.core.wire`:

- send accounting (:func:`seal`): the s values of a run are taken from the epoch's allocator in
  one step before anything is sealed, so no (epoch, s) is ever produced twice, whatever the shell
  later does with the bytes (a dropped GSO send is never re-sealed);
- header admission (:func:`admit`): length, version/type, flags, held epoch, s >= nonce_start,
  n <= n_max, not our own index, body length fitting the type; before any cryptography;
- the receive order (:func:`open_run`): admission, replay window, tag, mark, plaintext fits us
  (``Receiver.misfit``, which calls :func:`grouptun.core.inner.misfit`), then the state changes of
  an authentic packet (:meth:`Session.record_authenticated`), once per sender and run, and last the
  access policy's inbound check (``Session.policy``; a denied packet is counted there); what the
  window refuses goes to :meth:`Session.count_duplicate` (the roaming rule's evidence).

The cipher work is one call per run on ``cipher.run``: the native ``RunKey`` (C, GIL released) or
:class:`grouptun.core.seal.ReferenceRun` (one ``cryptography`` call per datagram), same bytes.

Limits: not thread-safe, like the Session; views returned by :func:`open_run` live until ``out`` is
reused.
"""

from __future__ import annotations

import numpy as np

from grouptun.core import counters as C
from grouptun.core.inner import MIN_INNER
from grouptun.core.sequence import N_MAX
from grouptun.core.wire import BYTE0_DATA, BYTE0_KEEPALIVE, HEADER, KEEPALIVE_SIZE, OVERHEAD
from grouptun.errors import SequenceExhausted

# Runs at least this long have their headers compared with the expected ones in one numpy step and
# their inner packets checked against the first as bytes (below, a Python step per datagram is
# cheaper than numpy's fixed cost: in process, plain drains of K packets, numpy won from K = 12).
VECTOR_MIN = 12
_HEAD_S = np.dtype([("head", ">u4"), ("s", ">u8")])
# version/IHL, total length, source, destination; version/class, payload length, source, destination
_INNER_COLUMNS = {4: np.array([0, 2, 3, *range(12, 20)]), 6: np.array([0, 4, 5, *range(8, 40)])}
_STEPS = np.arange(4096, dtype=np.uint64)


def seal(session, state, byte0: int, src, offset: int, stride: int, count: int, size: int, last: int,
         out) -> int:
    """Seal packets ``src[offset + j*stride:]`` into datagrams at ``out[j * (size + 28):]``; how many.

    ``out`` needs ``(count - 1) * (size + 28) + last + 28`` bytes, 15 more for suite 2's CTR.
    The send accounting: the s values of the run are taken from the epoch's allocator in one step
    before anything is sealed; packets refused at n_max are dropped and counted, and the rekey
    requests raised here.
    """
    allocator = state.allocator
    try:
        first, got = allocator.reserve(count)
    except SequenceExhausted:
        first, got = 0, 0
    if got < count:
        session.drops[C.TX_EXHAUSTED] += count - got
        session.request_rekey(state, "exhausted")
    if allocator.rekey_due:
        session.request_rekey(state, "packets")
    if got:
        state.sender.run.seal_run(src, offset, stride, out, 0, size + OVERHEAD, got, size,
                                  last if got == count else size, byte0 << 24 | state.wire, first,
                                  state.group_size)
    return got


def admit(session, datagram, now: float) -> tuple | None:
    """The header checks of PROTOCOL.md 6: ``(state, byte0, n, sender index)``, or None (dropped, counted)."""
    drops = session.drops
    size = len(datagram)
    if size < OVERHEAD:
        drops[C.SHORT] += 1
        return None
    byte0, flags, wire, sequence = HEADER.unpack_from(datagram, 0)
    if byte0 != BYTE0_DATA and byte0 != BYTE0_KEEPALIVE:
        drops[C.VERSION_TYPE] += 1
        return None
    if flags:
        drops[C.FLAGS] += 1
        return None
    state = session.epoch_for_wire(wire, now)
    if state is None:
        session.count_unknown_epoch(wire, now)
        return None
    offset = sequence - state.nonce_start
    n, index = divmod(offset, state.group_size)
    if offset < 0 or n > N_MAX:
        drops[C.SEQUENCE] += 1
        return None
    if index == state.own_index:
        drops[C.OWN_INDEX] += 1
        return None
    if (size < OVERHEAD + MIN_INNER) if byte0 == BYTE0_DATA else (size != KEEPALIVE_SIZE):
        drops[C.LENGTH] += 1
        return None
    return state, byte0, n, index


class Opened:
    """What :func:`open_run` accepted: ``views`` is None when all ``count`` inner packets were (packet
    j at ``out[j*stride:][:size]``, the last ``last`` long), else the list of accepted ones."""

    __slots__ = ("count", "stride", "size", "last", "views")

    def __init__(self, count: int, stride: int, size: int, last: int, views: list | None) -> None:
        self.count, self.stride, self.size, self.last, self.views = count, stride, size, last, views

    def packets(self, out: bytearray | memoryview) -> list[memoryview]:
        if self.views is not None:
            return self.views
        out, stride, size = memoryview(out), self.stride, self.size
        views = [out[j * stride:j * stride + size] for j in range(self.count - 1)]
        at = (self.count - 1) * stride
        views.append(out[at:at + self.last])
        return views


def open_run(session, data: memoryview, seg: int, source, now: float, out: memoryview) -> Opened:
    """Open the datagrams ``data[k*seg:][:seg]`` (the last may be shorter) from ``source``.

    Plaintext k goes to ``out[k*seg:]`` (``out`` at least ``len(data) + 15`` bytes). Everything not
    accepted is dropped and counted by reason.
    """
    total = len(data)
    if seg <= 0 or seg >= total:  # one datagram (a lone packet: the idle round trip): nothing to group
        first = admit(session, data, now)
        if first is None:
            return Opened(1, total, total - OVERHEAD, total - OVERHEAD, [])
        return _open_span(session, data, total, 1, total, out, first, 0, 1, source, now, True)
    count = -(-total // seg)
    last = total - (count - 1) * seg
    first = admit(session, data[:seg], now)
    if first is not None and (count >= VECTOR_MIN and first[1] == BYTE0_DATA
                              and last >= OVERHEAD + MIN_INNER and _one_stream(data, seg, count, *first)):
        return _open_span(session, data, seg, count, last, out, first, 0, count, source, now, True)
    views = []
    for admitted, j, k in _spans(session, data, seg, count, first, now):
        views += _open_span(session, data, seg, count, last, out, admitted, j, k, source, now, False).views
    return Opened(count, seg, seg - OVERHEAD, last - OVERHEAD, views)


def _one_stream(data, seg: int, count: int, state, byte0: int, n: int, index: int) -> bool:
    """Whether every header is the first's with s stepping by N: one sender's consecutive data packets,
    so that each passes :func:`admit` as the first did (compared as bytes: one memcmp)."""
    if n + count - 1 > N_MAX:
        return False
    expected = np.empty(count, _HEAD_S)
    expected["head"] = BYTE0_DATA << 24 | state.wire
    expected["s"] = _STEPS[:count] * np.uint64(state.group_size) + np.uint64(state.nonce_start + n * state.group_size
                                                                             + index)
    headers = np.ndarray((count,), np.dtype("V12"), buffer=data, strides=(seg,))
    return headers.tobytes() == expected.tobytes()


def _spans(session, data, seg: int, count: int, first, now: float) -> list:
    """Each datagram admitted on its own; consecutive ones of one sender, type and epoch with n stepping
    by one become one span ``(admitted, first position, length)``."""
    spans: list = []
    for j in range(count):
        got = first if j == 0 else admit(session, data[j * seg:(j + 1) * seg], now)
        if got is None:
            continue
        if spans:
            (state, byte0, n, index), at, k = spans[-1]
            if at + k == j and got[0] is state and got[1] == byte0 and got[3] == index and got[2] == n + k:
                spans[-1] = (spans[-1][0], at, k + 1)
                continue
        spans.append((got, j, 1))
    return spans


def _open_span(session, data, seg, count, last, out, admitted, j, k, source, now, whole) -> Opened:
    """Window, tag, mark and inner check for datagrams j..j+k-1 (admitted: n, n+1, ... of one sender)."""
    state, byte0, n, index = admitted
    receiver = state.receivers.get(index) or state.receiver(index)
    window = receiver.window
    if n > window.top:
        fresh = range(k)
    else:
        fresh, whole = [i for i in range(k) if window.check(n + i)], False
        if len(fresh) < k:
            _count_duplicates(session, state, receiver, data, seg, count, last, j, k, n, index, fresh, source, now)
    whole = whole and byte0 == BYTE0_DATA
    ok, cipher = bytearray(k), receiver.cipher.run
    if fresh.__class__ is range:  # all of them: one call (a lone packet's case)
        at = j * seg
        good = cipher.open_run(data, at, seg, out, at, seg, k, seg, last if j + k == count else seg,
                               state.nonce_start + n * state.group_size + index, state.group_size, ok)
    else:
        good = _authenticate(cipher, data, seg, count, last, out, j, n, index, state, fresh, ok)
    size, last_size = seg - OVERHEAD, last - OVERHEAD
    if good < len(fresh):
        for _ in range(len(fresh) - good):
            session.count_auth_failure(state)
        whole = False
    if whole and k > 1:
        window.mark_range(n, k)
    else:
        for i in range(k):
            if ok[i]:
                window.mark(n + i)
    policy = session.policy
    if policy is not None and policy.policy is None:
        policy = None  # no access policy in the archive: nothing to ask per packet
    # A run of one takes the loop below: one misfit call, and its view listed once for the device.
    if whole and k > 1 and policy is None and _all_fit(receiver, out, seg, count, size, last_size):
        views, accepted, highest, total = None, k, n + k - 1, size * (k - 1) + last_size
    else:
        views, highest, misfit, drops = [], -1, receiver.misfit, session.drops
        for i in range(k):
            if not ok[i]:
                continue
            at = (j + i) * seg
            plain = out[at:at + (last_size if j + i == count - 1 else size)]
            reason = misfit(byte0, plain)
            if reason is not None:
                drops[reason] += 1
                continue
            highest = n + i  # authentic and for us: it moves endpoints and timers even if the policy denies it
            if byte0 == BYTE0_DATA and (policy is None or policy.inbound(state.epoch, index, plain, now) is None):
                views.append(plain)
        accepted, total = len(views), sum(map(len, views))
    if highest >= 0:  # only what authenticated and was for us moves endpoints, timers and counters
        peer = session.record_authenticated(state, index, highest, source, now)
        peer.rx_packets += accepted
        peer.rx_bytes += total
    return Opened(count, seg, size, last_size, views)


def _count_duplicates(session, state, receiver, data, seg, count, last, j, k, n, index, fresh, source, now) -> None:
    """Hand each datagram of the span the window refused to :meth:`Session.count_duplicate` (counted;
    evidence for the roaming rule while its sender's endpoint is contested)."""
    step, first_s, keep = state.group_size, state.nonce_start + n * state.group_size + index, set(fresh)
    for i in range(k):
        if i not in keep:
            at = (j + i) * seg
            datagram = data[at:at + (last if j + i == count - 1 else seg)]
            session.count_duplicate(state, receiver, index, datagram, first_s + i * step, source, now)


def _authenticate(run, data, seg, count, last, out, j, n, index, state, fresh, ok) -> int:
    """Open the fresh datagrams ``fresh`` (a list: the window refused some) of a span, one run call per
    stretch of consecutive ones; ok[i] = 1 for each that authenticated; how many did."""
    step, first_s = state.group_size, state.nonce_start + n * state.group_size + index
    good, i = 0, 0
    while i < len(fresh):
        start = end = fresh[i]
        while i + 1 < len(fresh) and fresh[i + 1] == end + 1:
            i, end = i + 1, end + 1
        i += 1
        at, k = (j + start) * seg, end - start + 1
        verdicts = bytearray(k)
        good += run.open_run(data, at, seg, out, at, seg, k, seg, last if j + end == count - 1 else seg,
                             first_s + start * step, step, verdicts)
        ok[start:start + k] = verdicts
    return good


def _all_fit(receiver, out, seg: int, count: int, size: int, last_size: int) -> bool:
    """True if every inner packet fits ``receiver`` (``Receiver.misfit``, the rule): the first and last
    are checked with it; the others must equal the first in version, header length, total length,
    source and destination (so, being of its size, they fit as it does)."""
    misfit = receiver.misfit
    if count == 1:
        return misfit(BYTE0_DATA, out[:last_size]) is None
    if misfit(BYTE0_DATA, out[:size]) is not None \
            or misfit(BYTE0_DATA, out[(count - 1) * seg:(count - 1) * seg + last_size]) is not None:
        return False
    if count <= 2:
        return True
    if count < VECTOR_MIN:
        return all(misfit(BYTE0_DATA, out[j * seg:j * seg + size]) is None for j in range(1, count - 1))
    rows = np.ndarray((count - 1, 40), np.uint8, buffer=out, strides=(seg, 1))
    part = rows[:, _INNER_COLUMNS[out[0] >> 4]]
    return part.tobytes() == part[0].tobytes() * (count - 1)
