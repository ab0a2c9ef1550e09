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
from grouptun.offload.vnet import VNET_HDR_LEN

log = logging.getLogger("grouptun.offload")

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
_GSO_CMSG = struct.Struct("=H")
_GRO_CMSG = struct.Struct("=i")
GRO_ANCILLARY = socket.CMSG_SPACE(_GRO_CMSG.size)


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


def udp_socket(family: int, address: tuple, *, gro: bool = True, reuseport: bool = False,
               nonblocking: bool = True, bufsize: int = 4 << 20) -> tuple[socket.socket, bool, bool]:
    """A bound UDP socket; returns (socket, gso available, gro enabled)."""
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if reuseport:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
            sock.setsockopt(socket.SOL_SOCKET, opt, bufsize)
        sock.bind(address)
        sock.setblocking(not nonblocking)
        gso = udp_gso_supported(sock)
        gro_on = enable_udp_gro(sock) if gro else False
    except OSError as e:
        sock.close()
        raise SystemSetupError(f"UDP socket on {address}: {e.strerror}") from e
    log.info("udp %s: gso=%s gro=%s", address, "on" if gso else "off", "on" if gro_on else "off")
    return sock, gso, gro_on


def send_gso(sock: socket.socket, data: bytes | bytearray | memoryview, segment_size: int, address) -> int:
    """Send ``data`` as datagrams of ``segment_size`` (the last may be shorter) in one call.

    A single datagram (len <= segment_size) is sent without the control message.
    """
    if len(data) <= segment_size:
        return sock.sendto(data, address)
    return sock.sendmsg([data], [(SOL_UDP, UDP_SEGMENT, _GSO_CMSG.pack(segment_size))], 0, address)


def recv_gro(sock: socket.socket, buf: bytearray | memoryview) -> tuple[int, int, object]:
    """Receive into ``buf``: (bytes, segment size, source). Without GRO the segment size is the length."""
    n, ancdata, flags, source = sock.recvmsg_into([buf], GRO_ANCILLARY)
    seg = n
    for level, kind, data in ancdata:
        if level == SOL_UDP and kind == UDP_GRO and len(data) >= _GRO_CMSG.size:
            seg = _GRO_CMSG.unpack_from(data)[0]
    if flags & socket.MSG_TRUNC:
        raise SystemSetupError(f"UDP receive buffer of {len(buf)} bytes too small (truncated)")
    return n, seg, source


def probe() -> dict[str, object]:
    """What this kernel offers, for the start-up log: TUN features and UDP GSO/GRO."""
    feats = tun_features() if os.path.exists("/dev/net/tun") else 0
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        gso = udp_gso_supported(sock)
        gro = enable_udp_gro(sock)
    finally:
        sock.close()
    return {"kernel": os.uname().release, "tun_vnet_hdr": bool(feats & IFF_VNET_HDR),
            "tun_multi_queue": bool(feats & IFF_MULTI_QUEUE), "udp_gso": gso, "udp_gro": gro}
