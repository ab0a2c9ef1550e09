"""Members as the data path sees them: routes by overlay address, endpoints by name.

:class:`Routes` is built once per epoch from its member table: packed
overlay address -> member index, plus the broadcast addresses (IPv4
limited broadcast and the broadcast address of each IPv4 overlay network
handed in), plus each member's approved subnet routes (a grouptun
extension: a destination inside one goes to that member, longest prefix
first; an overlay address always wins). Multicast (224.0.0.0/4, ff00::/8) and broadcast go to every
other member: :data:`EVERYONE`.

:class:`PeerTable` keeps per-member state keyed by member NAME, so it
survives epochs (indices may change): the UDP endpoint (from the archive,
then roaming), last time heard from / sent to, byte and packet counts.
The session updates an endpoint only after a packet authenticated and
passed the replay window.

Roaming (:meth:`Peer.heard`, :meth:`Peer.raced`) follows the lesson of
QUIC's off-path forwarding attack (RFC 9000 section 9.3.3): an outsider
who sees a member's datagrams can resend a copy from its own address
faster than the original arrives. The copy is then the fresh, authentic
one and the original a duplicate. Were every fresh datagram allowed to
move the endpoint, the racer would take the member's traffic (the
hostile soak measured 30 % of the flows to a tapped member lost that way). So:

- the endpoint moves to a new source only once the current one has been
  silent for ``ROAM_HOLD`` seconds (a host that really moved is silent at
  its old address; a raced one is not);
- while another source contends (``contested``), a duplicate from the
  current or the previous endpoint is authenticated by the session and
  counts as the old path being alive (:meth:`raced`); one from the
  previous endpoint just after a move undoes the move.

Limit: a racer that copies a member's datagrams while the member really
moves to a new address can keep the endpoint until it stops racing,
since neither path can be told from the other without a challenge the
wire format does not have.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Iterable

from grouptun.core.inner import PrefixMap, is_multicast

Endpoint = tuple[str, int]
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

EVERYONE = -1  # route target meaning "every other member"
# Seconds the current endpoint must be silent before another source takes it over. A moved
# host's old address stays silent; on a LAN a raced original arrives within milliseconds of
# its copy, so 1 s is far above that and still a short outage for a host that really moved.
ROAM_HOLD = 1.0
_LIMITED_BROADCAST = bytes((255, 255, 255, 255))


@dataclass(frozen=True)
class MemberInfo:
    name: str                       # member name (uid), stable across epochs
    index: int                      # member index in THIS epoch
    addresses: tuple[Address, ...]  # overlay addresses
    endpoint: Endpoint | None       # from the signed archive (None = unknown until it talks)
    prefixes: tuple[Network, ...] = ()  # approved subnet routes behind it (archive "routes")

    def packed_addresses(self) -> frozenset[bytes]:
        return frozenset(address.packed for address in self.addresses)

    def prefix_map(self) -> PrefixMap:
        return PrefixMap((prefix, True) for prefix in self.prefixes)


class Routes:
    """Destination address -> member index, or EVERYONE, or None (no route)."""

    __slots__ = ("unicast", "broadcast", "prefixes")

    def __init__(self, members: Iterable[MemberInfo], own_index: int,
                 networks: Iterable[Network] = ()) -> None:
        self.unicast: dict[bytes, int] = {}  # read directly by the send path
        routed = []
        for member in members:
            if member.index == own_index:
                continue
            for address in member.addresses:
                self.unicast[address.packed] = member.index
            routed.extend((prefix, member.index) for prefix in member.prefixes)
        self.prefixes = PrefixMap(routed)
        broadcast = {_LIMITED_BROADCAST}
        for network in networks:
            if network.version == 4 and network.prefixlen < 31:
                broadcast.add(network.broadcast_address.packed)
        self.broadcast = frozenset(broadcast)  # also what a receiver accepts besides its own addresses

    def lookup(self, destination: bytes) -> int | None:
        index = self.unicast.get(destination)
        if index is not None:
            return index
        if destination in self.broadcast or is_multicast(destination):
            return EVERYONE
        return self.prefixes.lookup(destination)  # type: ignore[return-value]


class Peer:
    """What we know about one member, across epochs."""

    __slots__ = ("name", "endpoint", "last_seen", "last_sent",
                 "rx_bytes", "rx_packets", "tx_bytes", "tx_packets",
                 "previous", "endpoint_heard", "contested_until", "roams", "roams_held", "roams_undone")

    def __init__(self, name: str, endpoint: Endpoint | None) -> None:
        self.name = name
        self.endpoint = endpoint
        self.last_seen: float | None = None
        self.last_sent: float | None = None
        self.rx_bytes = self.rx_packets = self.tx_bytes = self.tx_packets = 0
        self.previous: Endpoint | None = None      # the endpoint before the last move
        self.endpoint_heard: float | None = None   # when the current endpoint last proved alive
        self.contested_until = float("-inf")       # another source contends for the endpoint until then
        self.roams = self.roams_held = self.roams_undone = 0

    def heard(self, source: Endpoint, now: float) -> None:
        """An authenticated, fresh datagram for us came from ``source``: last_seen, and maybe a move."""
        self.last_seen = now
        if source == self.endpoint:
            self.endpoint_heard = now
            return
        self.contested_until = now + ROAM_HOLD
        heard = self.endpoint_heard
        if self.endpoint is not None and heard is not None and now - heard < ROAM_HOLD:
            self.roams_held += 1
            return
        self.previous, self.endpoint, self.endpoint_heard = self.endpoint, source, now
        self.roams += 1

    def contested(self, source: Endpoint, now: float) -> bool:
        """Whether a duplicate from ``source`` is worth authenticating: evidence for :meth:`raced`."""
        return now < self.contested_until and source is not None and source in (self.endpoint, self.previous)

    def raced(self, source: Endpoint, now: float) -> None:
        """An authenticated duplicate from the current or previous endpoint while contested: the
        other source was copying this member's datagrams. That path is alive; a move to the copier
        is undone."""
        if source == self.previous and source != self.endpoint:
            self.previous, self.endpoint = self.endpoint, source
            self.roams_undone += 1
        if source == self.endpoint:
            self.endpoint_heard = now

    def status(self, now: float) -> dict:
        return {
            "endpoint": _endpoint_text(self.endpoint),
            "last_seen_age": None if self.last_seen is None else round(now - self.last_seen, 3),
            "rx_bytes": self.rx_bytes, "rx_packets": self.rx_packets,
            "tx_bytes": self.tx_bytes, "tx_packets": self.tx_packets,
            "roaming": {"moved": self.roams, "held": self.roams_held, "undone": self.roams_undone},
        }


class PeerTable(dict):
    """name -> Peer."""

    def sync(self, members: Iterable[MemberInfo], own_name: str) -> None:
        """Add members not seen before; fill in archive endpoints we lack.

        An endpoint learned from an authenticated packet wins over the
        archive's: it is newer.
        """
        for member in members:
            if member.name == own_name:
                continue
            peer = self.get(member.name)
            if peer is None:
                self[member.name] = Peer(member.name, member.endpoint)
            elif peer.endpoint is None:
                peer.endpoint = member.endpoint

    def prune(self, keep: set[str]) -> None:
        for name in [name for name in self if name not in keep]:
            del self[name]


def _endpoint_text(endpoint: Endpoint | None) -> str | None:
    if endpoint is None:
        return None
    host, port = endpoint[0], endpoint[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
