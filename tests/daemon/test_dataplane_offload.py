"""Batched data path (offload): TSO super-packets through two real Sessions, every byte checked.

Fakes stand in for a TUN with a virtio-net header (reads hand super-packets,
writes take GRO items) and for a socket with UDP GSO/GRO (a GSO send arrives
as one GRO receive). The reference for "what must come out" is the kernel's
own behaviour: ``offload.segment.segment`` of the super-packet, i.e. the
ordinary MTU-sized packets; what the receiving fake TUN gets is re-segmented
the same way and compared byte for byte.
"""

from __future__ import annotations

import ipaddress
import struct

import pytest

from grouptun import config
from grouptun.core.session import EpochMaterial, MemberInfo, Session
from grouptun.data.plane import DataPlane
from grouptun.errors import ConfigError
from grouptun.data.offload import checksum
from grouptun.data.offload.segment import segment
from grouptun.data.offload.vnet import (F_NEEDS_CSUM, GSO_NONE, GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4, VNET_HDR_LEN,
                                   VnetHdr, decode)

from .fakes import GsoUdp, VnetTun

A4, B4 = ipaddress.IPv4Address("10.77.0.1"), ipaddress.IPv4Address("10.77.0.2")
A6, B6 = ipaddress.IPv6Address("fd77::1"), ipaddress.IPv6Address("fd77::2")
EP = {"alice": ("127.0.0.1", 52000), "bob": ("127.0.0.1", 52001)}


def material(own: str, suite: int) -> EpochMaterial:
    members = (MemberInfo("alice", 0, (A4, A6), EP["alice"]), MemberInfo("bob", 1, (B4, B6), EP["bob"]))
    return EpochMaterial(group_id=bytes(16), epoch=7, suite=suite, nonce_start=12345, group_size=2,
                         own_index=0 if own == "alice" else 1, members=members,
                         shared_secret=bytearray(b"s" * 32), salt=bytearray(b"t" * 32))


def pair(suite=1):
    net: dict = {}
    out = {}
    for name in ("alice", "bob"):
        session = Session(name)
        session.install_epoch(material(name, suite), 0.0)
        tun, udp = VnetTun(), GsoUdp(net, EP[name])
        out[name] = (session, tun, udp, DataPlane(session, tun, udp, clock=lambda: 1.0))
    return out


def super_packet(version: int, proto: int, payload: bytes, mss: int, seq: int = 1000) -> bytes:
    """virtio-net header || a TSO/USO super-packet with a partial checksum, as the kernel writes it."""
    src, dst = (A4, B4) if version == 4 else (A6, B6)
    l4 = (struct.pack("!HHIIBBHHH", 40000, 5201, seq, 77, 0x50, 0x18, 65535, 0, 0) if proto == 6
          else struct.pack("!HHHH", 40000, 5201, 8 + len(payload), 0))
    body = l4 + payload
    if version == 4:
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(body), 4242, 0x4000, 64, proto, 0, src.packed, dst.packed)
        ip = ip[:10] + struct.pack("!H", checksum.checksum(ip)) + ip[12:]
        cs = 20
    else:
        ip = struct.pack("!IHBB16s16s", 0x60000000, len(body), proto, 64, src.packed, dst.packed)
        cs = 40
    pkt = bytearray(ip + body)
    off = 16 if proto == 6 else 6
    struct.pack_into("!H", pkt, cs + off, checksum.ones_sum(src.packed + dst.packed, proto + len(body)))
    big = len(payload) > mss
    kind = (GSO_UDP_L4 if proto == 17 else GSO_TCPV4 if version == 4 else GSO_TCPV6) if big else GSO_NONE
    hdr = VnetHdr(F_NEEDS_CSUM, kind, cs + len(l4), mss if big else 0, cs, off)
    return hdr.encode() + bytes(pkt)


def packets_of(written: list[bytes]) -> list[bytes]:
    """What the kernel makes of our TUN writes: ordinary packets (GRO items cut back at their gso_size)."""
    out = []
    for w in written:
        hdr = decode(w)
        out += segment(w[VNET_HDR_LEN:], hdr) if hdr.gso_kind != GSO_NONE else [w[VNET_HDR_LEN:]]
    return out


@pytest.mark.parametrize("suite", [1, 2])
@pytest.mark.parametrize("version,proto", [(4, 6), (6, 6), (4, 17), (6, 17)])
@pytest.mark.parametrize("size,mss", [(1, 1380), (1379, 1380), (1381, 1380), (63 * 1000 + 7, 1000),
                                      (20000, 1447), (65000 - 60, 1360)])
def test_super_packets_come_out_byte_for_byte(suite, version, proto, size, mss):
    if size + (60 if version == 6 else 40) > 65535:
        size = 65535 - 80
    p = pair(suite)
    a_tun, b_tun = p["alice"][1], p["bob"][1]
    payload = bytes((k * 7 + size) % 256 for k in range(size))
    raw = super_packet(version, proto, payload, mss)
    a_tun.queue.append(raw)
    p["alice"][3].on_tun_readable()
    p["bob"][3].on_udp_readable()
    expected = segment(raw[VNET_HDR_LEN:], decode(raw))
    got = packets_of(b_tun.written)
    assert got == expected
    if proto == 6 and len(expected) > 2:  # coalesced: fewer TUN writes than packets, each a GSO item
        assert len(b_tun.written) < len(expected) and decode(b_tun.written[0]).gso_kind != GSO_NONE
    elif proto == 17:  # datagrams are written one by one (tunruns.MERGE_UDP)
        assert len(b_tun.written) == len(expected)
        assert all(decode(w).gso_kind == GSO_NONE for w in b_tun.written)
    for pkt in got:  # every segment is a valid packet on its own: full transport checksum
        l4 = 20 if version == 4 else 40
        addrs = pkt[12:20] if version == 4 else pkt[8:40]
        assert checksum.ones_sum(pkt[l4:], checksum.ones_sum(addrs, proto + len(pkt) - l4)) == 0xFFFF
    c = p["bob"][3].counters
    assert c["tun_tx"] == len(expected) and c["internal_errors"] == 0
    assert p["alice"][3].counters["udp_tx"] == len(expected)
    assert sum(p["bob"][0].drops.values()) == 0


def test_many_reads_one_drain_mixed_flows_and_sizes_in_order():
    p = pair()
    a_tun, b_tun = p["alice"][1], p["bob"][1]
    raws = [super_packet(4, 6, bytes([1]) * 5000, 1380, seq=1), super_packet(6, 6, bytes([2]) * 3001, 1360),
            super_packet(4, 17, b"\x03" * 77, 1380), super_packet(4, 6, bytes([4]) * 4000, 1380, seq=5001)]
    a_tun.queue.extend(raws)
    p["alice"][3].on_tun_readable()
    assert p["alice"][2].sends < sum(len(segment(r[VNET_HDR_LEN:], decode(r))) for r in raws)
    p["bob"][3].on_udp_readable()
    expected = [s for r in raws for s in segment(r[VNET_HDR_LEN:], decode(r))]
    got = packets_of(b_tun.written)
    assert sorted(got) == sorted(expected)
    # per flow, order is kept
    for flow in (b"\x01", b"\x02", b"\x04"):
        assert [g for g in got if g[-1:] == flow] == [e for e in expected if e[-1:] == flow]


def test_malformed_super_packets_dropped_and_counted_loop_survives():
    p = pair()
    a_tun, a_dp = p["alice"][1], p["alice"][3]
    good = super_packet(4, 6, b"g" * 3000, 1000)
    bad_kind = bytearray(good)
    bad_kind[1] = 0x33  # unknown gso_type
    wrong_proto = bytearray(good)
    wrong_proto[VNET_HDR_LEN + 9] = 17  # IPv4 says UDP, header says TCPv4
    zero_mss = bytearray(good)
    struct.pack_into("=H", zero_mss, 4, 0)
    truncated = good[:VNET_HDR_LEN + 30]
    a_tun.queue.extend([bytes(bad_kind), bytes(wrong_proto), bytes(zero_mss), truncated, b"\x00" * 5, good])
    a_dp.on_tun_readable()
    assert a_dp.status()["tun_rx_malformed"] == 5
    assert a_dp.counters["udp_tx"] == 3 and a_dp.counters["internal_errors"] == 0
    p["bob"][3].on_udp_readable()
    assert packets_of(p["bob"][1].written) == segment(good[VNET_HDR_LEN:], decode(good))


def test_no_sequence_twice_across_gso_batches():
    from grouptun.core.wire import HEADER
    p = pair()
    a_tun = p["alice"][1]
    for k in range(5):
        a_tun.queue.append(super_packet(4, 6, bytes([k]) * 40000, 1380, seq=k * 40000))
    p["alice"][3].on_tun_readable()
    seqs = []
    for data, seg, _ in p["bob"][2].inbox:
        assert len(data) <= 64 * seg
        seqs += [HEADER.unpack_from(data, off)[3] for off in range(0, len(data), seg)]
    assert len(seqs) == len(set(seqs)) == 5 * 29


def test_path_reported_with_what_the_devices_offer():
    from .fakes import FakeNetwork, FakeUdp, QueueTun
    p = pair()
    assert p["alice"][3].counters["path"] == "runs (tun fake-vnet; fake gso/gro)"
    plain = DataPlane(Session("alice"), QueueTun(), FakeUdp(FakeNetwork(), ("127.0.0.1", 1)))
    assert plain.counters["path"] == "runs (tun queue; fake udp)"


def test_offload_config_key_validated():
    from .test_config import good
    assert config.parse(good()).daemon.offload == "auto"
    data = good()
    data["daemon"] = {"offload": "OFF"}
    assert config.parse(data).daemon.offload == "off"
    for bad in ("on", 1, ""):
        data["daemon"] = {"offload": bad}
        with pytest.raises(ConfigError) as info:
            config.parse(data)
        assert info.value.key == "daemon.offload"


@pytest.mark.parametrize("version", [4, 6])
def test_datagram_runs_are_written_one_by_one_in_order_after_what_came_before(version):
    """A short UDP run (opened datagram by datagram, queued in the coalescer), a long UDP run (written
    straight from the decrypt buffer) and a long TCP run in one drain reach the TUN in order, intact."""
    p = pair(1)
    a_tun, b_tun = p["alice"][1], p["bob"][1]
    sent = []
    for proto, size, mss in ((17, 5 * 700, 700), (17, 30 * 1000, 1000), (6, 30 * 1100, 1100)):
        raw = super_packet(version, proto, bytes((k + size) % 251 for k in range(size)), mss)
        sent += segment(raw[VNET_HDR_LEN:], decode(raw))
        a_tun.queue.append(raw)
    p["alice"][3].on_tun_readable()
    p["bob"][3].on_udp_readable()
    got = packets_of(b_tun.written)
    assert got == sent
    udp_writes = [w for w in b_tun.written if w[VNET_HDR_LEN + (9 if version == 4 else 6)] == 17]
    assert len(udp_writes) == 35 and all(w[:VNET_HDR_LEN] == bytes(VNET_HDR_LEN) for w in udp_writes)
    assert len(b_tun.written) < len(sent)  # the TCP run was merged
    c = p["bob"][3].counters
    assert c["rx_runs"] == 3 and c["tun_tx"] == len(sent) and c["internal_errors"] == 0


def test_a_run_mixing_tcp_and_udp_comes_out_intact():
    """One GRO run whose inner packets alternate TCP and UDP (the protocol byte is not among what the
    run opener requires to be uniform): neither add_run nor the straight UDP path may take it whole,
    and every packet still comes out, in order."""
    p = pair(1)
    a_tun, b_tun = p["alice"][1], p["bob"][1]
    sent = []
    for k in range(16):  # same addresses and length, protocol alternating: one GRO run at the receiver
        proto = 17 if k % 2 else 6
        raw = super_packet(4, proto, bytes([k]) * (1000 - (20 if proto == 6 else 8)), 1400)
        sent += segment(raw[VNET_HDR_LEN:], decode(raw))
        a_tun.queue.append(raw)
    p["alice"][3].on_tun_readable()
    p["bob"][3].on_udp_readable()
    assert packets_of(b_tun.written) == sent
    c = p["bob"][3].counters
    assert c["rx_runs"] == 2 and c["internal_errors"] == 0  # the first of the drain left alone
