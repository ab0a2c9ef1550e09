"""The underlay UDP socket: dual-stack, non-blocking, addresses normalised.

With ``listen_address = "::"`` one AF_INET6 socket with ``IPV6_V6ONLY=0``
serves both families; the kernel shows IPv4 peers as ``::ffff:a.b.c.d``.
This module hides that: the session only ever sees ``("a.b.c.d", port)``
or a compressed IPv6 string, and sends to either form. An IPv4 listen
address gives an IPv4-only socket.

It is the :class:`grouptun.data.devices.UdpTransport` of the data path: ``send_run``
and ``recv_runs`` hide the offloads (``offload="auto"``, the default):
``UDP_SEGMENT`` (GSO, Linux >= 4.18) sends up to 64 equal-sized datagrams in
one ``sendmsg``, and ``UDP_GRO`` (Linux >= 5.0) hands consecutive datagrams of
one sender back as one buffer plus their size. Each is probed on the socket
and stays off where the kernel refuses it; ``gso``/``gro`` say what is on.
With GRO on, ``recvfrom`` must not be used (it cannot tell where datagrams
end). A GSO send the device refuses (EIO: no checksum offload; EINVAL:
segment above the path MTU) is re-sent datagram by datagram and GSO turned
off for the socket.

Limits: a send the kernel cannot take right now (EAGAIN, ENOBUFS) or to an
unreachable peer is reported as False, never raised, so one bad peer cannot
stall the data plane.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct

from grouptun.errors import ConfigError, SystemSetupError
from grouptun.data.offload import linux as offload_linux

Endpoint = tuple[str, int]
RECV_SIZE = 65535
_CACHE_MAX = 4096  # distinct peer addresses remembered (bounded: an attacker can spray sources)
# Linux reports ICMP errors for an earlier send on a later receive: skip and count them.
_ICMP_ERRNOS = frozenset((errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH))
_GSO_SIZE = struct.Struct("=H")
_GRO_SIZE = struct.Struct("=i")
_GRO_SPACE = socket.CMSG_SPACE(_GRO_SIZE.size)
_MSG_TRUNC = int(socket.MSG_TRUNC)  # a plain int: "flags & MSG_TRUNC" on the enum costs a Python-level call
SEND_MAX = 65507  # bytes of datagrams per GSO send: the UDP payload limit under a 65535-byte IP packet
MAX_SEGMENTS = 64  # kernel limit per UDP_SEGMENT send
RECV_ROOM = 65536  # one UDP (GRO) receive
RECV_RUNS = 4  # back-to-back receives of one sender gathered into one run at most
_SOFT_SEND_ERRORS = {errno.EAGAIN, errno.ENOBUFS, errno.ENETUNREACH, errno.EHOSTUNREACH,
                     errno.ECONNREFUSED, errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT, errno.EINVAL,
                     errno.EPERM, errno.EMSGSIZE}


def normalise_host(host: str) -> str:
    """Compressed IPv6, or dotted IPv4 for a v4-mapped address."""
    addr = ipaddress.ip_address(host.split("%", 1)[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return str(addr)


class UdpTransport:
    """The daemon's one UDP socket; ``fileno()`` is for the event loop."""

    def __init__(self, listen_address: str = "::", port: int = 51820, bufsize: int = 4 << 20,
                 offload: str = "auto") -> None:
        if offload not in ("auto", "off"):
            raise ConfigError("daemon.offload", f"must be 'auto' or 'off', not {offload!r}")
        addr = ipaddress.ip_address(listen_address)
        self.dual_stack = addr.version == 6
        family = socket.AF_INET6 if self.dual_stack else socket.AF_INET
        try:
            sock = socket.socket(family, socket.SOCK_DGRAM)
        except OSError as exc:
            raise SystemSetupError(f"cannot open UDP socket: {exc.strerror}") from exc
        try:
            if self.dual_stack:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                sock.setsockopt(socket.SOL_SOCKET, opt, bufsize)
            sock.bind((listen_address, port))
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            raise SystemSetupError(f"cannot bind UDP {listen_address} port {port}: {exc.strerror}") from exc
        self._sock = sock
        self.gso = offload == "auto" and offload_linux.udp_gso_supported(sock)
        self.gro = offload == "auto" and offload_linux.enable_udp_gro(sock)
        self.gso_fallbacks = 0
        self.port = sock.getsockname()[1]
        self.icmp_errors = 0
        self.truncated = 0
        self._seen: dict[str, str] = {}
        self._targets: dict[Endpoint, tuple] = {}
        self._runs = bytearray(RECV_RUNS * RECV_ROOM)

    def fileno(self) -> int:
        return self._sock.fileno()

    def _source(self, addr) -> Endpoint:
        # ipaddress parsing costs tens of microseconds: once per peer address (cached)
        host = self._seen.get(addr[0])
        if host is None:
            if len(self._seen) >= _CACHE_MAX:
                self._seen.clear()
            host = self._seen[addr[0]] = normalise_host(addr[0])
        return (host, addr[1])

    def recv_batch(self, buf: bytearray | memoryview) -> tuple[int, int, Endpoint] | None:
        """Datagrams into ``buf`` (>= 65535 bytes): (length, datagram size, source), or None when nothing waits.

        With GRO the buffer holds ``length // size`` datagrams of ``size`` bytes and a last shorter one;
        without, one datagram (size == length). A truncated receive is dropped (counted in ``truncated``).
        """
        sock = self._sock
        for _ in range(16):
            try:
                n, ancdata, flags, addr = sock.recvmsg_into([buf], _GRO_SPACE)
            except (BlockingIOError, InterruptedError):
                return None
            except OSError as exc:
                if exc.errno in _ICMP_ERRNOS:
                    self.icmp_errors += 1
                    continue
                raise
            if flags & _MSG_TRUNC:
                self.truncated += 1
                continue
            seg = n
            for level, kind, data in ancdata:
                if level == offload_linux.SOL_UDP and kind == offload_linux.UDP_GRO and len(data) >= 4:
                    seg = _GRO_SIZE.unpack_from(data)[0] or n
            return n, seg, self._source(addr)
        return None

    def describe(self) -> str:
        return f"udp gso={'on' if self.gso else 'off'} gro={'on' if self.gro else 'off'}"

    def recv_runs(self, budget: int):
        """Runs of datagrams of one source (:func:`gather_runs` over :meth:`recv_batch`)."""
        return gather_runs(self.recv_batch, self._runs, budget)

    def send_run(self, data: memoryview, seg: int, endpoint: Endpoint) -> int:
        """Send ``data`` as datagrams of ``seg`` bytes (the last may be shorter); returns how many went out.

        One ``sendmsg`` with UDP_SEGMENT per up to 64 datagrams when ``gso`` is on, else one ``sendto`` each.
        """
        if len(data) == seg:
            return int(self.sendto(data, endpoint))
        chunk = max(1, min(MAX_SEGMENTS, SEND_MAX // seg)) * seg
        return sum(self._send_chunk(data[at:at + chunk], seg, endpoint) for at in range(0, len(data), chunk))

    def _send_chunk(self, data: memoryview, seg: int, endpoint: Endpoint) -> int:
        total = len(data)
        count = -(-total // seg) if seg else 0
        target = self._targets.get(endpoint)
        if target is None:
            target = self._remember(endpoint)
        if self.gso and count > 1:
            try:
                self._sock.sendmsg([data], [(offload_linux.SOL_UDP, offload_linux.UDP_SEGMENT,
                                             _GSO_SIZE.pack(seg))], 0, target)
                return count
            except OSError as exc:
                if exc.errno not in (errno.EIO, errno.EINVAL, errno.EMSGSIZE):
                    if exc.errno in _SOFT_SEND_ERRORS or isinstance(exc, BlockingIOError):
                        return 0
                    raise
                # The device cannot segment (no checksum offload) or the segment does not fit the path.
                self.gso = False
                self.gso_fallbacks += 1
        sent = 0
        for off in range(0, total, seg):
            sent += self.sendto(data[off:off + seg], endpoint)
        return sent

    def _remember(self, endpoint: Endpoint) -> tuple:
        if len(self._targets) >= _CACHE_MAX:
            self._targets.clear()
        target = self._targets[endpoint] = self._target(endpoint)
        return target

    def _target(self, endpoint: Endpoint) -> tuple:
        host, port = endpoint
        if self.dual_stack and ":" not in host:
            return ("::ffff:" + host, port)
        return (host, port)

    def sendto(self, data: bytes, endpoint: Endpoint) -> bool:
        target = self._targets.get(endpoint)
        if target is None:
            target = self._remember(endpoint)
        try:
            self._sock.sendto(data, target)
            return True
        except OSError as exc:
            if exc.errno in _SOFT_SEND_ERRORS or isinstance(exc, (BlockingIOError, socket.gaierror)):
                return False
            raise

    def can_reach(self, host: str) -> bool:
        """Whether this socket can address ``host`` at all (an IPv6 peer needs a v6 socket)."""
        return self.dual_stack or ":" not in host

    def close(self) -> None:
        self._sock.close()


def gather_runs(recv_batch, buf: bytearray, budget: int):
    """Runs of datagrams from ``recv_batch(view)`` (``(length, datagram size, source)`` or None when
    nothing waits), received into ``buf``: back-to-back GRO receives of one sender with full-size
    datagrams only are one run, so that its fixed cost is paid once for all of them. The first receive
    of a drain, if it is one datagram, is given at once (idle round trip)."""
    view = memoryview(buf)
    held = seg = 0
    source = None
    for i in range(MAX_SEGMENTS):
        if budget <= 0:
            break
        got = recv_batch(view[held:held + RECV_ROOM])
        if got is None:
            break
        n, size, sender = got
        budget -= n
        if not i and n <= size or not n:  # a lone datagram first; an empty one has no size to step by
            yield view[held:held + n], n, sender
            continue
        if held and (size != seg or sender != source):
            yield view[:held], seg, source
            buf[:n] = bytes(view[held:held + n])  # rare: another sender or size interleaved
            held = 0
        held, seg, source = held + n, size, sender
        if n % seg or held + RECV_ROOM > len(buf):
            yield view[:held], seg, source
            held = 0
    if held:
        yield view[:held], seg, source
