"""The inner IP packet: just enough parsing to route it and to check it.

A data packet's plaintext must be exactly one IPv4 or IPv6 packet whose
source address is one of the sender's overlay addresses (PROTOCOL.md 5),
and whose destination fits the receiver (PROTOCOL.md 6): one of the
receiver's own overlay addresses, a broadcast address of its networks, or
a multicast address. The document routes no prefixes through members, so
those are all. :func:`misfit` is that rule, the only copy of it: every
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

from grouptun.core import counters as C

IPV4_HEADER = 20
IPV6_HEADER = 40
MIN_INNER = IPV4_HEADER  # the smallest IP packet a data datagram may carry
# One C call each for the fields we read: (version/IHL, total length, src, dst)
# and (version..., payload length, src, dst).
_V4 = struct.Struct(">B1xH8x4s4s")
_V6 = struct.Struct(">B3xH2x16s16s")

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


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


def misfit(plaintext: bytes | bytearray | memoryview, sources: frozenset[bytes],
           local: frozenset[bytes]) -> str | None:
    """Why an authenticated data plaintext does not fit its receiver, or None if it does.

    :data:`~grouptun.core.counters.INNER` unless it is one IP packet whose source is in ``sources``
    (the sender's addresses, packed); :data:`~grouptun.core.counters.NOT_FOR_ME` unless its
    destination is in ``local`` (the receiver's own and broadcast addresses) or multicast: a
    datagram sealed for another member and copied to us by an outsider.
    """
    addresses = packed_addresses(plaintext)
    if addresses is None or addresses[0] not in sources:
        return C.INNER
    destination = addresses[1]
    if destination not in local and not is_multicast(destination):
        return C.NOT_FOR_ME
    return None


def is_multicast(packed: bytes) -> bool:
    """IPv4 224.0.0.0/4 or IPv6 ff00::/8."""
    if len(packed) == 4:
        return packed[0] & 0xF0 == 0xE0
    return packed[0] == 0xFF
