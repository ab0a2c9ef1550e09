"""The data path of one member: TUN packets in, datagrams out, and back.

Sans-IO: the shell passes packets, datagrams, their source endpoint and
``now`` (monotonic seconds) in, and gets datagrams to send / inner packets
for the TUN back. Nothing here raises on bad traffic: every dropped packet
is counted by reason (:mod:`grouptun.core.counters`).

Receive order (PROTOCOL.md 6; everything up to the length check reads the
header only, before any cryptography)::

    length >= 28 -> version/type -> flags -> held epoch -> s >= nonce_start
    -> n <= n_max -> i != own -> body length fits the type -> replay window
    -> open (tag) -> mark window -> plaintext fits us (inner source and
    destination, or the keepalive's receiver index) -> switch/roam/last-seen

A duplicate is dropped at the window; only while another source contends
for its sender's endpoint is it authenticated, as evidence for the roaming
rule (:meth:`Session.count_duplicate`, :mod:`grouptun.core.peers`).

Requests for the control path (:meth:`Session.take_requests`):
``rekey:packets`` (a sender of the current epoch reached
rekey_after_packets), ``rekey:time`` (rekey_after_seconds since install),
``rekey:auth-failures`` (2^20 failed tags in the epoch), ``rekey:exhausted``
(we reached n_max), and ``fetch`` (a packet for the next wire epoch arrived;
at most one per FETCH_INTERVAL seconds). Each rekey reason is raised once
per epoch.

One path: ``seal_run`` / ``open_run`` (:mod:`grouptun.core.run`) seal and
open runs in buffers the shell owns; a lone packet is a run of one.
``on_tun_packet`` / ``on_datagram`` are that for one packet, returning
``bytes`` (one sealed broadcast datagram object is shared by all its
(endpoint, datagram) pairs).
Not thread-safe: one Session is driven by one thread or event loop.
"""

from __future__ import annotations

from typing import Iterable

from grouptun.core import run
from grouptun.core import counters as C
from grouptun.core.epoch import AUTH_FAILURES_REKEY, EpochMaterial, EpochState
from grouptun.core.inner import packed_addresses
from grouptun.core.keyring import Keyring
from grouptun.core.peers import EVERYONE, Endpoint, MemberInfo, Peer, PeerTable
from grouptun.core.wire import BYTE0_DATA, BYTE0_KEEPALIVE, KEEPALIVE_SIZE, OVERHEAD, keepalive_body, wire_epoch
from grouptun.errors import AuthenticationError, EpochRejected

__all__ = ["Endpoint", "EpochMaterial", "MemberInfo", "Session", "FETCH_INTERVAL"]

FETCH_INTERVAL = 5.0
_KEEP_SENT_HISTORY = 8  # dropped epochs whose packets_sent we still report


class Session:
    """One member's data path over every epoch it holds."""

    def __init__(self, own_name: str, keepalive_interval: float = 10.0, run_key=None, policy=None) -> None:
        """``run_key``: the native RunKey type for whole runs (:mod:`grouptun.native`), None: reference path.
        ``policy``: the daemon's :class:`grouptun.core.policy.PolicyEnforcer` (None: no access policy)."""
        if not own_name:
            raise ValueError("own_name must not be empty")
        if not keepalive_interval > 0:
            raise ValueError("keepalive_interval must be > 0")
        self.own_name = own_name
        self.keepalive_interval = float(keepalive_interval)
        self._keyring = Keyring()
        self._peers = PeerTable()
        self.drops = C.DropCounters()
        self._requests: set[str] = set()
        self._last_fetch: float | None = None
        self._sent_history: dict[int, int] = {}
        self._run_key = run_key
        self.policy = policy

    # -- control path ---------------------------------------------------
    def install_epoch(self, material: EpochMaterial, now: float) -> None:
        """Derive the epoch's keys (wiping material.shared_secret and .salt) and hold it.

        Raises EpochRejected ("material": unusable fields or our name not at
        own_index; "epoch": not newer than the current one); state unchanged.
        """
        own = [m for m in material.members if m.index == material.own_index]
        if len(own) != 1 or own[0].name != self.own_name:
            material.wipe_secrets()
            raise EpochRejected("material", f"member {material.own_index} is not {self.own_name!r}")
        current = self._keyring.current
        if current is not None and material.epoch <= current.epoch:
            material.wipe_secrets()
            raise EpochRejected("epoch", f"epoch {material.epoch} is not newer than {current.epoch}")
        try:
            state = EpochState(material, now, self._run_key)
        except (ValueError, TypeError) as exc:
            raise EpochRejected("material", str(exc)) from None
        try:
            dropped = self._keyring.install(state, now)
        except EpochRejected:
            state.wipe()
            raise
        self._peers.sync(material.members, self.own_name)
        state.peers = [None if m.name == self.own_name else self._peers[m.name] for m in state.by_index]
        state.others = [peer for peer in state.peers if peer is not None]
        self._forget(dropped)

    def take_requests(self) -> set[str]:
        requests, self._requests = self._requests, set()
        return requests

    def update_endpoints(self, members: Iterable[MemberInfo]) -> int:
        """Set the UDP endpoints of known members by NAME (archive changed, same epoch); returns how many changed.

        Only endpoints: indices, addresses and keys stay the epoch's. Our own
        name, unknown names and ``endpoint=None`` are ignored. Policy (as
        WireGuard): the caller passes only members whose ARCHIVE endpoint
        changed, so an endpoint learned by roaming (authenticated packets)
        is kept until the configured one changes, and then replaced by it;
        the next authenticated packet from elsewhere roams it again.
        """
        changed = 0
        for member in members:
            peer = self._peers.get(member.name)
            if member.name == self.own_name or peer is None or member.endpoint is None:
                continue
            if peer.endpoint != member.endpoint:
                peer.endpoint = member.endpoint
                changed += 1
        return changed

    def packets_sent(self) -> dict[int, int]:
        sent = dict(self._sent_history)
        for state in self._keyring.held():
            sent[state.epoch] = state.allocator.sent
        return sent

    def close(self) -> None:
        """Wipe every key; the session sends and receives nothing afterwards."""
        self._forget(self._keyring.held())
        self._keyring.close()

    # -- data path (runs: grouptun.core.run) -----------------------------------
    def on_tun_packet(self, packet: bytes | bytearray | memoryview, now: float) -> list[tuple[Endpoint, bytes]]:
        """Seal one IP packet from the TUN (a run of one) for its member(s); [] if dropped."""
        out = bytearray(len(packet) + OVERHEAD + 15)  # 15: suite 2's CTR works in whole blocks
        sealed = self.seal_run(packet, 0, len(packet), 1, len(packet), len(packet), out, now)
        if sealed is None:
            return []
        datagram = bytes(out[:sealed[0]])
        return [(endpoint, datagram) for endpoint in sealed[1]]

    def on_datagram(self, datagram: bytes | bytearray | memoryview, source: Endpoint, now: float) -> bytes | None:
        """The inner IP packet of an authentic, fresh datagram (a run of one), or None (dropped and counted)."""
        out = memoryview(bytearray(len(datagram) + 15))
        packets = run.open_run(self, memoryview(datagram), len(datagram), source, now, out).packets(out)
        return bytes(packets[0]) if packets else None

    def seal_run(self, src, offset: int, stride: int, count: int, size: int, last: int, out,
                 now: float) -> tuple[int, list[Endpoint]] | None:
        """Seal the run of IP packets ``src[offset + j*stride:]`` (``size`` bytes each, the last ``last``),
        all to the destination of the first, into ``out`` (datagram j at ``j * (size + 28)``):
        ``(bytes of datagrams written, endpoints to send them to)``, or None if dropped (counted per packet).

        With an access policy, packets it denies are left out (counted by the policy); the others are
        sealed back to back as a shorter run."""
        routed = self.route(src[offset:offset + (size if count > 1 else last)], now)
        if isinstance(routed, str):
            self.drops[routed] += count
            return None
        state, peers, target = routed
        if self.policy is not None and self.policy.policy is not None and target != EVERYONE:
            kept = self._allowed_only(state, target, src, offset, stride, count, size, last, now)
            if kept is None:
                return None
            src, offset, stride, count, last = kept
        got = run.seal(self, state, BYTE0_DATA, src, offset, stride, count, size, last, out)
        if not got:
            return None
        sent = size * (got - 1) + (last if got == count else size)
        endpoints = []
        for peer in peers:
            peer.tx_packets += got
            peer.tx_bytes += sent
            peer.last_sent = now
            endpoints.append(peer.endpoint)
        return sent + got * OVERHEAD, endpoints

    def _allowed_only(self, state, target: int, src, offset: int, stride: int, count: int, size: int, last: int,
                      now: float) -> tuple | None:
        """The run without the packets the access policy denies towards member ``target``: the same
        arguments, or a compacted copy, or None when it denies them all. (Broadcast and multicast are
        one ciphertext for every member, so only each receiver's inbound check applies to them.)"""
        outbound, epoch = self.policy.outbound, state.epoch
        lengths = [size] * (count - 1) + [last]
        kept = [j for j in range(count)
                if outbound(epoch, target, src[offset + j * stride:offset + j * stride + lengths[j]], now) is None]
        if len(kept) == count:
            return src, offset, stride, count, last
        if not kept:
            return None
        copy = bytearray(size * len(kept))
        for at, j in enumerate(kept):
            copy[at * size:at * size + lengths[j]] = src[offset + j * stride:offset + j * stride + lengths[j]]
        return copy, 0, size, len(kept), lengths[kept[-1]]

    # open_run(data, seg, source, now, out) -> run.Opened: open a run of datagrams from ``source``
    # (:func:`grouptun.core.run.open_run` itself, as a method: no wrapper call per run).
    open_run = run.open_run

    def route(self, packet: bytes | bytearray | memoryview, now: float) -> tuple[EpochState, tuple, int] | str:
        """The sending epoch, the destination peers (with an endpoint) and the target (a member index or
        EVERYONE) of an IP packet from the TUN, or the drop reason (a counter name)."""
        addresses = packed_addresses(packet)
        if addresses is None:
            return C.TX_INVALID
        state = self._keyring.sending(now)
        if state is None:
            return C.TX_NO_EPOCH
        if addresses[0] not in state.own_sources and not state.own_prefixes.holds(addresses[0]):
            return C.TX_SOURCE
        target = state.routes.unicast.get(addresses[1])
        if target is None:
            target = state.routes.lookup(addresses[1])
        if target is None:
            return C.TX_NO_ROUTE
        if target == EVERYONE:
            peers = tuple(peer for peer in state.others if peer.endpoint is not None)
        else:
            peer = state.peers[target]
            peers = (peer,) if peer.endpoint is not None else ()
        return (state, peers, target) if peers else C.TX_NO_ENDPOINT

    def on_timer(self, now: float) -> list[tuple[Endpoint, bytes]]:
        """Switch/forget epochs, raise rekey:time, and send due keepalives."""
        self._forget(self._keyring.advance(now))
        current = self._keyring.current
        if current is not None and now - current.installed_at >= current.rekey_after_seconds:
            self.request_rekey(current, "time")
        state = self._keyring.sending(now)
        if state is None:
            return []
        interval = self.keepalive_interval
        out = []
        for index, peer in enumerate(state.peers):
            if peer is None or peer.endpoint is None or (peer.last_sent is not None
                                                         and now - peer.last_sent < interval):
                continue
            # One seal per receiver: the plaintext names it (PROTOCOL.md 5).
            body, datagram = keepalive_body(index), bytearray(KEEPALIVE_SIZE + 15)
            if not run.seal(self, state, BYTE0_KEEPALIVE, body, 0, len(body), 1, len(body), len(body), datagram):
                break
            datagram = bytes(datagram[:KEEPALIVE_SIZE])
            peer.last_sent = now
            out.append((peer.endpoint, datagram))
        return out

    # -- shared with the run path (core.run) -----------------------------
    def sending_epoch(self, now: float) -> EpochState | None:
        """The epoch new packets are sealed under at ``now``; None before the first install.

        Applies a switch_delay that has passed, as every send does.
        """
        return self._keyring.sending(now)

    def epoch_for_wire(self, wire: int, now: float) -> EpochState | None:
        """The held epoch a header's wire epoch names; None if unknown or the previous one past its grace.

        Safe before authentication: it reads the header value only and changes no state but the
        time-driven switch (a switch_delay that has passed).
        """
        keyring = self._keyring
        state = keyring.by_wire.get(wire)
        if state is not None and state is keyring.previous:
            state = keyring.lookup(wire, now)
        return state

    def previous_epoch(self, now: float) -> EpochState | None:
        """The held epoch older than the sending one, while it is still held (its grace); else None.

        For products of the previous epoch (PROTOCOL.md 3.1: a member holding two epochs can hand out both).
        """
        sending = self._keyring.sending(now)
        older = [state for state in self._keyring.held() if sending is not None and state.epoch < sending.epoch]
        return self.epoch_for_wire(older[0].wire, now) if older else None

    def count_unknown_epoch(self, wire: int, now: float) -> None:
        """Count a datagram of an epoch not held; request ``fetch`` if it names the next wire epoch.

        At most one fetch request per FETCH_INTERVAL seconds, however many such datagrams arrive.
        """
        self.drops[C.UNKNOWN_EPOCH] += 1
        current = self._keyring.current
        if current is None or wire != wire_epoch(current.wire + 1):
            return
        if self._last_fetch is None or now - self._last_fetch >= FETCH_INTERVAL:
            self._last_fetch = now
            self._requests.add("fetch")

    def count_auth_failure(self, state: EpochState) -> None:
        """Count a datagram whose tag did not verify under ``state``; rekey:auth-failures at the limit."""
        self.drops[C.AUTH] += 1
        state.auth_failures += 1
        if state.auth_failures >= AUTH_FAILURES_REKEY:
            self.request_rekey(state, "auth-failures")

    def request_rekey(self, state: EpochState, reason: str) -> None:
        """Ask the control path for a new epoch (``rekey:<reason>``, see :meth:`take_requests`).

        Only while ``state`` is the current epoch (a newer one already replaces the previous), and
        once per reason and epoch.
        """
        if state is self._keyring.current and reason not in state.raised:
            state.raised.add(reason)
            self._requests.add(f"rekey:{reason}")

    def record_authenticated(self, state: EpochState, index: int, n: int, source: Endpoint, now: float) -> Peer:
        """The state changes an authenticated, fresh datagram (the highest n of a batch) makes.

        Call only after the tag verified, the window was marked and the plaintext fit us
        (:meth:`Receiver.misfit`): the current epoch starts
        sending if it had not, rekey:packets at the threshold, the roaming rule hears ``source`` (core.peers) and
        its last_seen becomes ``now``. Returns the sender's Peer: the caller adds the rx counters
        of the inner packets it accepts.
        """
        if state.send_started is None:
            self._keyring.authenticated(state, now)
        if n >= state.rekey_after_packets:
            self.request_rekey(state, "packets")
        peer = state.peers[index]  # index < group_size == len(state.peers), checked from the sequence
        peer.heard(source, now)  # last_seen, and the roaming rule (core.peers)
        return peer

    def count_duplicate(self, state: EpochState, receiver, index: int, datagram: memoryview, sequence: int,
                        source: Endpoint, now: float) -> None:
        """Count a datagram the replay window refused. While another source contends for its sender's
        endpoint, a duplicate from the current or previous endpoint is authenticated (nothing else
        changes) and, if genuine and for us, tells the roaming rule that that path is alive
        (:meth:`grouptun.core.peers.Peer.raced`)."""
        self.drops[C.REPLAY] += 1
        peer = state.peers[index]
        if not peer.contested(source, now):
            return
        scratch = bytearray(len(datagram) + 15)
        try:
            size = receiver.cipher.open_into(datagram, state.iv(sequence), memoryview(scratch))
        except AuthenticationError:
            return  # a forged duplicate proves nothing; its n is marked already, so nothing else to do
        if receiver.misfit(datagram[0], memoryview(scratch)[:size]) is None:
            peer.raced(source, now)

    # -- helpers --------------------------------------------------------
    def _forget(self, dropped: list[EpochState]) -> None:
        if not dropped:
            return
        for state in dropped:
            self._sent_history[state.epoch] = state.allocator.sent
        for epoch in sorted(self._sent_history)[:-_KEEP_SENT_HISTORY]:
            del self._sent_history[epoch]
        keep = {m.name for held in self._keyring.held() for m in held.by_index}
        self._peers.prune(keep)

    # -- status -----------------------------------------------------------
    def status(self, now: float) -> dict:
        """JSON-able view: epochs held, members, drops by reason, pending requests."""
        sending = self._keyring.sending(now)
        epochs = [state.status(now, state is sending) for state in self._keyring.held()]
        members = []
        current = self._keyring.current
        if current is not None:
            for member in current.by_index:
                entry = {"name": member.name, "index": member.index,
                         "addresses": [str(a) for a in member.addresses], "self": member.name == self.own_name}
                if member.prefixes:  # approved subnet routes behind it
                    entry["routes"] = [str(p) for p in member.prefixes]
                peer = self._peers.get(member.name)
                if peer is not None:
                    entry.update(peer.status(now))
                members.append(entry)
        return {"epochs": epochs, "members": members, "drops": self.drops.snapshot(),
                "requests": sorted(self._requests)}

    def peer(self, name: str) -> Peer | None:
        """The per-member state of ``name`` (for tests and the daemon's status)."""
        return self._peers.get(name)
