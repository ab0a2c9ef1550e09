"""The inner IP packet: just enough parsing to route it and to check it.

A data packet's plaintext must be exactly one IPv4 or IPv6 packet whose
source address is one of the sender's overlay addresses (PROTOCOL.md 5),
and whose destination fits the receiver (PROTOCOL.md 6): one of the
receiver's own overlay addresses, a broadcast address of its networks, or
a multicast address. A grouptun extension (PROTOCOL.md 2, subnet routes)
widens both sides by the prefixes the provider approved for a member: a
gateway member's packets may come from inside its prefixes, and a gateway
accepts packets for inside its own (:class:`PrefixMap`). :func:`misfit` is
that rule, the only copy of it: every
receive path calls it (the run path of :mod:`grouptun.core.run` first
compares a run's packets with one that passed it).
"Exactly one" is checked through the length fields: IPv4 total length
(bytes 2-3) equals the plaintext length and IHL >= 5; IPv6 payload length
(bytes 4-5) + 40 equals it. Addresses are compared packed (4 or 16 bytes).

Limits: no IPv4 options or IPv6 extension headers are looked into; IPv6
jumbograms (payload length 0) are refused; GSO super-packets are not
handled here.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import Iterable

from grouptun.core import counters as C

IPV4_HEADER = 20
IPV6_HEADER = 40
MIN_INNER = IPV4_HEADER  # the smallest IP packet a data datagram may carry
# One C call each for the fields we read: (version/IHL, total length, src, dst)
# and (version..., payload length, src, dst).
_V4 = struct.Struct(">B1xH8x4s4s")
_V6 = struct.Struct(">B3xH2x16s16s")

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def packed_addresses(packet: bytes | bytearray | memoryview) -> tuple[bytes, bytes] | None:
    """``(source, destination)`` packed, or None if this is not one well-formed IP packet."""
    size = len(packet)
    if size < IPV4_HEADER:
        return None
    first = packet[0]
    if first >> 4 == 4:
        _, total, source, destination = _V4.unpack_from(packet, 0)
        if (first & 0x0F) < 5 or total != size:
            return None
        return source, destination
    if first >> 4 == 6 and size >= IPV6_HEADER:
        _, payload, source, destination = _V6.unpack_from(packet, 0)
        if payload + IPV6_HEADER != size:
            return None
        return source, destination
    return None


class PrefixMap:
    """Packed address -> the value of the longest listed network holding it (subnet routes).

    Few entries (a group's approved prefixes), so a list scanned longest prefix first; an
    address is compared as one integer against each network and mask of its length.
    """

    __slots__ = ("_entries",)

    def __init__(self, entries: Iterable[tuple[Network, object]] = ()) -> None:
        ordered = sorted(entries, key=lambda entry: -entry[0].prefixlen)
        self._entries = tuple((len(network.network_address.packed), int(network.network_address),
                               int(network.netmask), value) for network, value in ordered)

    def __bool__(self) -> bool:
        return bool(self._entries)

    def lookup(self, packed: bytes) -> object | None:
        if not self._entries:
            return None
        size, number = len(packed), int.from_bytes(packed, "big")
        for length, network, mask, value in self._entries:
            if length == size and number & mask == network:
                return value
        return None

    def holds(self, packed: bytes) -> bool:
        return self.lookup(packed) is not None


NO_PREFIXES = PrefixMap()


def misfit(plaintext: bytes | bytearray | memoryview, sources: frozenset[bytes], local: frozenset[bytes],
           source_prefixes: PrefixMap = NO_PREFIXES, local_prefixes: PrefixMap = NO_PREFIXES) -> str | None:
    """Why an authenticated data plaintext does not fit its receiver, or None if it does.

    :data:`~grouptun.core.counters.INNER` unless it is one IP packet whose source is in ``sources``
    (the sender's addresses, packed) or inside ``source_prefixes`` (the sender's approved subnet
    routes); :data:`~grouptun.core.counters.NOT_FOR_ME` unless its destination is in ``local``
    (the receiver's own and broadcast addresses), multicast, or inside ``local_prefixes`` (the
    receiver's own approved subnet routes, which it forwards): a datagram sealed for another
    member and copied to us by an outsider.
    """
    addresses = packed_addresses(plaintext)
    if addresses is None:
        return C.INNER
    source, destination = addresses
    if source not in sources and not source_prefixes.holds(source):
        return C.INNER
    if destination not in local and not is_multicast(destination) and not local_prefixes.holds(destination):
        return C.NOT_FOR_ME
    return None


def is_multicast(packed: bytes) -> bool:
    """IPv4 224.0.0.0/4 or IPv6 ff00::/8."""
    if len(packed) == 4:
        return packed[0] & 0xF0 == 0xE0
    return packed[0] == 0xFF
