"""A lossy, reordering, duplicating link in user space (for kernels without netem).

``tc netem`` needs ``CONFIG_NET_SCH_NETEM``, which some kernels (this VM's
Firecracker kernel among them) lack. Instead, :func:`impair` takes a host's
bridge port out of the bridge and puts a relay in between, inside the
switch namespace::

    host a [gt-x-a0] ==veth== [gt-x-as]  relay  [gt-x-aq] ==veth== [gt-x-ar] -- bridge

The relay (``python3 -m grouptun.lab.impair`` run in the switch
namespace) moves Ethernet frames between the two AF_PACKET sockets. Frames
leaving the host are dropped with probability ``loss``, sent twice with
probability ``duplicate``, and held back ``delay`` seconds with probability
``reorder`` (so later frames overtake them); frames towards the host pass
untouched. Offloaded (GSO) frames keep their virtio-net header
(PACKET_VNET_HDR), so the kernel segments them on the way out.

Limits: a GSO super-frame counts as one frame; the relay costs CPU (a few
10k frames/s in Python); bounded by ``max_seconds``; one impairment per host.
ARP crosses the relay like any frame: each lost request delays resolution
by a second, while the kernel keeps only part of the packets waiting for it
(two lost at 30% loss: 14 of 60 pings reached the relay); three in a row
fail it. Tests that count packets call :func:`pin_neighbours` first.
"""

from __future__ import annotations

import heapq
import json
import random
import select
import signal
import socket
import sys
import time
from dataclasses import dataclass

from grouptun.lab import netns
from grouptun.lab.netns import IFNAMSIZ, LabError
from grouptun.lab.process import Proc
from grouptun.lab.topology import Lab
from grouptun.lab.wait import wait_until

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_VNET_HDR = 15
PACKET_OUTGOING = 4
MAX_FRAME = 65536 + 64


@dataclass(frozen=True)
class Impairment:
    loss: float = 0.0
    reorder: float = 0.0
    delay: float = 0.002
    duplicate: float = 0.0

    def __post_init__(self) -> None:
        for name in ("loss", "reorder", "duplicate"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise LabError(f"impairment {name} must be in [0, 1), got {getattr(self, name)}")
        if not 0.0 <= self.delay <= 1.0:
            raise LabError(f"impairment delay must be 0..1 s, got {self.delay}")


class ImpairedLink:
    """A running impairment on one host's link; :meth:`stop` restores the bridge."""

    def __init__(self, lab: Lab, host: str, spec: Impairment, seed: int,
                 max_seconds: float = 900.0) -> None:
        self.lab, self.host = lab, lab.host(host)
        port = self.host.port
        self.inner, self.outer = port[:-1] + "q", port[:-1] + "r"
        if max(len(self.inner), len(self.outer)) > IFNAMSIZ:
            raise LabError(f"interface name {self.inner!r} too long")
        sw = lab.switch_ns
        self._ip = lambda *a: netns.run(["ip", "-n", sw, *a])
        self._ip("link", "set", port, "nomaster")
        self._ip("link", "add", self.inner, "type", "veth", "peer", "name", self.outer)
        self._ip("link", "set", self.outer, "master", lab.bridge, "mtu", str(lab.mtu), "up")
        for ifname in (port, self.inner):
            self._ip("link", "set", ifname, "promisc", "on", "mtu", str(lab.mtu), "up")
        from grouptun.lab.mesh import python_main
        argv = [*python_main("grouptun.lab.impair"), port, self.inner,
                json.dumps({**vars(spec), "seed": seed, "max_seconds": max_seconds})]
        label = f"impair-{host}"
        self.proc = Proc(label, sw, argv, lab.workdir / f"{label}.log", lab.prefix)
        lab.procs.append(self.proc)
        # Carrier and the bridge port state follow "ip link set up" through the
        # kernel's linkwatch work (up to a second later, more under load); until
        # then frames are dropped outside the relay's counters.
        started = self.proc.wait_for_output("relaying", timeout=10.0)
        if not (started and wait_until(lambda: self._up(self.inner) and self._up(self.outer)
                                       and self._forwarding(self.outer), timeout=10.0)):
            self.stop()
            raise LabError(f"impairment relay or its link did not come up: {self.proc.tail()}")

    def _up(self, ifname: str) -> bool:
        out = netns.run(["ip", "-n", self.lab.switch_ns, "-j", "link", "show", "dev", ifname],
                        check=False).stdout
        return bool(out.strip()) and json.loads(out)[0].get("operstate") == "UP"

    def _forwarding(self, ifname: str) -> bool:
        out = netns.run(["bridge", "-n", self.lab.switch_ns, "-j", "link", "show", "dev", ifname],
                        check=False).stdout
        ports = json.loads(out) if out.strip() else []
        return bool(ports) and ports[0].get("state") == "forwarding"

    def stop(self) -> dict:
        """Stop the relay, put the host's port back on the bridge; returns the relay's counters.

        Raises LabError if the port is not forwarding again within 5 s.
        """
        self.proc.stop(timeout=5.0)
        netns.run(["ip", "-n", self.lab.switch_ns, "link", "del", self.inner], check=False)
        netns.run(["ip", "-n", self.lab.switch_ns, "link", "set", self.host.port, "promisc", "off",
                   "master", self.lab.bridge], check=False)
        if not wait_until(lambda: self._forwarding(self.host.port), timeout=5.0):
            raise LabError(f"bridge port {self.host.port} not forwarding after the impairment")
        for line in reversed(self.proc.output().splitlines()):
            if line.startswith("{"):
                return json.loads(line)
        return {}


def pin_neighbours(lab: Lab, names: tuple[str, ...]) -> None:
    """Permanent IPv4 neighbour (ARP) entries between the lab hosts ``names``,
    so that address resolution never crosses an impaired link. IPv6 is left
    alone (neighbour discovery still runs). Entries go with the namespaces."""
    hosts = [lab.host(name) for name in names]
    macs = {}
    for h in hosts:
        out = netns.run(["ip", "-n", h.ns, "-j", "link", "show", "dev", h.ifname]).stdout
        macs[h.name] = json.loads(out)[0]["address"]
    for h in hosts:
        for peer in hosts:
            if peer is not h:
                netns.run(["ip", "-n", h.ns, "neigh", "replace", peer.ipv4, "lladdr",
                           macs[peer.name], "dev", h.ifname, "nud", "permanent"])


def impair(lab: Lab, host: str, loss: float = 0.0, reorder: float = 0.0, delay: float = 0.002,
           duplicate: float = 0.0, seed: int = 1) -> ImpairedLink:
    """Impair frames leaving lab host ``host`` (see the module docstring)."""
    return ImpairedLink(lab, host, Impairment(loss, reorder, delay, duplicate), seed)


# -- the relay, run inside the switch namespace ------------------------------

def _open(ifname: str) -> socket.socket:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind((ifname, 0))
    sock.setblocking(False)
    return sock


def _send(sock: socket.socket, frame: bytes, counts: dict) -> None:
    try:
        sock.send(frame)
    except OSError:
        counts["send_errors"] += 1


def relay(host_if: str, bridge_if: str, spec: Impairment, rng: random.Random,
          max_seconds: float, stop: list) -> dict:
    """Move frames until ``stop`` is set or ``max_seconds`` pass; returns counters."""
    from_host, to_bridge = _open(host_if), _open(bridge_if)
    counts = dict(frames=0, lost=0, duplicated=0, delayed=0, returned=0, send_errors=0)
    held: list[tuple[float, int, bytes]] = []
    serial = 0
    deadline = time.monotonic() + max_seconds
    print("relaying", host_if, "<->", bridge_if, flush=True)
    while not stop and time.monotonic() < deadline:
        now = time.monotonic()
        wait = min(0.2, max(0.0, held[0][0] - now)) if held else 0.2
        ready, _, _ = select.select([from_host, to_bridge], [], [], wait)
        for sock in ready:
            for _ in range(256):    # drain, bounded
                try:
                    frame, addr = sock.recvfrom(MAX_FRAME)
                except BlockingIOError:
                    break
                if addr[2] == PACKET_OUTGOING:
                    continue
                if sock is to_bridge:
                    counts["returned"] += 1
                    _send(from_host, frame, counts)
                    continue
                counts["frames"] += 1
                if rng.random() < spec.loss:
                    counts["lost"] += 1
                    continue
                copies = 2 if rng.random() < spec.duplicate else 1
                counts["duplicated"] += copies - 1
                if rng.random() < spec.reorder:
                    counts["delayed"] += 1
                    serial += 1
                    heapq.heappush(held, (time.monotonic() + spec.delay, serial, frame))
                    copies -= 1
                for _ in range(copies):
                    _send(to_bridge, frame, counts)
        now = time.monotonic()
        while held and held[0][0] <= now:
            _send(to_bridge, heapq.heappop(held)[2], counts)
    for _, _, frame in held:
        _send(to_bridge, frame, counts)
    return counts


def main(argv: list[str] | None = None) -> int:
    host_if, bridge_if, params = (argv or sys.argv[1:])[:3]
    conf = json.loads(params)
    spec = Impairment(conf["loss"], conf["reorder"], conf["delay"], conf["duplicate"])
    stop: list = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    counts = relay(host_if, bridge_if, spec, random.Random(conf["seed"]),
                   float(conf["max_seconds"]), stop)
    print(json.dumps(counts), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
