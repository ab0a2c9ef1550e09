"""The data path's device contracts, in the manner of wireguard-go's ``tun.Device`` and ``conn.Bind``.

The loop (:mod:`grouptun.data.plane`) sees only these two Protocols. Each device hides its offloads:

- :class:`TunDevice`: :meth:`~TunDevice.read_runs` gives checksum-complete plain IP packets grouped
  into runs of one flow (it owns the virtio-net header, TSO/USO splitting and the gathering of plain
  packets); :meth:`~TunDevice.write` takes what a run opened (it owns GRO coalescing).
- :class:`UdpTransport`: :meth:`~UdpTransport.send_run` sends a run of datagrams to one endpoint (it
  owns UDP GSO), :meth:`~UdpTransport.recv_runs` gives runs of datagrams of one source (UDP GRO).

A device without offloads gives runs of one. Implementations: :class:`grouptun.data.tun.TunDevice` and
:class:`grouptun.data.udp.UdpTransport` on Linux; the in-memory fakes of tests/daemon/fakes.py, which run
the same offload code (:mod:`grouptun.data.offload.tunruns`) over queues.

Runs are views into buffers the device owns: each is valid until the iterator is resumed, so the
loop seals or opens it before asking for the next (which also keeps what was read first leaving
first).
"""

from __future__ import annotations

from typing import Iterator, NamedTuple, Protocol

from grouptun.core.run import Opened

Endpoint = tuple[str, int]


class PlainRun(NamedTuple):
    """``count`` IP packets at ``buf[offset + j*stride:]``, ``size`` bytes each but the last (``last``)."""

    buf: memoryview
    offset: int
    stride: int
    count: int
    size: int
    last: int


class TunDevice(Protocol):
    counters: dict[str, int]  # the device's own drops: malformed reads, writes the kernel refused

    def fileno(self) -> int: ...

    def describe(self) -> str: ...

    def read_runs(self, budget: int) -> Iterator[PlainRun]:
        """Runs read now, until EAGAIN or about ``budget`` bytes; a malformed read is dropped and counted."""

    def write(self, out: bytearray, opened: Opened) -> int:
        """Hand the accepted inner packets of ``opened`` (in ``out``) to the device; how many it took
        (some may wait in the coalescer until :meth:`flush`)."""

    def flush(self) -> int:
        """Write what :meth:`write` held back to coalesce (end of a drain); how many writes went out."""


class UdpTransport(Protocol):
    def fileno(self) -> int: ...

    def describe(self) -> str: ...

    def send_run(self, data: memoryview, seg: int, endpoint: Endpoint) -> int:
        """Send ``data`` as datagrams of ``seg`` bytes (the last may be shorter); how many went out."""

    def recv_runs(self, budget: int) -> Iterator[tuple[memoryview, int, Endpoint]]:
        """``(datagrams, datagram size, source)`` received now, until EAGAIN or about ``budget`` bytes."""

    def can_reach(self, host: str) -> bool:
        """Whether this socket can address ``host`` at all (an IPv6 peer needs a v6 socket)."""

    def close(self) -> None: ...
