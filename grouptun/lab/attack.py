"""Attacks on a running mesh, from a namespace that is not a member.

An on-path observer taps a member's bridge port (``tcpdump`` in the switch
namespace), keeps a few real grouptun datagrams, and an attacker host on
the same bridge sends crafted variants of them to the members:

- ``replayed``: a captured datagram, byte for byte, to the member it was
  meant for (the replay window must drop it);
- ``flipped``: a captured unicast datagram with one ciphertext bit flipped,
  sent to a member that never saw that (epoch, s) (the tag must fail);
- ``forged``: a captured header moved to a fresh n of the same sender,
  with random ciphertext and tag (the tag must fail, the window not move);
- ``junk``: too short / unknown version / flags set (header checks);
- ``copied``: a captured datagram, unchanged, to a member it was NOT meant
  for. Fresh and authentic there (a sender's sequence space is shared by all
  its receivers), so only the inner destination tells (PROTOCOL.md 6): it
  must be counted ``not_for_me``, and the sender's endpoint at that member
  must not move to the attacker (:meth:`AttackReport.redirected`).

:func:`craft` is pure (randomness passed in); :func:`send_from` runs
``python3 -m grouptun.lab.attack`` inside the attacker's namespace, which
reads the datagrams as JSON on stdin and sends them with one UDP socket.

Limits: needs datagrams captured on the wire; forging at a fresh n needs
the group size (from any member's status).
"""

from __future__ import annotations

import json
import signal
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from grouptun.core import wire
from grouptun.errors import WireFormatError
from grouptun.lab.netns import LabError
from grouptun.lab.pcap import Datagram, udp_datagrams
from grouptun.lab.process import Proc
from grouptun.lab.topology import Lab
from grouptun.lab.wait import wait_until


@dataclass(frozen=True)
class Crafted:
    kind: str        # replayed | flipped | forged | junk | copied
    dst: str         # underlay address of the target member
    port: int
    data: bytes


class Capture:
    """``tcpdump -w`` on one interface of one namespace, stopped cleanly."""

    def __init__(self, lab: Lab, ns_host: str | None, ifname: str, path: Path,
                 bpf: str = "udp", snaplen: int = 256, label: str = "tcpdump", direction: str | None = None) -> None:
        self.path = path
        argv = ["tcpdump", "-i", ifname, "--immediate-mode", "-U", "-n", "-s", str(snaplen), "-w", str(path),
                *(["-Q", direction] if direction else []), bpf]
        if ns_host is None:            # the switch namespace is not a lab host
            self.proc = Proc(label, lab.switch_ns, argv, lab.workdir / f"{label}.log", lab.prefix)
            lab.procs.append(self.proc)
        else:
            self.proc = lab.spawn(ns_host, label, argv)
        if not self.proc.wait_for_output("listening on", timeout=10.0):
            self.proc.stop()
            raise LabError(f"tcpdump did not start on {ifname}: {self.proc.tail()}")

    def stop(self) -> list[Datagram]:
        """Stop (SIGINT flushes the file) and return the UDP datagrams captured."""
        self.proc.signal(signal.SIGINT)
        if not wait_until(lambda: not self.proc.alive(), timeout=5.0):
            self.proc.stop()
        return list(udp_datagrams(self.path)) if self.path.exists() else []


def grouptun_datagrams(captured: list[Datagram], port: int) -> list[Datagram]:
    """The captured datagrams that carry a valid-looking grouptun data header."""
    out = []
    for d in captured:
        if d.dport != port or d.length != len(d.payload):
            continue
        try:
            header = wire.decode(d.payload)
        except WireFormatError:
            continue
        if header.type == wire.TYPE_DATA:
            out.append(d)
    return out


def craft(captured: list[Datagram], members: dict[str, str], group_size: int,
          random_bytes: Callable[[int], bytes], per_kind: int = 5) -> list[Crafted]:
    """Build attack datagrams from captured ones.

    ``members`` maps every member's underlay address to itself (targets);
    a flipped copy goes to a member that was not the original destination.
    """
    if not captured:
        raise LabError("no grouptun data datagrams captured to attack with")
    out: list[Crafted] = []
    targets = sorted(members)
    for i, d in enumerate(captured[:per_kind]):
        out.append(Crafted("replayed", d.dst, d.dport, d.payload))
        others = _others(d, targets)
        flipped = bytearray(d.payload)
        flipped[wire.HEADER_SIZE + (i % max(1, len(flipped) - wire.OVERHEAD))] ^= 0x01 << (i % 8)
        out.append(Crafted("flipped", others[0] if others else d.dst, d.dport, bytes(flipped)))
        header = wire.decode(d.payload)
        fresh = header.sequence + group_size * (1000 + i)   # same sender, n far ahead
        forged = wire.encode(wire.Header(wire.TYPE_DATA, header.epoch, fresh)) + \
            random_bytes(len(d.payload) - wire.HEADER_SIZE)
        out.append(Crafted("forged", d.dst, d.dport, forged))
    d = captured[0]
    header = wire.decode(d.payload)
    out += [Crafted("junk", d.dst, d.dport, d.payload[:wire.MIN_DATAGRAM - 1]),
            Crafted("junk", d.dst, d.dport, b"\x21" + d.payload[1:]),
            Crafted("junk", d.dst, d.dport, d.payload[:1] + b"\x80" + d.payload[2:])]
    # Copies last: the flipped datagram sent to the same member before carries the same (epoch, s),
    # and must meet a fresh n there (a copy marks the window).
    for d in captured[:per_kind]:
        others = _others(d, targets)
        if others:
            out.append(Crafted("copied", others[0], d.dport, d.payload))
    return out


def _others(d: Datagram, targets: list[str]) -> list[str]:
    """Member addresses of ``d``'s family other than its source and destination."""
    return [t for t in targets if t not in (d.dst, d.src) and (":" in t) == (":" in d.dst)]


def send_from(lab: Lab, host: str, packets: list[Crafted], spacing: float = 0.002) -> int:
    """Send ``packets`` from lab host ``host``; returns how many were sent."""
    from grouptun.lab.mesh import REPO
    doc = json.dumps({"spacing": spacing,
                      "packets": [[p.dst, p.port, p.data.hex()] for p in packets]})
    code = (f"import sys; sys.path.insert(0, {str(REPO)!r}); "
            "from grouptun.lab.attack import _sender_main; sys.exit(_sender_main())")
    proc = lab.exec(host, [sys.executable, "-c", code], input_text=doc,
                    timeout=10 + spacing * len(packets))
    return int(proc.stdout.strip() or 0)


def _sender_main() -> int:
    """Inside the attacker's namespace: send the JSON-described datagrams."""
    doc = json.load(sys.stdin)
    sent = 0
    socks: dict[int, socket.socket] = {}
    try:
        for dst, port, hexdata in doc["packets"]:
            family = socket.AF_INET6 if ":" in dst else socket.AF_INET
            sock = socks.get(family) or socks.setdefault(family, socket.socket(family, socket.SOCK_DGRAM))
            sock.sendto(bytes.fromhex(hexdata), (dst, int(port)))
            sent += 1
            time.sleep(float(doc.get("spacing", 0)))
    finally:
        for sock in socks.values():
            sock.close()
    print(sent)
    return 0


@dataclass
class AttackReport:
    sent: dict[str, int]                         # kind -> datagrams sent
    drops_before: dict[str, dict[str, int]]      # member -> reason -> count
    drops_after: dict[str, dict[str, int]]
    targets: dict[str, str]                      # underlay address -> member
    endpoints_before: dict[str, dict[str, str]]  # member -> peer -> endpoint it sends that peer's traffic to
    endpoints_after: dict[str, dict[str, str]]

    def delta(self, reason: str) -> int:
        """Increase of one drop reason, summed over the members."""
        return sum(self.drops_after[m].get(reason, 0) - self.drops_before[m].get(reason, 0)
                   for m in self.drops_after)

    def redirected(self) -> list[str]:
        """``member: peer before -> after`` for every peer endpoint the attack moved (none, if held)."""
        return [f"{m}: {peer} {was} -> {now}" for m, peers in self.endpoints_after.items()
                for peer, now in peers.items() if (was := self.endpoints_before[m].get(peer)) != now]

    def deltas(self) -> dict[str, int]:
        reasons = sorted({r for d in self.drops_after.values() for r in d})
        return {r: self.delta(r) for r in reasons if self.delta(r)}

    def table(self) -> str:
        rows = ["  sent: " + ", ".join(f"{k} {v}" for k, v in self.sent.items()),
                "  drop counters (sum over members, after - before): "
                + (", ".join(f"{k} +{v}" for k, v in self.deltas().items()) or "none"),
                "  peer endpoints moved: " + ("; ".join(self.redirected()) or "none")]
        return "\n".join(rows)


def run_attack(lab: Lab, mesh, attacker: str = "e", tap: str = "a", per_kind: int = 5,
               random_bytes: Callable[[int], bytes] | None = None) -> AttackReport:
    """Tap member ``tap``'s bridge port while it pings the others, then send
    replayed / bit-flipped / forged / junk / copied datagrams from host ``attacker``."""
    import os
    from grouptun.lab.mesh import drop_counts, group_size, peer_endpoints
    from grouptun.lab.traffic import ping

    random_bytes = random_bytes or os.urandom
    names = list(mesh.members)
    others = [n for n in names if n != tap]
    cap = Capture(lab, None, lab.host(tap).port, lab.workdir / f"tap-{tap}.pcap",
                  bpf=f"udp and dst port {mesh.listen_port}", label=f"tap-{tap}")
    try:
        for dst in others:
            for family in (4, 6):
                ping(lab, tap, mesh.members[dst].overlay(family), count=per_kind, interval=0.05)
    finally:
        captured = grouptun_datagrams(cap.stop(), mesh.listen_port)
    # unicast datagrams from the tapped member, to spread over the targets
    captured = [d for d in captured if d.src in (lab.host(tap).ipv4, lab.host(tap).ipv6)]
    targets = {}
    for n in names:
        targets[lab.host(n).ipv4] = n
        targets[lab.host(n).ipv6] = n
    statuses = {n: mesh.status(n) for n in names}
    size = group_size(statuses[names[0]]) or len(names)
    packets = craft(captured, targets, size, random_bytes, per_kind=per_kind)
    before = {n: drop_counts(s) for n, s in statuses.items()}
    send_from(lab, attacker, packets)
    time.sleep(0.5)    # let the members' receive loops drain their sockets
    after_statuses = {n: mesh.status(n) for n in names}
    after = {n: drop_counts(s) for n, s in after_statuses.items()}
    sent: dict[str, int] = {}
    for p in packets:
        sent[p.kind] = sent.get(p.kind, 0) + 1
    return AttackReport(sent, before, after, targets,
                        {n: peer_endpoints(s) for n, s in statuses.items()},
                        {n: peer_endpoints(s) for n, s in after_statuses.items()})


def main(argv: list[str] | None = None) -> int:
    """``scripts/attack``: attack a lab left up by ``scripts/demo --keep``."""
    import argparse

    from grouptun.lab.demo import WORKDIR
    from grouptun.lab.mesh import Mesh
    from grouptun.lab.topology import install_signal_handlers

    parser = argparse.ArgumentParser(prog="scripts/attack", description=(
        "Replay, bit-flip, forge, junk and copy (to another member) grouptun datagrams against a "
        "running lab from an outsider namespace, and show the members' drop counters."))
    parser.add_argument("--lab", type=Path, default=WORKDIR / "lab.json",
                        help="lab description written by scripts/demo --keep")
    parser.add_argument("--per-kind", type=int, default=5, help="datagrams per attack kind")
    args = parser.parse_args(argv)
    if not args.lab.exists():
        print(f"no lab at {args.lab}: run 'sudo scripts/demo --keep' first", file=sys.stderr)
        return 2
    import json
    desc = json.loads(args.lab.read_text())
    install_signal_handlers()
    lab = Lab.adopt(desc["lab"])
    mesh = Mesh.adopt(lab, desc["mesh"])
    attacker = "e"
    if attacker in lab.hosts:
        lab.remove_host(attacker)
    lab.add_host(attacker)
    try:
        print(f"outsider {lab.host(attacker).ns} ({lab.host(attacker).ipv4}) joined the bridge; "
              f"tapping member a's port")
        report = run_attack(lab, mesh, attacker=attacker, per_kind=args.per_kind)
        print(report.table())
        for member, after in report.drops_after.items():
            changed = {r: v - report.drops_before[member].get(r, 0) for r, v in after.items()
                       if v != report.drops_before[member].get(r, 0)}
            print(f"  {member}: " + (", ".join(f"{r} +{v}" for r, v in changed.items()) or "no drops"))
        expected = {"replay": report.sent.get("replayed", 0),
                    "auth": report.sent.get("flipped", 0) + report.sent.get("forged", 0),
                    "not_for_me": report.sent.get("copied", 0)}
        ok = all(report.delta(r) >= n for r, n in expected.items()) and not report.redirected()
        from grouptun.lab.traffic import ping
        names = list(mesh.members)
        still = all(ping(lab, s, mesh.members[d].overlay(4), count=1).ok
                    for s in names for d in names if s != d)
        print(f"{'PASS' if ok else 'FAIL'}: every replayed datagram counted as replay, every "
              f"flipped/forged one as auth failure, every copied one as not_for_me, no peer endpoint "
              f"moved; tunnel {'still works' if still else 'BROKEN'}")
        return 0 if ok and still else 1
    finally:
        lab.remove_host(attacker)
        print("outsider namespace removed; the demo lab stays (sudo scripts/demo --down)")


if __name__ == "__main__":
    sys.exit(main())
