"""``grouptun ping MEMBER``: is MEMBER reachable through the tunnel, how fast, along which path.

A real ICMP echo (ICMPv6 with ``-6``) to MEMBER's overlay address, sent
from this host's own overlay address and bound to the group's interface,
so it crosses both daemons like any other traffic. After each reply the
daemon's status (control socket) gives the endpoint MEMBER is reached at
and the epoch this host sends on; one line per request, then a summary::

    reply from bob 10.77.0.3: seq=1 time=0.84 ms endpoint 192.0.2.11:51820 epoch 2

The echo goes through icmplib: a raw socket as root, otherwise an
unprivileged ICMP datagram socket (``net.ipv4.ping_group_range`` must
include the caller's group). Exit status as ping(8): 0 when a reply came
back, 1 when none did, 2 for a usage error (unknown member, no address).
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import socket
import sys
import time
from pathlib import Path
from typing import Callable, Protocol, TextIO

from grouptun.ops.ctlsocket import DEFAULT_RUN_DIR

NO_REPLY = 1
USAGE = 2


class EchoProbe(Protocol):
    """Sends echo requests to one address and waits for the matching reply."""

    def echo(self, sequence: int, timeout: float) -> float | None:
        """Round trip in seconds, or None when no reply came within ``timeout``."""

    def close(self) -> None: ...


def _bounded(kind: type, low: float, high: float) -> Callable[[str], float]:
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be from {low:g} to {high:g}, not {text}")
        return value
    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("member", help="member name, as `grouptun status` lists it")
    parser.add_argument("--group", help="group name (default: the only running group)")
    parser.add_argument("--socket", type=Path, help="control socket (default: /run/grouptun/GROUP.sock)")
    parser.add_argument("--run-dir", type=Path, default=DEFAULT_RUN_DIR)
    parser.add_argument("-c", "--count", type=_bounded(int, 1, 1000), default=3, help="echo requests (default 3)")
    parser.add_argument("-W", "--timeout", type=_bounded(float, 0.05, 60), default=1.0,
                        help="seconds to wait for each reply (default 1)")
    parser.add_argument("-i", "--interval", type=_bounded(float, 0.01, 60), default=1.0,
                        help="seconds between requests (default 1)")
    family = parser.add_mutually_exclusive_group()
    family.add_argument("-4", dest="family", action="store_const", const=4, default=4, help="IPv4 (default)")
    family.add_argument("-6", dest="family", action="store_const", const=6, help="IPv6")


class IcmpProbe:
    """icmplib echo from ``source`` to ``target``, bound to ``interface``."""

    def __init__(self, source: str, target: str, interface: str) -> None:
        import icmplib

        from grouptun.errors import SystemSetupError

        self._icmplib = icmplib
        self.target = target
        kind = icmplib.ICMPv6Socket if ":" in target else icmplib.ICMPv4Socket
        try:
            self._sock = kind(address=source, privileged=os.geteuid() == 0)
        except icmplib.ICMPLibError as exc:
            raise SystemSetupError(f"cannot open an ICMP socket from {source}: {exc} "
                                   "(run as root, or widen net.ipv4.ping_group_range)") from exc
        try:
            self._sock.sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, interface.encode())
        except OSError as exc:
            self._sock.close()
            raise SystemSetupError(f"cannot bind the ICMP socket to {interface}: {exc.strerror}") from exc
        self._id = icmplib.utils.unique_identifier()

    def echo(self, sequence: int, timeout: float) -> float | None:
        request = self._icmplib.ICMPRequest(self.target, self._id, sequence)
        try:
            self._sock.send(request)
            reply = self._sock.receive(request, timeout)
            reply.raise_for_status()
        except self._icmplib.ICMPLibError:  # timeout, or an ICMP error (unreachable) instead of a reply
            return None
        return reply.time - request.time

    def close(self) -> None:
        self._sock.close()


def pick_target(st: dict, name: str, family: int) -> tuple[str, str] | str:
    """(our source address, MEMBER's address) of ``family``, or why there is none."""
    members = (st.get("session") or {}).get("members") or []
    member = next((m for m in members if m.get("name") == name and not m.get("self")), None)
    if member is None:
        known = ", ".join(m.get("name") for m in members if not m.get("self")) or "none yet (no epoch)"
        return f"no member {name!r} in group {st.get('group')}; members: {known}"

    def of_family(addresses) -> str | None:
        found = [str(ipaddress.ip_interface(a).ip) for a in addresses or []
                 if ipaddress.ip_interface(a).version == family]
        return found[0] if found else None

    target, source = of_family(member.get("addresses")), of_family(st.get("addresses"))
    if target is None or source is None:
        return f"{'member ' + name if target is None else 'this host'} has no IPv{family} overlay address"
    return source, target


def ping_member(status: Callable[[], dict], probe: EchoProbe, name: str, target: str, count: int,
                interval: float, timeout: float, out: TextIO) -> int:
    """Echo ``count`` times, print each result with the daemon's endpoint and epoch; the exit status."""
    from grouptun.cli.status import current_epoch

    rtts: list[float] = []
    for sequence in range(1, count + 1):
        started = time.monotonic()
        rtt = probe.echo(sequence, timeout)
        if rtt is None:
            print(f"no reply from {name} {target}: seq={sequence} within {timeout:g} s", file=out, flush=True)
        else:
            rtts.append(rtt)
            st = status()
            member = next((m for m in (st.get("session") or {}).get("members") or [] if m.get("name") == name), {})
            print(f"reply from {name} {target}: seq={sequence} time={rtt * 1000:.2f} ms "
                  f"endpoint {member.get('endpoint') or '(none)'} epoch {current_epoch(st)}", file=out, flush=True)
        if sequence < count:
            time.sleep(max(0.0, interval - (time.monotonic() - started)))
    summary = f"{name}: {count} sent, {len(rtts)} received"
    if rtts:
        summary += (f", rtt min/avg/max {min(rtts) * 1000:.2f}/{sum(rtts) / len(rtts) * 1000:.2f}/"
                    f"{max(rtts) * 1000:.2f} ms")
    print(summary, file=out)
    return 0 if rtts else NO_REPLY


def run(args: argparse.Namespace) -> int:
    from grouptun.cli.status import daemon_sockets
    from grouptun.ops.ctlsocket import request

    paths = daemon_sockets(args.group, args.socket, args.run_dir)
    if len(paths) > 1:
        names = ", ".join(p.stem for p in paths)
        print(f"grouptun ping: several groups are running ({names}); name one with --group", file=sys.stderr)
        return USAGE
    st = request(paths[0], "status")
    picked = pick_target(st, args.member, args.family)
    if isinstance(picked, str):
        print(f"grouptun ping: {picked}", file=sys.stderr)
        return USAGE
    source, target = picked
    probe = IcmpProbe(source, target, st.get("interface"))
    try:
        return ping_member(lambda: request(paths[0], "status"), probe, args.member, target,
                           args.count, args.interval, args.timeout, sys.stdout)
    finally:
        probe.close()
