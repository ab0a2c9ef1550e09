"""UdpTransport batch I/O on loopback (no root): GSO sends, GRO receives, fallbacks."""

from __future__ import annotations

import errno
import select

import pytest

from grouptun.errors import ConfigError

from grouptun.data.udp import UdpTransport


def wait_readable(t: UdpTransport) -> None:
    assert select.select([t.fileno()], [], [], 2.0)[0], "nothing arrived"


def receive_all(t: UdpTransport, expect: int, calls: list | None = None) -> list[bytes]:
    buf = bytearray(65536 + 4096)
    got: list[bytes] = []
    calls = calls if calls is not None else []
    for _ in range(expect + 5):
        if len(got) >= expect:
            break
        wait_readable(t)
        r = t.recv_batch(buf)
        if r is None:
            continue
        n, seg, source = r
        calls.append(n)
        assert source == ("127.0.0.1", tx_port[0])
        got += [bytes(buf[o:min(o + seg, n)]) for o in range(0, n, seg)]
    return got


tx_port = [0]


@pytest.mark.parametrize("rx_offload", ["auto", "off"])
@pytest.mark.parametrize("listen", ["::", "127.0.0.1"])
def test_gso_batch_arrives_as_the_same_datagrams(rx_offload, listen):
    tx = UdpTransport(listen, 0)
    rx = UdpTransport(listen, 0, offload=rx_offload)
    tx_port[0] = tx.port
    try:
        if rx_offload == "off":
            assert not rx.gro
        datagrams = [bytes([k]) * 1200 for k in range(7)] + [b"\xee" * 333]
        data = memoryview(b"".join(datagrams))
        assert tx.send_run(data, 1200, ("127.0.0.1", rx.port)) == 8
        calls: list = []
        assert receive_all(rx, 8, calls) == datagrams
        if rx.gro and tx.gso:  # loopback hands the GSO batch to a GRO socket whole
            assert len(calls) < 8
        assert rx.recv_batch(bytearray(70000)) is None  # drained: EAGAIN is None
    finally:
        tx.close()
        rx.close()


def test_offload_off_means_no_gso_no_gro_and_bad_mode_refused():
    t = UdpTransport("127.0.0.1", 0, offload="off")
    try:
        assert (t.gso, t.gro) == (False, False)
    finally:
        t.close()
    with pytest.raises(ConfigError, match="daemon.offload"):
        UdpTransport("127.0.0.1", 0, offload="yes")


class RefusingGso:
    """The real socket, except that a GSO sendmsg fails the way a device without csum offload does."""

    def __init__(self, sock) -> None:
        self._sock = sock

    def sendmsg(self, *args):
        raise OSError(errno.EIO, "Input/output error")

    def __getattr__(self, name):
        return getattr(self._sock, name)


def test_gso_refused_by_the_device_falls_back_once_and_sends_each():
    tx = UdpTransport("127.0.0.1", 0)
    rx = UdpTransport("127.0.0.1", 0, offload="off")
    tx_port[0] = tx.port
    tx.gso = True
    tx._sock = RefusingGso(tx._sock)
    try:
        datagrams = [bytes([k]) * 100 for k in range(4)]
        assert tx.send_run(memoryview(b"".join(datagrams)), 100, ("127.0.0.1", rx.port)) == 4
        assert tx.gso is False and tx.gso_fallbacks == 1
        assert receive_all(rx, 4) == datagrams
    finally:
        tx._sock = tx._sock._sock
        tx.close()
        rx.close()
