"""Test helpers: build IP/TCP/UDP packets and check them with slow reference code."""

from __future__ import annotations

import struct

from grouptun.data.offload.vnet import F_NEEDS_CSUM, GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4, VnetHdr

SRC4, DST4 = bytes([10, 9, 0, 1]), bytes([10, 9, 0, 2])
SRC6 = bytes.fromhex("fd000000000000000000000000000001")
DST6 = bytes.fromhex("fd0000000000000000000000000000a2")


def ref_sum(data: bytes) -> int:
    """RFC 1071 the slow way: 16-bit words, end-around carry."""
    if len(data) % 2:
        data += b"\0"
    s = 0
    for i in range(0, len(data), 2):
        s += (data[i] << 8) | data[i + 1]
        s = (s & 0xFFFF) + (s >> 16)
    return s


def ref_l4_ok(pkt: bytes) -> bool:
    """Verify the TCP/UDP checksum of a full IP packet with the reference sum."""
    if pkt[0] >> 4 == 4:
        ihl = (pkt[0] & 15) * 4
        src, dst, proto, l4 = pkt[12:16], pkt[16:20], pkt[9], pkt[ihl:]
        pseudo = src + dst + bytes([0, proto]) + struct.pack("!H", len(l4))
    else:
        src, dst, proto, l4 = pkt[8:24], pkt[24:40], pkt[6], pkt[40:]
        pseudo = src + dst + struct.pack("!I", len(l4)) + bytes([0, 0, 0, proto])
    return ref_sum(pseudo + l4) == 0xFFFF


def ref_ip4_ok(pkt: bytes) -> bool:
    return ref_sum(pkt[:(pkt[0] & 15) * 4]) == 0xFFFF


def ip_header(v6: bool, proto: int, l4_len: int, ident: int = 0x1234, tos: int = 0, ttl: int = 64,
              options: bytes = b"") -> bytes:
    if v6:
        return struct.pack("!IHBB", 0x60000000 | (tos << 20), l4_len, proto, ttl) + SRC6 + DST6
    ihl = 5 + len(options) // 4
    h = bytearray(struct.pack("!BBHHHBBH", 0x40 | ihl, tos, ihl * 4 + l4_len, ident, 0x4000, ttl, proto, 0)
                  + SRC4 + DST4 + options)
    struct.pack_into("!H", h, 10, ~ref_sum(bytes(h)) & 0xFFFF)
    return bytes(h)


def tcp_header(seq: int, flags: int = 0x10, options: bytes = b"", ack: int = 777, sport: int = 40000,
               dport: int = 5201) -> bytes:
    doff = (20 + len(options)) // 4
    return struct.pack("!HHIIBBHHH", sport, dport, seq, ack, doff << 4, flags, 65000, 0, 0) + options


def with_l4_checksum(pkt: bytes) -> bytes:
    """Fill in a correct TCP/UDP checksum with the reference code."""
    b = bytearray(pkt)
    v6 = b[0] >> 4 == 6
    l4 = 40 if v6 else (b[0] & 15) * 4
    proto = b[6] if v6 else b[9]
    at = l4 + (16 if proto == 6 else 6)
    b[at:at + 2] = b"\0\0"
    src, dst = (b[8:24], b[24:40]) if v6 else (b[12:16], b[16:20])
    ln = len(b) - l4
    pseudo = bytes(src + dst) + (struct.pack("!I", ln) + bytes([0, 0, 0, proto]) if v6 else bytes([0, proto]) + struct.pack("!H", ln))
    c = ~ref_sum(pseudo + bytes(b[l4:])) & 0xFFFF
    struct.pack_into("!H", b, at, c or (0xFFFF if proto == 17 else 0))
    return bytes(b)


def tcp_packet(v6: bool, seq: int, payload: bytes, flags: int = 0x10, options: bytes = b"", ack: int = 777,
               ident: int = 0x1234, sport: int = 40000) -> bytes:
    t = tcp_header(seq, flags, options, ack, sport)
    return with_l4_checksum(ip_header(v6, 6, len(t) + len(payload), ident) + t + payload)


def udp_packet(v6: bool, payload: bytes, ident: int = 0x1234, sport: int = 40001) -> bytes:
    u = struct.pack("!HHHH", sport, 5201, 8 + len(payload), 0)
    return with_l4_checksum(ip_header(v6, 17, 8 + len(payload), ident) + u + payload)


def super_packet(v6: bool, tcp: bool, payload: bytes, gso: int, *, seq: int = 1000, flags: int = 0x18,
                 options: bytes = b"", ident: int = 0x1234, ip_options: bytes = b"") -> tuple[bytes, VnetHdr]:
    """A TSO/USO super-packet as a TUN with offloads hands it over (partial checksum)."""
    if tcp:
        l4 = tcp_header(seq, flags, options)
    else:
        l4 = struct.pack("!HHHH", 40001, 5201, 8 + len(payload), 0)
    ip = ip_header(v6, 6 if tcp else 17, len(l4) + len(payload), ident, options=b"" if v6 else ip_options)
    pkt = bytearray(ip + l4 + payload)
    cs = len(ip)
    csum_off = 16 if tcp else 6
    src, dst = (SRC6, DST6) if v6 else (SRC4, DST4)
    partial = ref_sum(src + dst + struct.pack("!HH", 6 if tcp else 17, len(pkt) - cs))
    struct.pack_into("!H", pkt, cs + csum_off, partial)
    gso_type = GSO_UDP_L4 if not tcp else (GSO_TCPV6 if v6 else GSO_TCPV4)
    hdr = VnetHdr(F_NEEDS_CSUM, gso_type, cs + len(l4), gso, cs, csum_off)
    return bytes(pkt), hdr
