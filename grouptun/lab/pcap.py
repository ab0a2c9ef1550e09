"""Read ``tcpdump -w`` captures and check grouptun's no-nonce-reuse rule.

Standard library only: classic pcap (micro- or nanosecond, either byte
order) with Ethernet, Linux cooked (SLL, SLL2) or raw-IP link types;
IPv4 and IPv6 (no extension headers other than a fragment header);
only UDP. Non-first fragments and truncated packets are skipped and
counted, never guessed at.

:func:`nonce_reuse` applies PROTOCOL.md 4 to what was on the wire: every
(epoch, s) names one packet. The same datagram sent to several members
(a broadcast: one encryption, N sends) is allowed; the same (epoch, s)
with different bytes, or twice to the same destination, is a violation.
"""

from __future__ import annotations

import struct
from collections import Counter, defaultdict
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from typing import Iterator

from grouptun.core import wire
from grouptun.errors import WireFormatError

_LINK_ETHERNET, _LINK_RAW, _LINK_SLL, _LINK_SLL2, _LINK_RAW_ALT = 1, 101, 113, 276, 12
_MAGIC = {b"\xd4\xc3\xb2\xa1": ("<", 1e-6), b"\xa1\xb2\xc3\xd4": (">", 1e-6),
          b"\x4d\x3c\xb2\xa1": ("<", 1e-9), b"\xa1\xb2\x3c\x4d": (">", 1e-9)}


class PcapError(ValueError):
    """Not a classic pcap file, or an unsupported link type."""


@dataclass(frozen=True)
class Datagram:
    time: float
    src: str
    sport: int
    dst: str
    dport: int
    payload: bytes     # as captured: may be cut short by the snap length
    length: int        # the UDP payload's real length


class PcapStream:
    """Records of a capture that is still being written (``tcpdump -U -w``): :meth:`feed` the bytes
    as they come, get the records completed so far."""

    def __init__(self, name: str = "capture") -> None:
        self.name, self._buffer, self._format = name, bytearray(), None

    def feed(self, data: bytes) -> list[tuple[float, int, bytes]]:
        buffer = self._buffer
        buffer += data
        if self._format is None:
            if len(buffer) < 24:
                return []
            if bytes(buffer[:4]) not in _MAGIC:
                raise PcapError(f"{self.name}: not a classic pcap file (tcpdump -w writes one)")
            endian, tick = _MAGIC[bytes(buffer[:4])]
            self._format = endian, tick, struct.unpack_from(endian + "I", buffer, 20)[0] & 0x0FFFFFFF
            del buffer[:24]
        endian, tick, linktype = self._format
        records, offset = [], 0
        while offset + 16 <= len(buffer):
            sec, frac, caplen, _origlen = struct.unpack_from(endian + "IIII", buffer, offset)
            if offset + 16 + caplen > len(buffer):
                break
            records.append((sec + frac * tick, linktype, bytes(buffer[offset + 16:offset + 16 + caplen])))
            offset += 16 + caplen
        del buffer[:offset]
        return records


def read_pcap(path: str | Path) -> Iterator[tuple[float, int, bytes]]:
    """Yield (time, linktype, frame bytes) for every record."""
    data = Path(path).read_bytes()
    if len(data) < 24 or data[:4] not in _MAGIC:
        raise PcapError(f"{path}: not a classic pcap file (tcpdump -w writes one)")
    yield from PcapStream(str(path)).feed(data)


def _ip_start(linktype: int, frame: bytes) -> int | None:
    if linktype in (_LINK_RAW, _LINK_RAW_ALT):
        return 0
    if linktype == _LINK_ETHERNET:
        offset, ethertype = 14, struct.unpack_from(">H", frame, 12)[0] if len(frame) >= 14 else 0
        while ethertype in (0x8100, 0x88A8) and len(frame) >= offset + 4:   # VLAN tags
            ethertype = struct.unpack_from(">H", frame, offset + 2)[0]
            offset += 4
        return offset if ethertype in (0x0800, 0x86DD) else None
    if linktype == _LINK_SLL:
        return 16
    if linktype == _LINK_SLL2:
        return 20
    raise PcapError(f"unsupported pcap link type {linktype}")


def _udp(frame: bytes, start: int) -> tuple[str, str, int] | None:
    """(src, dst, offset of the UDP header) or None if not a first/whole UDP packet."""
    if len(frame) < start + 1:
        return None
    version = frame[start] >> 4
    if version == 4 and len(frame) >= start + 20:
        ihl = (frame[start] & 0x0F) * 4
        frag = struct.unpack_from(">H", frame, start + 6)[0]
        if frame[start + 9] != 17 or frag & 0x1FFF:
            return None
        return (str(IPv4Address(frame[start + 12:start + 16])),
                str(IPv4Address(frame[start + 16:start + 20])), start + ihl)
    if version == 6 and len(frame) >= start + 40:
        nxt, offset = frame[start + 6], start + 40
        if nxt == 44 and len(frame) >= offset + 8:               # fragment header
            if struct.unpack_from(">H", frame, offset + 2)[0] & 0xFFF8:
                return None
            nxt, offset = frame[offset], offset + 8
        if nxt != 17:
            return None
        return (str(IPv6Address(frame[start + 8:start + 24])),
                str(IPv6Address(frame[start + 24:start + 40])), offset)
    return None


def udp_datagram(ts: float, linktype: int, frame: bytes) -> Datagram | None:
    """The UDP datagram (first fragment or whole) of one captured frame, or None."""
    start = _ip_start(linktype, frame)
    found = _udp(frame, start) if start is not None else None
    if found is None or len(frame) < found[2] + 8:
        return None
    src, dst, udp = found
    sport, dport, length = struct.unpack_from(">HHH", frame, udp)
    return Datagram(ts, src, sport, dst, dport, frame[udp + 8:], max(length - 8, 0))


def udp_datagrams(path: str | Path) -> Iterator[Datagram]:
    """Every UDP datagram (first fragment or whole) in the capture."""
    for record in read_pcap(path):
        datagram = udp_datagram(*record)
        if datagram is not None:
            yield datagram


def ip_destination(linktype: int, frame: bytes) -> tuple[int, bytes] | None:
    """(IP version, packed destination address) of a captured frame, or None if it is no IP packet."""
    start = _ip_start(linktype, frame)
    if start is None or len(frame) < start + 1:
        return None
    version = frame[start] >> 4
    if version == 4 and len(frame) >= start + 20:
        return 4, frame[start + 16:start + 20]
    if version == 6 and len(frame) >= start + 40:
        return 6, frame[start + 24:start + 40]
    return None


@dataclass(frozen=True)
class ReuseReport:
    packets: int                      # grouptun datagrams examined
    distinct: int                     # distinct (epoch, s)
    reused: list[tuple[int, int]]     # (epoch, s) sent with different bytes
    repeated: list[tuple[str, int, int]]  # (dst, epoch, s) sent twice to one destination

    @property
    def ok(self) -> bool:
        return not self.reused and not self.repeated


def nonce_reuse(datagrams: list[Datagram], port: int | None = None) -> ReuseReport:
    """Check that no (epoch, s) was used for two different packets.

    ``payload`` is compared as captured, so capture with a snap length that
    keeps some ciphertext (``tcpdump -s 200``).
    """
    bodies: dict[tuple[int, int], set[bytes]] = defaultdict(set)
    per_dst: Counter = Counter()
    count = 0
    for d in datagrams:
        if port is not None and port not in (d.sport, d.dport):
            continue
        try:
            header = wire.decode(d.payload + b"\0" * max(0, wire.MIN_DATAGRAM - len(d.payload)))
        except WireFormatError:
            continue
        if d.length < wire.MIN_DATAGRAM:
            continue
        count += 1
        key = (header.epoch, header.sequence)
        bodies[key].add(d.payload)
        per_dst[(d.dst, d.dport, *key)] += 1
    reused = sorted(k for k, v in bodies.items() if len(v) > 1)
    repeated = sorted((dst, e, s) for (dst, _p, e, s), n in per_dst.items() if n > 1)
    return ReuseReport(count, len(bodies), reused, repeated)
