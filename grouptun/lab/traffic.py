"""ping, iperf3 and counted UDP flows between lab hosts, with their output parsed.

Every call runs under a timeout. iperf3 runs with ``--json`` and its
report is reduced to the figures the tests and the demo use; the raw JSON
stays available on the result.

Limits: one iperf3 server per (host, port) at a time; ``-i`` intervals
below 0.1 s are refused by iperf3 itself.
"""

from __future__ import annotations

import json
import re
import select
import signal
import socket
import struct
import sys
import time
from dataclasses import dataclass, field

from grouptun.lab import netns
from grouptun.lab.netns import LabError
from grouptun.lab.process import Proc
from grouptun.lab.topology import Lab
from grouptun.lab.wait import wait_until

_PING_COUNTS = re.compile(r"(\d+) packets transmitted, (\d+) (?:packets )?received")
_PING_RTT = re.compile(r"= ([\d.]+)/([\d.]+)/([\d.]+)/([\d.]+) ms")


@dataclass(frozen=True)
class PingResult:
    src: str
    dst: str
    sent: int
    received: int
    rtt_avg_ms: float | None
    output: str

    @property
    def ok(self) -> bool:
        return self.sent > 0 and self.received == self.sent


def ping(lab: Lab, src: str, dst: str, count: int = 3, interval: float = 0.2,
         wait_s: float = 1.0, size: int | None = None, extra: tuple[str, ...] = ()) -> PingResult:
    """``ping -c count`` from host ``src`` to address ``dst``."""
    argv = ["ping", "-n", "-q", "-c", str(count), "-i", f"{interval:g}", "-W", f"{wait_s:g}"]
    if size is not None:
        argv += ["-s", str(size)]
    argv += [*extra, dst]
    budget = count * interval + wait_s + 10
    proc = lab.exec(src, argv, timeout=budget, check=False)
    return parse_ping(src, dst, proc.stdout + proc.stderr)


def parse_ping(src: str, dst: str, out: str) -> PingResult:
    """Counts and average RTT from iputils ``ping -q`` output (0/0 if absent)."""
    counts = _PING_COUNTS.search(out)
    rtt = _PING_RTT.search(out)
    sent, received = (int(counts.group(1)), int(counts.group(2))) if counts else (0, 0)
    return PingResult(src, dst, sent, received, float(rtt.group(2)) if rtt else None, out)


def wait_ping(lab: Lab, src: str, dst: str, timeout: float = 20.0) -> bool:
    """True once one ping from ``src`` to ``dst`` is answered within ``timeout`` s."""
    return bool(wait_until(lambda: ping(lab, src, dst, count=1, wait_s=1.0).ok,
                           timeout=timeout, interval=0.2))


@dataclass(frozen=True)
class IperfResult:
    ok: bool
    error: str | None
    seconds: float
    sent_bps: float
    received_bps: float
    retransmits: int | None
    lost_percent: float | None            # UDP only
    intervals: list[tuple[float, float, int]] = field(repr=False)   # (start, end, bytes)
    raw: dict = field(repr=False, default_factory=dict)

    @property
    def mbps(self) -> float:
        return self.received_bps / 1e6

    def longest_stall(self, min_bytes: int = 1) -> float:
        """Longest run of consecutive intervals that moved < ``min_bytes``, in s."""
        longest = current = 0.0
        for start, end, nbytes in self.intervals:
            current = current + (end - start) if nbytes < min_bytes else 0.0
            longest = max(longest, current)
        return longest


def parse_iperf3(text: str) -> IperfResult:
    """Reduce ``iperf3 --json`` output to an :class:`IperfResult`."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        return IperfResult(False, f"no JSON from iperf3: {text.strip()[:200]!r} ({exc})",
                           0.0, 0.0, 0.0, None, None, [], {})
    intervals = [(float(i["sum"]["start"]), float(i["sum"]["end"]), int(i["sum"]["bytes"]))
                 for i in data.get("intervals", []) if "sum" in i]
    end = data.get("end", {})
    error = data.get("error")
    # iperf3 3.12 writes sum_sent/sum_received for UDP too; only "sum" has the loss.
    protocol = data.get("start", {}).get("test_start", {}).get("protocol")
    if protocol == "UDP" or ("sum" in end and "sum_received" not in end):
        summary = end.get("sum", {})
        sent, recv = end.get("sum_sent", summary), end.get("sum_received", summary)
        lost = summary.get("lost_percent")
    else:                               # TCP
        sent, recv = end.get("sum_sent", {}), end.get("sum_received", {})
        lost = None
    seconds = float(recv.get("seconds", 0.0))
    return IperfResult(
        ok=error is None and seconds > 0, error=error, seconds=seconds,
        sent_bps=float(sent.get("bits_per_second", 0.0)),
        received_bps=float(recv.get("bits_per_second", 0.0)),
        retransmits=sent.get("retransmits"), lost_percent=lost,
        intervals=intervals, raw=data)


def tcp_listening(ns: str, port: int, timeout: float = 15.0) -> bool:
    """True if a socket in namespace ``ns`` listens on TCP ``port`` (``ss``).

    Works on any namespace, lab-built or not (the bench's peers harness);
    False also if ``ns`` does not exist. Raises LabError if ``ss`` is missing
    or runs longer than ``timeout`` s.
    """
    out = netns.ns_exec(ns, ["ss", "-Hltn", f"sport = :{port}"], timeout=timeout, check=False).stdout
    return bool(out.strip())


def _iperf_server(lab: Lab, server: str, port: int, label: str) -> Proc:
    """A one-off ``iperf3 -s -1`` in host ``server``, once it listens; if it
    does not within 5 s it is stopped and LabError raised."""
    srv = lab.spawn(server, label, ["iperf3", "-s", "-1", "-p", str(port)])
    ns = lab.host(server).ns
    if not wait_until(lambda: tcp_listening(ns, port) or not srv.alive(), timeout=5.0) \
            or not srv.alive():
        srv.stop(timeout=2.0)
        raise LabError(f"iperf3 server in {server} did not start: {srv.tail()}")
    return srv


def iperf3(lab: Lab, server: str, client: str, target: str, seconds: float = 3.0,
           port: int = 5201, interval: float = 0.2, reverse: bool = False,
           udp_rate: str | None = None, extra: tuple[str, ...] = (),
           label: str | None = None) -> IperfResult:
    """Run a one-off iperf3 server in ``server`` and a client in ``client``
    towards ``target`` (the server's overlay address). ``reverse`` makes the
    client the receiver, so its intervals show what arrived."""
    srv = _iperf_server(lab, server, port, label or f"iperf3-s-{server}-{port}")
    try:
        argv = ["iperf3", "-c", target, "-p", str(port), "-t", f"{seconds:g}", "-i", f"{interval:g}",
                "--json", "--connect-timeout", "3000"]
        if reverse:
            argv.append("-R")
        if udp_rate is not None:
            argv += ["-u", "-b", udp_rate]
        argv += list(extra)
        proc = lab.exec(client, argv, timeout=seconds + 20, check=False)
        return parse_iperf3(proc.stdout)
    finally:
        srv.stop(timeout=2.0)


class IperfRun:
    """An iperf3 test running in the background (e.g. across a rekey).

    ``result()`` waits for the client (bounded) and parses its JSON; the
    one-off server is always stopped afterwards.
    """

    def __init__(self, lab: Lab, server: str, client: str, target: str, seconds: float,
                 port: int = 5202, interval: float = 0.1, reverse: bool = True,
                 extra: tuple[str, ...] = ()) -> None:
        self.seconds = seconds
        self._server = _iperf_server(lab, server, port, f"iperf3-s-{server}-{port}")
        argv = ["iperf3", "-c", target, "-p", str(port), "-t", f"{seconds:g}",
                "-i", f"{interval:g}", "--json", "--connect-timeout", "3000", *extra]
        if reverse:
            argv.append("-R")
        self._client = lab.spawn(client, f"iperf3-c-{client}-{port}", argv)

    def result(self, grace: float = 20.0) -> IperfResult:
        try:
            self._client.wait(self.seconds + grace)
        finally:
            self._client.stop(timeout=2.0)
            self._server.stop(timeout=2.0)
        text = self._client.output(max_bytes=5_000_000)
        start = text.find("{")
        return parse_iperf3(text[start:] if start >= 0 else text)


# -- counted UDP flows (scripts/soak-hostile), run inside a member's namespace ---------------------

_FLOW_HEADER = struct.Struct(">Q")  # sequence number per destination


def flow_main(conf: dict) -> int:
    """Send ``pps`` datagrams/s of ``payload`` bytes to each of ``peers`` (UDP ``port``) and count what
    arrives from them, until SIGTERM or ``seconds``; prints one JSON line: sent per destination,
    received (distinct) packets, bytes and duplicates per source, send errors (a TUN that is gone)."""
    stop: list = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    socks = {4: socket.socket(socket.AF_INET, socket.SOCK_DGRAM), 6: socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)}
    socks[6].setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    socks[4].bind(("0.0.0.0", conf["port"]))
    socks[6].bind(("::", conf["port"]))
    for sock in socks.values():
        sock.setblocking(False)
    peers, padding = conf["peers"], b"\0" * max(0, conf["payload"] - _FLOW_HEADER.size)
    sent = {p: 0 for p in peers}
    seen: dict[str, set] = {}
    received: dict[str, dict] = {}
    errors, interval = 0, 1.0 / conf["pps"]
    start = next_send = time.monotonic()
    print("flowing", flush=True)
    while not stop and time.monotonic() - start < conf["seconds"]:
        ready, _, _ = select.select(list(socks.values()), [], [], max(0.0, next_send - time.monotonic()))
        for sock in ready:
            for _ in range(256):
                try:
                    data, addr = sock.recvfrom(65536)
                except BlockingIOError:
                    break
                if len(data) < _FLOW_HEADER.size:
                    continue
                entry = received.setdefault(addr[0], {"packets": 0, "bytes": 0, "duplicates": 0})
                sequences = seen.setdefault(addr[0], set())
                sequence = _FLOW_HEADER.unpack_from(data)[0]
                if sequence in sequences:
                    entry["duplicates"] += 1
                    continue
                sequences.add(sequence)
                entry["packets"] += 1
                entry["bytes"] += len(data)
        if time.monotonic() >= next_send:
            next_send += interval
            for peer in peers:
                try:
                    socks[6 if ":" in peer else 4].sendto(_FLOW_HEADER.pack(sent[peer]) + padding, (peer, conf["port"]))
                    sent[peer] += 1
                except OSError:
                    errors += 1
    print(json.dumps({"sent": sent, "received": received, "send_errors": errors}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(flow_main(json.loads(sys.argv[1])))
