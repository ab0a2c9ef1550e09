"""pcap reading and the (epoch, s) reuse check, on hand-built captures."""

from __future__ import annotations

import struct
from ipaddress import IPv4Address, IPv6Address

import pytest

from grouptun.core import wire
from grouptun.lab.pcap import PcapError, nonce_reuse, udp_datagrams


def _udp(sport, dport, payload):
    return struct.pack(">HHHH", sport, dport, 8 + len(payload), 0) + payload


def _eth_ipv4(src, dst, payload, frag=0):
    udp = _udp(51820, 51820, payload)
    ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, frag, 64, 17, 0,
                     IPv4Address(src).packed, IPv4Address(dst).packed)
    return b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + ip + udp


def _eth_ipv6(src, dst, payload):
    udp = _udp(51820, 51820, payload)
    ip = struct.pack(">IHBB16s16s", 6 << 28, len(udp), 17, 64,
                     IPv6Address(src).packed, IPv6Address(dst).packed)
    return b"\x02" * 6 + b"\x04" * 6 + b"\x86\xdd" + ip + udp


def _pcap(frames, snap=65535):
    out = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, snap, 1)
    for i, frame in enumerate(frames):
        cut = frame[:snap]
        out += struct.pack("<IIII", 100 + i, 0, len(cut), len(frame)) + cut
    return out


def _packet(epoch, seq, body=b"x" * 20):
    return wire.encode(wire.Header(wire.TYPE_DATA, epoch, seq)) + body + b"T" * 16


def test_reads_ipv4_and_ipv6_and_skips_later_fragments(tmp_path):
    path = tmp_path / "c.pcap"
    path.write_bytes(_pcap([_eth_ipv4("10.99.0.1", "10.99.0.2", b"hello"),
                            _eth_ipv6("fd99::1", "fd99::3", b"world"),
                            _eth_ipv4("10.99.0.1", "10.99.0.2", b"tail", frag=0x0010)]))
    got = [(d.src, d.dst, d.dport, d.payload) for d in udp_datagrams(path)]
    assert got == [("10.99.0.1", "10.99.0.2", 51820, b"hello"),
                   ("fd99::1", "fd99::3", 51820, b"world")]


def test_broadcast_copies_are_fine_but_reuse_and_repeats_are_caught(tmp_path):
    a = _packet(7, 1000)
    frames = [_eth_ipv4("10.99.0.1", "10.99.0.2", a), _eth_ipv4("10.99.0.1", "10.99.0.3", a),
              _eth_ipv4("10.99.0.1", "10.99.0.2", _packet(7, 1003))]
    path = tmp_path / "ok.pcap"
    path.write_bytes(_pcap(frames))
    report = nonce_reuse(list(udp_datagrams(path)))
    assert report.ok and report.packets == 3 and report.distinct == 2

    bad = frames + [_eth_ipv6("fd99::1", "fd99::2", _packet(7, 1000, b"y" * 20)),  # reuse
                    _eth_ipv4("10.99.0.1", "10.99.0.2", _packet(7, 1003))]        # same packet again
    path.write_bytes(_pcap(bad))
    report = nonce_reuse(list(udp_datagrams(path)))
    assert report.reused == [(7, 1000)]
    assert report.repeated == [("10.99.0.2", 7, 1003)]
    assert not report.ok


def test_non_grouptun_udp_and_short_snaplen_are_handled(tmp_path):
    path = tmp_path / "s.pcap"
    path.write_bytes(_pcap([_eth_ipv4("10.99.0.1", "10.99.0.2", b"\x00" * 40),
                            _eth_ipv4("10.99.0.1", "10.99.0.2", _packet(1, 5, b"z" * 500))], snap=120))
    report = nonce_reuse(list(udp_datagrams(path)))
    assert report.packets == 1 and report.ok


def test_not_a_pcap(tmp_path):
    path = tmp_path / "x"
    path.write_bytes(b"\x0a\x0d\x0d\x0a" + b"\0" * 40)   # pcapng
    with pytest.raises(PcapError, match="classic pcap"):
        list(udp_datagrams(path))


def test_a_capture_still_being_written_is_read_record_by_record(tmp_path):
    from grouptun.lab.pcap import PcapStream, read_pcap

    data = _pcap([_eth_ipv4("10.99.0.1", "10.99.0.2", b"one"), _eth_ipv6("fd99::1", "fd99::3", b"two")])
    path = tmp_path / "c.pcap"
    path.write_bytes(data)
    stream, got = PcapStream(), []
    for at in range(0, len(data), 7):  # bytes as tcpdump -U flushes them, cut anywhere
        got += stream.feed(data[at:at + 7])
    assert got == list(read_pcap(path)) and len(got) == 2
    with pytest.raises(PcapError):
        PcapStream().feed(b"\0" * 24)


def test_ip_destination_of_ethernet_and_raw_frames():
    from grouptun.lab.pcap import ip_destination

    assert ip_destination(1, _eth_ipv4("10.99.0.1", "10.99.0.2", b"x")) == (4, IPv4Address("10.99.0.2").packed)
    assert ip_destination(101, _eth_ipv6("fd99::1", "fd99::3", b"x")[14:]) == (6, IPv6Address("fd99::3").packed)
    assert ip_destination(101, b"\x45\0") is None
