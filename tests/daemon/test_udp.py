"""UDP transport: dual-stack socket, IPv4 peers shown without the ::ffff: prefix, soft send errors."""

from __future__ import annotations

import socket

import pytest

from grouptun.errors import SystemSetupError
from grouptun.data.udp import UdpTransport, normalise_host


@pytest.mark.parametrize("raw,clean", [("::ffff:10.0.0.1", "10.0.0.1"), ("10.0.0.1", "10.0.0.1"),
                                       ("fd00:0::1", "fd00::1"), ("fe80::1%eth0", "fe80::1")])
def test_normalise_host(raw, clean):
    assert normalise_host(raw) == clean


def test_dual_stack_round_trip_ipv4_and_ipv6():
    a, b = UdpTransport("::", 0), UdpTransport("::", 0)
    buf = bytearray(65535)
    try:
        assert a.recv_batch(buf) is None  # nothing waiting: EAGAIN -> None
        for host in ("127.0.0.1", "::1"):
            assert a.sendto(b"ping-" + host.encode(), (host, b.port))
            for _ in range(1000):
                got = b.recv_batch(buf)
                if got:
                    break
            length, size, (src, port) = got
            assert bytes(buf[:length]) == b"ping-" + host.encode() and size == length
            assert src == host and port == a.port
    finally:
        a.close()
        b.close()


def test_ipv4_only_socket_cannot_reach_ipv6():
    s = UdpTransport("127.0.0.1", 0)
    try:
        assert not s.can_reach("::1") and s.can_reach("127.0.0.1")
        assert s.sendto(b"x", ("::1", 9)) is False  # refused softly, no exception
    finally:
        s.close()


def test_bind_conflict_is_a_setup_error():
    s = UdpTransport("127.0.0.1", 0)
    try:
        with pytest.raises(SystemSetupError, match="cannot bind"):
            UdpTransport("127.0.0.1", s.port)
    finally:
        s.close()


def test_icmp_error_is_skipped_not_raised():
    s = UdpTransport("127.0.0.1", 0)
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    dead = probe.getsockname()[1]
    probe.close()
    try:
        s.sendto(b"x", ("127.0.0.1", dead))  # port unreachable comes back as ECONNREFUSED
        buf = bytearray(65535)
        for _ in range(50):
            assert s.recv_batch(buf) is None
        # Linux reports the ICMP error on an unconnected UDP socket only with IP_RECVERR;
        # either way the receive must not raise.
    finally:
        s.close()
