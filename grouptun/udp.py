"""The underlay UDP socket: dual-stack, non-blocking, addresses normalised.

With ``listen_address = "::"`` one AF_INET6 socket with ``IPV6_V6ONLY=0``
serves both families; the kernel shows IPv4 peers as ``::ffff:a.b.c.d``.
This module hides that: the session only ever sees ``("a.b.c.d", port)``
or a compressed IPv6 string, and sends to either form. An IPv4 listen
address gives an IPv4-only socket.

Limits: no GSO/GRO yet; a send the kernel cannot take right now (EAGAIN,
ENOBUFS) or to an unreachable peer is reported as False, never raised, so
one bad peer cannot stall the data plane.
"""

from __future__ import annotations

import errno
import ipaddress
import socket

from grouptun.errors import SystemSetupError

Endpoint = tuple[str, int]
RECV_SIZE = 65535
_CACHE_MAX = 4096  # distinct peer addresses remembered (bounded: an attacker can spray sources)
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

    def __init__(self, listen_address: str = "::", port: int = 51820, bufsize: int = 4 << 20) -> None:
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
        self.port = sock.getsockname()[1]
        self.icmp_errors = 0
        self._seen: dict[str, str] = {}
        self._targets: dict[Endpoint, tuple] = {}

    def fileno(self) -> int:
        return self._sock.fileno()

    def recvfrom(self) -> tuple[bytes, Endpoint] | None:
        """One datagram and its normalised source, or None when nothing waits."""
        for _ in range(16):
            try:
                data, addr = self._sock.recvfrom(RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                return None
            except OSError as exc:
                # ICMP errors from an earlier send surface here on Linux; skip them.
                if exc.errno in (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH):
                    self.icmp_errors += 1
                    continue
                raise
            host = self._seen.get(addr[0])
            if host is None:  # ipaddress parsing costs tens of microseconds: once per peer address
                if len(self._seen) >= _CACHE_MAX:
                    self._seen.clear()
                host = self._seen[addr[0]] = normalise_host(addr[0])
            return data, (host, addr[1])
        return None

    def _target(self, endpoint: Endpoint) -> tuple:
        host, port = endpoint
        if self.dual_stack and ":" not in host:
            return ("::ffff:" + host, port)
        return (host, port)

    def sendto(self, data: bytes, endpoint: Endpoint) -> bool:
        target = self._targets.get(endpoint)
        if target is None:
            if len(self._targets) >= _CACHE_MAX:
                self._targets.clear()
            target = self._targets[endpoint] = self._target(endpoint)
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
