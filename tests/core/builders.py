"""Builders shared by the core tests: epoch material, IP packets, an in-memory network."""

from __future__ import annotations

import hashlib
import ipaddress
import json
import struct

from grouptun.core.session import EpochMaterial, MemberInfo, Session

GROUP_ID = bytes(range(16))
NAMES = ("alice", "bob", "carol")
NETWORKS = (ipaddress.ip_network("10.77.0.0/24"), ipaddress.ip_network("fd77::/64"))


def secret(label: str, epoch: int) -> bytearray:
    """Deterministic 32-byte test secrets (tests need reproducible runs, not randomness)."""
    return bytearray(hashlib.sha256(f"{label}/{epoch}".encode()).digest())


def v4(number: int) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Address(f"10.77.0.{number}")


def v6(number: int) -> ipaddress.IPv6Address:
    return ipaddress.IPv6Address(f"fd77::{number}")


def endpoint(name: str) -> tuple[str, int]:
    return ("127.0.0.1", 40000 + NAMES.index(name))


def members(names=NAMES, order=None, routes=None) -> tuple[MemberInfo, ...]:
    """Member i (position in NAMES) gets addresses .i+1; ``order`` permutes indices;
    ``routes``: name -> prefix texts approved behind that member (subnet routes)."""
    order = order or list(range(len(names)))
    routes = routes or {}
    return tuple(MemberInfo(name, order[pos], (v4(NAMES.index(name) + 1), v6(NAMES.index(name) + 1)),
                            endpoint(name), tuple(ipaddress.ip_network(p) for p in routes.get(name, ())))
                 for pos, name in enumerate(names))


def material(own: str, epoch: int = 1, suite: int = 1, names=NAMES, order=None, routes=None,
             **extra) -> EpochMaterial:
    table = members(names, order, routes)
    own_index = next(m.index for m in table if m.name == own)
    fields = dict(group_id=GROUP_ID, epoch=epoch, suite=suite, nonce_start=0x9ABCDEF0 ^ epoch,
                  group_size=len(table), own_index=own_index, members=table,
                  shared_secret=secret("ss", epoch), salt=secret("salt", epoch), networks=NETWORKS)
    fields.update(extra)
    return EpochMaterial(**fields)


def ipv4(src: ipaddress.IPv4Address, dst: ipaddress.IPv4Address, payload: bytes = b"hello") -> bytes:
    header = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 1, 0, 64, 17, 0, src.packed, dst.packed)
    return header + payload


def ipv6(src: ipaddress.IPv6Address, dst: ipaddress.IPv6Address, payload: bytes = b"hello6") -> bytes:
    header = struct.pack(">IHBB16s16s", 0x60000000, len(payload), 17, 64, src.packed, dst.packed)
    return header + payload


class FakeNet:
    """Sessions addressed by endpoint; delivers datagrams, collects what reaches each TUN."""

    def __init__(self, sessions: dict[str, Session]) -> None:
        self.sessions = sessions
        self.by_endpoint = {endpoint(name): name for name in sessions}
        self.received: dict[str, list] = {name: [] for name in sessions}

    def deliver(self, sender: str, out, now: float, source=None) -> list[str]:
        """Deliver (endpoint, datagram) pairs from ``sender``; returns who got an inner packet."""
        got = []
        for dest, datagram in out:
            name = self.by_endpoint[dest]
            inner = self.sessions[name].on_datagram(datagram, source or endpoint(sender), now)
            if inner is not None:
                self.received[name].append(bytes(inner))
                got.append(name)
        return got


def assert_json_able(value) -> None:
    json.dumps(value)


def seal_run(sender: Session, packets: list[bytes], now: float = 1.0, stride: int | None = None):
    """``packets`` (one destination; one size but a shorter last) sealed as one run through
    ``Session.seal_run``: ``(datagrams back to back, datagram stride, endpoints)``; (b"", stride, ()) if dropped."""
    size = len(packets[0])
    stride = stride or size
    source = bytearray(stride * len(packets) + 64)
    for j, packet in enumerate(packets):
        source[j * stride:j * stride + len(packet)] = packet
    out = bytearray(len(packets) * (size + 28) + 64)
    sealed = sender.seal_run(source, 0, stride, len(packets), size, len(packets[-1]), out, now)
    if sealed is None:
        return b"", size + 28, ()
    length, endpoints = sealed
    return bytes(out[:length]), size + 28, tuple(endpoints)


def open_run(receiver: Session, data: bytes, seg: int, source, now: float = 1.0) -> list[bytes]:
    """The inner packets ``Session.open_run`` accepts of ``data`` (datagrams of ``seg`` bytes, a shorter last)."""
    out = memoryview(bytearray(len(data) + 64))
    return [bytes(p) for p in receiver.open_run(memoryview(bytearray(data)), seg, source, now, out).packets(out)]
