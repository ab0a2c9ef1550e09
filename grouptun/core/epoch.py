"""One installed epoch: its keys, member table, routes, sequence and replay state.

:class:`EpochMaterial` is what the control path hands the core after the
acceptance order (:mod:`grouptun.core.accept`) passed. :class:`EpochState`
derives every key from it (into the material's ``secrets``, the memory SS
and salt came from), WIPES the material's shared secret and salt, and
holds what the data path needs per epoch: per-sender :class:`Receiver`
objects (cipher + replay window + what an authenticated plaintext from that
sender must be, :meth:`Receiver.misfit`), made on the first packet from
that sender, and our own sender cipher and allocator.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from grouptun.core import counters as C
from grouptun.core.inner import NO_PREFIXES, PrefixMap, misfit
from grouptun.core.keys import GROUP_ID_SIZE, HEAP, SUITES, EpochKeys, SecretBuffer, SecretMemory
from grouptun.core.peers import MemberInfo, Network, Routes
from grouptun.core.replay import ReplayWindow
from grouptun.core.seal import IvMaker, PacketCipher, sender_cipher
from grouptun.core.sequence import REKEY_AFTER_PACKETS_MAX, SequenceAllocator, check_parameters
from grouptun.core.wire import BYTE0_KEEPALIVE, keepalive_body, wire_epoch

AUTH_FAILURES_REKEY = 2**20


@dataclass
class EpochMaterial:
    group_id: bytes
    epoch: int
    suite: int
    nonce_start: int
    group_size: int
    own_index: int
    members: tuple[MemberInfo, ...]
    shared_secret: SecretBuffer
    salt: SecretBuffer
    switch_delay: float = 2.0
    grace: float = 30.0
    rekey_after_packets: int = 2**27
    rekey_after_seconds: float = 600.0
    # Overlay networks (archive cidr/cidr6): their IPv4 broadcast addresses
    # are routed to every member. Optional; added beyond contracts.md.
    networks: tuple[Network, ...] = ()
    # Where shared_secret and salt live, and where the epoch's keys are derived into.
    secrets: SecretMemory = HEAP

    def wipe_secrets(self) -> None:
        """Overwrite SS and salt and give their buffers back; afterwards both are empty (idempotent)."""
        for secret in (self.shared_secret, self.salt):
            if len(secret):
                self.secrets.free(secret)
        self.shared_secret = self.salt = bytearray()


def validate(material: EpochMaterial) -> None:
    """ValueError naming the field unless the material is usable."""
    if material.suite not in SUITES:
        raise ValueError(f"suite {material.suite!r} unknown")
    if len(material.group_id) != GROUP_ID_SIZE:
        raise ValueError("group_id must be 16 bytes")
    if not 0 <= material.epoch < 2**32:
        raise ValueError(f"epoch {material.epoch!r} out of u32 range")
    check_parameters(material.nonce_start, material.group_size, material.own_index)
    indices = sorted(member.index for member in material.members)
    if indices != list(range(material.group_size)):
        raise ValueError("member indices are not a permutation of 0..N-1")
    names = {member.name for member in material.members}
    if len(names) != len(material.members):
        raise ValueError("member names are not unique")
    seen: set = set()
    for member in material.members:
        for address in member.addresses:
            if address in seen:
                raise ValueError(f"overlay address {address} is listed twice")
            seen.add(address)
    routed = [(prefix, member.name) for member in material.members for prefix in member.prefixes]
    for k, (prefix, name) in enumerate(routed):
        for other, owner in routed[k + 1:]:
            if prefix.version == other.version and prefix.overlaps(other):
                raise ValueError(f"subnet route {prefix} of {name} overlaps {other} of {owner}")
    if not 1 <= material.rekey_after_packets <= REKEY_AFTER_PACKETS_MAX:
        raise ValueError(f"rekey_after_packets outside 1..{REKEY_AFTER_PACKETS_MAX}")
    for name in ("switch_delay", "grace", "rekey_after_seconds"):
        if not getattr(material, name) >= 0:
            raise ValueError(f"{name} must be >= 0")


class Receiver:
    """State for packets from one sender in one epoch."""

    __slots__ = ("cipher", "window", "sources", "source_prefixes", "member", "local", "local_prefixes",
                 "keepalive")

    def __init__(self, cipher: PacketCipher, member: MemberInfo, local: frozenset[bytes],
                 keepalive: bytes, local_prefixes: PrefixMap = NO_PREFIXES) -> None:
        self.cipher = cipher
        self.window = ReplayWindow()
        self.sources = member.packed_addresses()
        self.source_prefixes = member.prefix_map()  # the sender's approved subnet routes
        self.member = member
        self.local = local  # inner destinations that are ours (own and broadcast addresses)
        self.local_prefixes = local_prefixes  # our own approved subnet routes (we forward into them)
        self.keepalive = keepalive  # the plaintext of a keepalive sent to us

    def misfit(self, byte0: int, plaintext: bytes | bytearray | memoryview) -> str | None:
        """The drop reason for an authenticated plaintext from this sender, or None if it is for us.

        A keepalive must name our index; a data packet must pass :func:`grouptun.core.inner.misfit`.
        Nothing but the replay window may change before this returned None (PROTOCOL.md 6).
        """
        if byte0 == BYTE0_KEEPALIVE:
            return None if plaintext == self.keepalive else C.NOT_FOR_ME
        return misfit(plaintext, self.sources, self.local, self.source_prefixes, self.local_prefixes)


class EpochState:
    """Everything the data path needs for one epoch. Call :meth:`wipe` when dropped."""

    def __init__(self, material: EpochMaterial, now: float, run_key=None) -> None:
        try:
            validate(material)
            self.keys = EpochKeys(material.suite, material.group_id, material.epoch,
                                  material.shared_secret, material.salt, material.secrets)
        finally:
            material.wipe_secrets()
        self.epoch = material.epoch
        self.wire = wire_epoch(material.epoch)
        self.suite = material.suite
        self.nonce_start = material.nonce_start
        self.group_size = material.group_size
        self.own_index = material.own_index
        self.by_index: tuple[MemberInfo, ...] = tuple(sorted(material.members, key=lambda m: m.index))
        self.own = self.by_index[material.own_index]
        self.own_sources = self.own.packed_addresses()
        self.own_prefixes = self.own.prefix_map()  # inner sources/destinations we route for (subnet routes)
        self.routes = Routes(material.members, material.own_index, material.networks)
        self.local = self.own_sources | self.routes.broadcast
        self.own_keepalive = keepalive_body(material.own_index)
        self.switch_delay = float(material.switch_delay)
        self.grace = float(material.grace)
        self.rekey_after_packets = material.rekey_after_packets
        self.rekey_after_seconds = float(material.rekey_after_seconds)
        self.iv_maker = IvMaker(self.keys.nonce_common)
        self.iv = self.iv_maker.make
        self._run_key = run_key  # the native RunKey type, or None (grouptun.native)
        self.sender = sender_cipher(self.keys, material.own_index, run_key)
        self.allocator = SequenceAllocator(material.nonce_start, material.group_size,
                                           material.own_index, material.rekey_after_packets)
        self.receivers: dict[int, Receiver] = {}
        self.installed_at = now
        self.send_started: float | None = None
        self.auth_failures = 0
        self.raised: set[str] = set()  # rekey reasons already requested for this epoch
        # Filled by the session: Peer per index (None for us), and the others.
        self.peers: list = []
        self.others: list = []

    def receiver(self, index: int) -> Receiver:
        found = self.receivers.get(index)
        if found is None:
            found = self.receivers[index] = Receiver(sender_cipher(self.keys, index, self._run_key),
                                                     self.by_index[index], self.local, self.own_keepalive,
                                                     self.own_prefixes)
        return found

    def key_check(self) -> bytes:
        return self.keys.key_check()

    def wipe(self) -> None:
        self.keys.wipe()
        self.iv_maker.wipe()
        self.receivers.clear()
        self.sender = None  # type: ignore[assignment]

    def status(self, now: float, sending: bool) -> dict:
        return {
            "epoch": self.epoch, "suite": SUITES[self.suite], "age": round(now - self.installed_at, 3),
            "sending": sending, "group_size": self.group_size, "own_index": self.own_index,
            "packets_sent": self.allocator.sent, "auth_failures": self.auth_failures,
        }


def parse_networks(texts: tuple[str, ...]) -> tuple[Network, ...]:
    """Helper for the daemon: ``("10.77.0.0/24", "fd77::/64")`` -> networks."""
    return tuple(ipaddress.ip_network(text, strict=False) for text in texts)
