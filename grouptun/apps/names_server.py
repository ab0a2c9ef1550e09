"""The DNS shell around :mod:`grouptun.apps.names`: sockets on the tunnel addresses, systemd-resolved.

:class:`NameService` answers UDP and TCP port ``[names] port`` on each of
the member's tunnel addresses, from the zone of the latest archive
(:meth:`NameService.apply`, called from the control thread: the zone is
swapped as one reference). It runs on the daemon's event loop, which the
data path shares, so before any parsing every query takes a token from its
source address's bucket (:class:`~grouptun.apps.names.ClientBudgets`), then
from the :class:`~grouptun.apps.names.QueryBudget` of all clients (dropped
and counted beyond either), the UDP
sockets' receive buffers are small (a flood is dropped by the kernel, not
queued for us), and TCP is bounded: :data:`TCP_CLIENTS` connections at
once, :data:`TCP_QUERIES` queries and :data:`TCP_IDLE` seconds each.

Where systemd-resolved runs, :class:`ResolvectlLink` registers the
addresses as the interface's DNS servers and the domain as its (search and
routing) domain, with no default route and no LLMNR or mDNS on the link,
exactly as ``resolvectl dns``, ``domain``, ``default-route``, ``llmnr`` and
``mdns`` do, and ``resolvectl
revert``\\ s the link at shutdown. /etc/resolv.conf is never touched.
Failing to bind or to register is logged and leaves the tunnel running:
names are a convenience on top of it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Callable, Protocol

from grouptun.apps.names import MAX_QUERY, ClientBudgets, NameCounters, QueryBudget, Zone, answer

log = logging.getLogger("grouptun.apps.names")

UDP_RCVBUF = 64 * 1024  # a few hundred queries queued at most; beyond that the kernel drops them
TCP_CLIENTS = 16
TCP_QUERIES = 32
TCP_IDLE = 5.0
RESOLVECTL_TIMEOUT = 5.0
_RESOLVED_SOCKETS = (Path("/run/systemd/resolve/io.systemd.Resolve"), Path("/run/systemd/resolve/resolv.conf"))


class LinkDns(Protocol):
    """Per-link DNS settings of the host's resolver."""

    def register(self, ifname: str, servers: list[str], domain: str) -> None: ...
    def revert(self, ifname: str) -> None: ...


class ResolvectlLink:
    """systemd-resolved's per-link settings through ``resolvectl`` (``run`` replaceable in tests)."""

    def __init__(self, run: Callable[[list[str]], None] | None = None) -> None:
        self._run = run or _resolvectl

    @staticmethod
    def available() -> bool:
        return shutil.which("resolvectl") is not None and any(p.exists() for p in _RESOLVED_SOCKETS)

    def register(self, ifname: str, servers: list[str], domain: str) -> None:
        self._run(["dns", ifname, *servers])
        self._run(["domain", ifname, domain])
        self._run(["default-route", ifname, "false"])  # only our domain goes to us
        # resolved's defaults would also send LLMNR (and mDNS) queries out of the tunnel link, for
        # every single-label name looked up on the host: multicast that the tunnel drops anyway
        self._run(["llmnr", ifname, "no"])
        self._run(["mdns", ifname, "no"])

    def revert(self, ifname: str) -> None:
        self._run(["revert", ifname])


def _resolvectl(args: list[str]) -> None:
    try:
        subprocess.run(["resolvectl", *args], check=True, capture_output=True, text=True,
                       timeout=RESOLVECTL_TIMEOUT)
    except subprocess.CalledProcessError as exc:
        raise OSError(f"resolvectl {' '.join(args)}: {exc.stderr.strip() or exc.returncode}") from exc
    except subprocess.TimeoutExpired as exc:
        raise OSError(f"resolvectl {' '.join(args)}: no answer in {RESOLVECTL_TIMEOUT:.0f} s") from exc


def server_text(address: str, port: int) -> str:
    """How resolvectl names a DNS server: the address, with ``:port`` (``[v6]:port``) unless 53."""
    if port == 53:
        return address
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


class NameService:
    """DNS for the group's names on the tunnel addresses (event-loop thread, except :meth:`apply`)."""

    def __init__(self, ifname: str, domain: str, port: int, budget: QueryBudget, clients: ClientBudgets,
                 clock: Callable[[], float], link: LinkDns | None) -> None:
        self.ifname, self.domain, self.port = ifname, domain, port
        self.budget, self.clients, self.clock, self.link = budget, clients, clock, link
        self.counters = NameCounters()
        self.zone = Zone.from_archive(_NoArchive, domain)
        self.bound: list[str] = []
        self._udp: list[asyncio.DatagramTransport] = []
        self._tcp: list[asyncio.AbstractServer] = []
        self._clients = 0
        self._registered = False

    def apply(self, archive) -> None:
        """Control thread: the names of a newly verified archive (one reference swap)."""
        self.zone = Zone.from_archive(archive, self.domain)

    async def start(self, addresses: list[str]) -> None:
        """Listen on each of ``addresses`` (interface form, "10.77.0.2/24"), then register with resolved."""
        loop = asyncio.get_running_loop()
        for text in addresses:
            address = str(ipaddress.ip_interface(text).ip)
            try:
                await self._listen(loop, address)
            except OSError as exc:
                log.warning("names: cannot listen on %s port %d: %s", address, self.port, exc.strerror or exc)
                continue
            self.bound.append(address)
        if self.bound:
            log.info("names: answering %s on %s port %d", self.domain, ", ".join(self.bound), self.port)
            await loop.run_in_executor(None, self._register)

    async def rebind(self, addresses: list[str]) -> None:
        """Our tunnel addresses changed (archive): listen on the new ones instead."""
        await self.close(revert=False)
        await self.start(addresses)

    async def _listen(self, loop: asyncio.AbstractEventLoop, address: str) -> None:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_RCVBUF)
            sock.bind((address, self.port))
        except OSError:
            sock.close()
            raise
        transport, _ = await loop.create_datagram_endpoint(lambda: _Udp(self), sock=sock)
        self._udp.append(transport)
        try:
            self._tcp.append(await asyncio.start_server(self._tcp_client, address, self.port,
                                                        reuse_address=True, backlog=TCP_CLIENTS))
        except OSError as exc:
            log.warning("names: no TCP on %s port %d: %s", address, self.port, exc.strerror or exc)

    def on_query(self, data: bytes, source: str, max_size: int | None = None) -> bytes | None:
        """The reply to ``data`` from ``source`` (an address), or None: dropped."""
        now = self.clock()
        if not self.clients.take(source, now):  # first: a flooder's excess must not drain the shared budget
            self.counters.client_limited += 1
            return None
        if not self.budget.take(now):
            self.counters.rate_limited += 1
            return None
        return answer(data, self.zone, self.counters, max_size)

    async def _tcp_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._clients >= TCP_CLIENTS:
            writer.close()
            return
        self._clients += 1
        source = str((writer.get_extra_info("peername") or ("?",))[0])
        try:
            for _ in range(TCP_QUERIES):
                size = int.from_bytes(await asyncio.wait_for(reader.readexactly(2), TCP_IDLE), "big")
                if size > MAX_QUERY:
                    self.counters.dropped += 1
                    break
                reply = self.on_query(await asyncio.wait_for(reader.readexactly(size), TCP_IDLE), source, 65535)
                if reply is None:
                    break
                writer.write(len(reply).to_bytes(2, "big") + reply)
                await asyncio.wait_for(writer.drain(), TCP_IDLE)
        except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError) as exc:
            log.debug("names: TCP client done: %s", type(exc).__name__)  # went away or idled: the connection ends
        finally:
            self._clients -= 1
            writer.close()

    def _register(self) -> None:
        if self.link is None:
            return
        try:
            self.link.register(self.ifname, [server_text(a, self.port) for a in self.bound], self.domain)
        except OSError as exc:
            log.warning("names: systemd-resolved not configured for %s: %s", self.ifname, exc)
            return
        self._registered = True
        log.info("names: systemd-resolved sends %s queries to %s", self.domain, ", ".join(self.bound))

    async def close(self, revert: bool = True) -> None:
        for transport in self._udp:
            transport.close()
        for server in self._tcp:
            server.close()
            await server.wait_closed()
        self._udp, self._tcp, self.bound = [], [], []
        if revert and self._registered and self.link is not None:
            try:
                await asyncio.get_running_loop().run_in_executor(None, self.link.revert, self.ifname)
            except OSError as exc:
                log.warning("names: resolvectl revert %s: %s", self.ifname, exc)
            self._registered = False

    def status(self) -> dict:
        return {"domain": self.domain, "listening": list(self.bound), "port": self.port,
                "names": len(self.zone.addresses), "resolved": self._registered, "clients": len(self.clients),
                "clients_evicted": self.clients.evicted, **self.counters.snapshot()}


class _NoArchive:
    """The zone before the first archive: the domain, no names."""

    version = 0
    members: tuple = ()


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, service: NameService) -> None:
        self.service = service
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        reply = self.service.on_query(data, addr[0])
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("names: %s", exc)
