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
                 "rx_bytes", "rx_packets", "tx_bytes", "tx_packets")

    def __init__(self, name: str, endpoint: Endpoint | None) -> None:
        self.name = name
        self.endpoint = endpoint
        self.last_seen: float | None = None
        self.last_sent: float | None = None
        self.rx_bytes = self.rx_packets = self.tx_bytes = self.tx_packets = 0

    def status(self, now: float) -> dict:
        return {
            "endpoint": _endpoint_text(self.endpoint),
            "last_seen_age": None if self.last_seen is None else round(now - self.last_seen, 3),
            "rx_bytes": self.rx_bytes, "rx_packets": self.rx_packets,
            "tx_bytes": self.tx_bytes, "tx_packets": self.tx_packets,
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
