"""Batch forms of the session's data path, for a shell with kernel offloads.

Same rules as :meth:`Session.on_tun_packet` / :meth:`Session.on_datagram`
(PROTOCOL.md 4-6), cheaper per packet:

- :class:`Sealer`: what one routing decision gives (epoch, sender key,
  sequence allocator, destination peers). The shell routes ONE packet
  (e.g. the header of a TSO super-packet), then seals every segment of it
  with :meth:`Sealer.seal_into` straight into its send buffer. Each call
  takes the next s from the epoch's allocator, so no (epoch, s) is ever
  produced twice, whatever the shell later does with the bytes.
  Per-peer tx counters are updated once, in :meth:`Sealer.finish`.
- :func:`open_batch`: a run of datagrams from one source (e.g. one UDP GRO
  receive), each checked exactly like ``on_datagram`` (header, epoch,
  sequence, length, replay window BEFORE the cipher, window marked only
  after the tag verified, plaintext checked with ``Receiver.misfit``),
  plaintexts written into the caller's buffer. What changes state beyond
  the window (epoch switch, rekey request, roaming, last_seen, rx counters)
  is done once per (epoch, sender) after the loop, and only for senders of
  which at least one packet authenticated and was for us: a forged packet,
  or one copied from another member's traffic, in a batch moves nothing.

Limits: the segments handed to one Sealer must carry the addresses of the
packet it was routed with (segmentation copies the IP header, so they do);
not thread-safe, like the Session.
"""

from __future__ import annotations

from grouptun.core import counters as C
from grouptun.core.inner import MIN_INNER
from grouptun.core.sequence import N_MAX
from grouptun.core.wire import BYTE0_DATA, BYTE0_KEEPALIVE, HEADER, HEADER_SIZE, KEEPALIVE_SIZE, OVERHEAD
from grouptun.errors import AuthenticationError, SequenceExhausted



class Sealer:
    """Seals data packets of one epoch for a fixed set of peers (one routing decision)."""

    __slots__ = ("_session", "_state", "_allocator", "_cipher", "_iv", "_wire", "peers", "endpoints",
                 "packets", "bytes")

    def __init__(self, session, state, peers) -> None:
        self._session = session
        self._state = state
        self._allocator = state.allocator
        self._cipher = state.sender
        self._iv = state.iv
        self._wire = state.wire
        self.peers = peers
        self.endpoints = tuple(peer.endpoint for peer in peers)
        self.packets = self.bytes = 0

    def seal_into(self, plain: bytes | bytearray | memoryview, out: memoryview, off: int) -> int:
        """Write ``header || ciphertext || tag`` at ``out[off:]``; its length, or 0 (n_max: dropped, counted).

        ``out`` needs ``len(plain) + 28`` bytes at ``off`` (plus 15 more for suite 2's CTR).
        """
        sequence = self._session.next_sequence(self._state)
        if sequence is None:
            return 0
        HEADER.pack_into(out, off, BYTE0_DATA, 0, self._wire, sequence)
        self.packets += 1
        self.bytes += len(plain)
        return self._cipher.seal_at(out, off, self._iv(sequence), plain)

    @property
    def suite(self) -> int:
        return self._cipher.suite

    @property
    def cipher(self):
        return self._cipher

    @property
    def wire(self) -> int:
        return self._wire

    @property
    def step(self) -> int:
        """N: the distance between two of this sender's s values."""
        return self._state.group_size

    def iv_parts(self) -> tuple[int, int]:
        return self._state.iv_maker.parts()

    def reserve(self, count: int) -> tuple[int, int]:
        """Take up to ``count`` sequence numbers at once, as ``(first s, how many)``; s steps by :attr:`step`.

        ``(0, 0)`` when n_max is reached (dropped and counted, rekey requested); packets beyond n_max
        in a short grant are counted the same way. The caller adds the plaintext bytes of the packets
        granted to :attr:`bytes`.
        """
        allocator = self._allocator
        try:
            first, got = allocator.reserve(count)
        except SequenceExhausted:
            self._session.drops[C.TX_EXHAUSTED] += count
            self._session.request_rekey(self._state, "exhausted")
            return 0, 0
        if got < count:  # as seal_into at the first packet refused
            self._session.drops[C.TX_EXHAUSTED] += count - got
            self._session.request_rekey(self._state, "exhausted")
        if allocator.rekey_due:
            self._session.request_rekey(self._state, "packets")
        self.packets += got
        return first, got

    def finish(self, now: float) -> None:
        """Account the packets sealed so far to every destination peer; resets the counts."""
        if not self.packets:
            return
        for peer in self.peers:
            peer.tx_packets += self.packets
            peer.tx_bytes += self.bytes
            peer.last_sent = now
        self.packets = self.bytes = 0


def route(session, packet: bytes | bytearray | memoryview, now: float) -> Sealer | None:
    """A Sealer for ``packet``'s destination, or None (dropped and counted as on_tun_packet does)."""
    routed = session.route(packet, now)
    return None if routed is None else Sealer(session, *routed)


def open_batch(session, data: memoryview, seg: int, source, now: float, out: memoryview) -> list[memoryview]:
    """Open the datagrams ``data[k*seg : (k+1)*seg]`` (the last may be shorter) from ``source``.

    Plaintext k is decrypted to ``out[k*seg:]`` (``out`` at least ``len(data) + 15`` bytes); returns views
    of the accepted inner packets, in order (valid until ``out`` is reused). Everything else is dropped
    and counted by reason. The epoch and sender of the previous datagram are remembered across the
    loop (a GRO batch comes from one sender), so per datagram only the header, the window, the IV and
    the cipher run.
    """
    drops = session.drops
    accepted: list[memoryview] = []
    touched: dict[tuple[int, int], list] = {}  # (id(state), index) -> [state, index, highest n, packets, bytes]
    total = len(data)
    if not total:
        drops[C.SHORT] += 1
        return accepted
    if seg <= 0:
        seg = total
    last_wire = last_index = -1
    state = receiver = mark = None
    for off in range(0, total, seg):
        end = off + seg if off + seg < total else total
        size = end - off
        if size < OVERHEAD:
            drops[C.SHORT] += 1
            continue
        byte0, flags, wire, sequence = HEADER.unpack_from(data, off)
        if byte0 != BYTE0_DATA and byte0 != BYTE0_KEEPALIVE:
            drops[C.VERSION_TYPE] += 1
            continue
        if flags:
            drops[C.FLAGS] += 1
            continue
        if wire != last_wire:
            state = session.epoch_for_wire(wire, now)  # same `now` for the whole batch: same answer
            if state is None:
                session.count_unknown_epoch(wire, now)
                last_wire = -1
                continue
            last_wire, last_index = wire, -1
            nonce_start, group_size, own_index, iv = state.nonce_start, state.group_size, state.own_index, state.iv
        offset = sequence - nonce_start
        if offset < 0:
            drops[C.SEQUENCE] += 1
            continue
        n, index = divmod(offset, group_size)
        if n > N_MAX:
            drops[C.SEQUENCE] += 1
            continue
        if index == own_index:
            drops[C.OWN_INDEX] += 1
            continue
        if (size < OVERHEAD + MIN_INNER) if byte0 == BYTE0_DATA else (size != KEEPALIVE_SIZE):
            drops[C.LENGTH] += 1
            continue
        if index != last_index:
            receiver = state.receivers.get(index) or state.receiver(index)
            window, open_into, misfit = receiver.window, receiver.cipher.open_into, receiver.misfit
            last_index, mark = index, touched.get((id(state), index))
        if not window.check(n):
            session.count_duplicate(state, receiver, index, data[off:end], sequence, source, now)
            continue
        try:
            plain_len = open_into(data[off:end], iv(sequence), out[off:])
        except AuthenticationError:
            session.count_auth_failure(state)
            continue
        window.mark(n)
        plain = out[off:off + plain_len]
        reason = misfit(byte0, plain)
        if reason is not None:
            drops[reason] += 1
            continue
        if mark is None:
            mark = touched[(id(state), index)] = [state, index, n, 0, 0]
        elif n > mark[2]:
            mark[2] = n
        if byte0 == BYTE0_KEEPALIVE:
            continue
        mark[3] += 1
        mark[4] += plain_len
        accepted.append(plain)
    for state, index, highest, packets, size in touched.values():
        authenticated(session, state, index, highest, packets, size, source, now)
    return accepted


def authenticated(session, state, index: int, highest: int, packets: int, size: int, source, now: float) -> None:
    """The state changes of on_datagram after authentication, once per (epoch, sender) of a batch."""
    peer = session.record_authenticated(state, index, highest, source, now)
    peer.rx_packets += packets
    peer.rx_bytes += size


# Re-exported for the shell's buffer sizing.
__all__ = ["HEADER_SIZE", "OVERHEAD", "Sealer", "open_batch", "route"]
