"""Linux shell for the offloads: TUN with virtio-net headers, UDP GSO/GRO.

Each feature is probed and falls back cleanly, and ``describe`` says which
path is active so the daemon can log it once at start:

- TUN: ``IFF_VNET_HDR`` + ``TUNSETVNETHDRSZ(10)`` + ``TUNSETOFFLOAD``, asking
  for CSUM|TSO4|TSO6|USO4|USO6, then without USO (Linux < 6.2), then nothing
  (plain packets behind an all-zero header). ``IFF_MULTI_QUEUE`` on request:
  every ``open_tun`` with the same name adds one queue (one per worker).
- UDP: ``UDP_SEGMENT`` (103, Linux >= 4.18) sends up to 64 equal-sized
  datagrams per ``sendmsg``; ``UDP_GRO`` (104, Linux >= 5.0) hands them back
  as one buffer plus the segment size in a control message.

Everything here raises SystemSetupError (with the failing step) or returns
plain values; no global state.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import socket
import struct
from dataclasses import dataclass

from grouptun.errors import SystemSetupError
from grouptun.data.offload.vnet import VNET_HDR_LEN

log = logging.getLogger("grouptun.data.offload")

TUNSETIFF = 0x400454CA
TUNGETFEATURES = 0x800454CF
TUNSETOFFLOAD = 0x400454D0
TUNSETVNETHDRSZ = 0x400454D8
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
IFF_MULTI_QUEUE = 0x0100
IFF_VNET_HDR = 0x4000

TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
TUN_F_TSO_ECN = 0x08
TUN_F_USO4 = 0x20
TUN_F_USO6 = 0x40
OFFLOAD_LADDER = (
    TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_USO4 | TUN_F_USO6,
    TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6,
    TUN_F_CSUM,
    0,
)

SOL_UDP = 17
UDP_SEGMENT = 103
UDP_GRO = 104
UDP_MAX_SEGMENTS = 64  # kernel limit per GSO send (include/linux/udp.h; 128 on newest kernels)


def offload_names(flags: int) -> str:
    names = [n for bit, n in ((TUN_F_CSUM, "csum"), (TUN_F_TSO4, "tso4"), (TUN_F_TSO6, "tso6"),
                              (TUN_F_USO4, "uso4"), (TUN_F_USO6, "uso6")) if flags & bit]
    return "+".join(names) or "none"


@dataclass
class Tun:
    """One TUN queue. ``vnet_hdr``: every read/write starts with a 10-byte virtio-net header."""

    fd: int
    name: str
    vnet_hdr: bool
    offloads: int
    multi_queue: bool

    def read_into(self, buf: bytearray | memoryview) -> int:
        """One packet into ``buf`` (no allocation); BlockingIOError when empty (non-blocking)."""
        return os.readv(self.fd, [buf])

    def write(self, data: bytes | bytearray | memoryview) -> int:
        return os.write(self.fd, data)

    def describe(self) -> str:
        return (f"tun {self.name}: vnet_hdr={'on' if self.vnet_hdr else 'off'} offloads={offload_names(self.offloads)}"
                f" multi_queue={'on' if self.multi_queue else 'off'}")

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def tun_features() -> int:
    """IFF_* flags this kernel's TUN driver supports (TUNGETFEATURES), 0 if unknown."""
    try:
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    except OSError as e:
        raise SystemSetupError(f"cannot open /dev/net/tun: {e.strerror}") from e
    try:
        buf = fcntl.ioctl(fd, TUNGETFEATURES, struct.pack("I", 0))
        return struct.unpack("I", buf)[0]
    except OSError:
        return 0
    finally:
        os.close(fd)


def open_tun(name: str, *, vnet_hdr: bool = True, multi_queue: bool = False, nonblocking: bool = True,
             offloads: tuple[int, ...] = OFFLOAD_LADDER) -> Tun:
    """Create or attach to TUN ``name`` (plain IP, no packet-info prefix).

    With ``vnet_hdr`` it asks for the first accepted entry of ``offloads``.
    Raises SystemSetupError naming the step that failed.
    """
    if not 0 < len(name.encode()) < 16:
        raise SystemSetupError(f"bad TUN name {name!r}: 1..15 bytes")
    flags = IFF_TUN | IFF_NO_PI | (IFF_VNET_HDR if vnet_hdr else 0) | (IFF_MULTI_QUEUE if multi_queue else 0)
    try:
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC | (os.O_NONBLOCK if nonblocking else 0))
    except OSError as e:
        raise SystemSetupError(f"cannot open /dev/net/tun: {e.strerror}") from e
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", name.encode(), flags))
        accepted = 0
        if vnet_hdr:
            fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", VNET_HDR_LEN))
            accepted = _set_offload(fd, offloads)
    except OSError as e:
        os.close(fd)
        raise SystemSetupError(f"TUN {name}: setup failed: {e.strerror}") from e
    tun = Tun(fd, name, vnet_hdr, accepted, multi_queue)
    log.debug("%s", tun.describe())  # the daemon logs its one "data path" line
    return tun


def _set_offload(fd: int, ladder: tuple[int, ...]) -> int:
    for flags in ladder:
        try:
            fcntl.ioctl(fd, TUNSETOFFLOAD, flags)
            return flags
        except OSError as e:
            if e.errno != errno.EINVAL:
                raise
    return 0


def udp_gso_supported(sock: socket.socket) -> bool:
    try:
        sock.getsockopt(SOL_UDP, UDP_SEGMENT)
        return True
    except OSError:
        return False


def enable_udp_gro(sock: socket.socket) -> bool:
    """Turn on UDP_GRO; False where the kernel lacks it (then datagrams come one by one)."""
    try:
        sock.setsockopt(SOL_UDP, UDP_GRO, 1)
        return True
    except OSError:
        return False
