"""A hostile-network soak: a live mesh under loss, reordering, duplication, rekeys, crashes and an attacker.

Three members (m1, m2, m3) and the provider in a namespace lab; for ``minutes``:

- every member's link goes through the user-space impairment relay (:mod:`grouptun.lab.impair`,
  default 5% loss, 25% reorder, 5% duplication of the frames it sends);
- counted UDP flows between every ordered pair of members, over IPv4 and IPv6 overlay addresses
  (:func:`_flow_main`, one process per member: sends at a fixed rate, counts what arrives);
- the provider opens a new epoch every ``rekey_every`` seconds (``grouptun-provider group rekey``);
- one daemon is killed with SIGKILL every ``kill_every`` seconds (m1, m2, m3 in turn) and started
  again a second later, as systemd's Restart= would;
- an outsider (host e) taps m1's bridge port the whole time and, per captured datagram,
  replays it to its destination and copies every m1 -> m3 datagram to m2 (:func:`_attacker_main`).

Measured, without trusting the daemons' own view:

- reused (epoch, s) pairs: ``tcpdump`` on each member's underlay interface (outgoing, so before the
  relay duplicates anything) checked by :func:`grouptun.lab.pcap.nonce_reuse`, which decodes
  headers with :mod:`grouptun.core.wire`;
- inner packets delivered to the wrong member: ``tcpdump -Q in`` on each member's TUN device (what
  the daemon wrote to the kernel), counting packets whose IP destination is none of that member's
  overlay addresses and not broadcast or multicast. The TUN device goes with a killed daemon, so
  a capture is started for each daemon instance as soon as its device exists (before it has an
  epoch, hence before it can deliver anything);
- every drop counter of every daemon instance (``grouptun status --json`` every few seconds; the
  last snapshot of a killed instance counts for it), and the relays' counters.

Pass: 0 reused pairs, 0 wrong-member deliveries and no flow packet delivered twice to the
application (:attr:`SoakReport.ok`).
Limits: IPv4 underlay only; the UDP flows are paced, not a capacity test; the counts between an
instance's last status snapshot and its kill are not seen.
"""

from __future__ import annotations

import ipaddress
import json
import signal
import socket
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from grouptun.lab.attack import Capture
from grouptun.lab.impair import impair, pin_neighbours
from grouptun.lab.mesh import Mesh, drop_counts
from grouptun.lab import netns
from grouptun.lab.netns import LabError
from grouptun.lab.pcap import PcapStream, ip_destination, nonce_reuse, read_pcap
from grouptun.lab.topology import Lab
from grouptun.lab.wait import wait_until

MEMBERS = ("m1", "m2", "m3")  # not a/b/c: host b's relay link would be named like the bridge (gt-TAG-br)
ATTACKER = "e"
FLOW_PORT = 7000


@dataclass(frozen=True)
class SoakSpec:
    minutes: float = 10.0
    loss: float = 0.05
    reorder: float = 0.25
    duplicate: float = 0.05
    rekey_every: float = 30.0
    kill_every: float = 60.0
    flow_pps: int = 50           # per destination address (each member sends to 4)
    payload: int = 1000
    attack_pps: int = 300        # the attacker's send budget (copies first, then replays)
    seed: int = 14


@dataclass
class SoakReport:
    spec: dict
    seconds: float
    flows: dict = field(default_factory=dict)          # "src->dst": sent, received, Mbit/s
    drops: dict = field(default_factory=dict)          # "member#instance" -> reason -> count
    relays: dict = field(default_factory=dict)
    attacker: dict = field(default_factory=dict)
    underlay: dict = field(default_factory=dict)       # packets, distinct, reused, repeated
    delivered: dict = field(default_factory=dict)      # member -> {"packets", "wrong", "examples"}
    events: list = field(default_factory=list)

    @property
    def reused(self) -> int:
        return self.underlay.get("reused", 0) + self.underlay.get("repeated", 0)

    @property
    def wrong_member(self) -> int:
        return sum(m["wrong"] for m in self.delivered.values())

    @property
    def duplicates(self) -> int:
        """Flow packets the application got twice: a replayed (or relay-duplicated) datagram accepted."""
        return sum(f["duplicates"] for f in self.flows.values())

    @property
    def ok(self) -> bool:
        return self.reused == 0 and self.wrong_member == 0 and self.duplicates == 0

    def to_json(self) -> dict:
        return {**asdict(self), "reused_pairs": self.reused, "wrong_member_deliveries": self.wrong_member,
                "duplicates_delivered": self.duplicates, "ok": self.ok}

    def table(self) -> str:
        rows = [f"soak: {self.seconds:.0f} s, {json.dumps(self.spec)}"]
        total_rx = sum(f["received_bytes"] for f in self.flows.values())
        rows.append(f"  delivered throughput (UDP flows, all pairs): {total_rx * 8 / self.seconds / 1e6:.2f} Mbit/s")
        for name, f in sorted(self.flows.items()):
            rows.append(f"    {name:<22} sent {f['sent']:>7}  received {f['received']:>7} "
                        f"({f['received'] / max(f['sent'], 1):.1%})  {f['mbps']:.2f} Mbit/s  duplicates {f['duplicates']}")
        rows.append("  drop counters (per daemon instance, #0 the first; a killed one's last snapshot):")
        for inst, counts in sorted(self.drops.items()):
            rows.append(f"    {inst:<6} " + ", ".join(f"{k} {v}" for k, v in counts.items()))
        rows.append(f"  relays: {json.dumps(self.relays)}")
        rows.append(f"  attacker: {json.dumps(self.attacker)}")
        u = self.underlay
        rows.append(f"  underlay capture: {u.get('packets', 0)} grouptun datagrams, {u.get('distinct', 0)} distinct "
                    f"(epoch, s); reused with other bytes {u.get('reused', 0)}, sent twice to one destination "
                    f"{u.get('repeated', 0)}")
        for name, d in sorted(self.delivered.items()):
            rows.append(f"  TUN {name}: {d['packets']} inner packets delivered, {d['wrong']} for another member"
                        + (f" (e.g. {', '.join(d['examples'])})" if d["examples"] else ""))
        rows.append(f"  events: {len(self.events)} ({sum(1 for e in self.events if e[1] == 'kill')} kills, "
                    f"{sum(1 for e in self.events if e[1] == 'rekey')} rekeys)")
        rows.append(f"{'PASS' if self.ok else 'FAIL'}: reused (epoch, s) pairs {self.reused} (must be 0), "
                    f"inner packets delivered to the wrong member {self.wrong_member} (must be 0), "
                    f"flow packets delivered twice {self.duplicates} (must be 0)")
        return "\n".join(rows)


class Soak:
    """One run; :meth:`run` returns the report. The lab is the caller's (``with Lab(...)``)."""

    def __init__(self, lab: Lab, spec: SoakSpec) -> None:
        self.lab, self.spec = lab, spec
        self.mesh = Mesh(lab)
        self.instances = {name: 0 for name in MEMBERS}
        self.last_drops: dict[str, dict] = {}
        self.tun_captures: dict[str, list[Path]] = {name: [] for name in MEMBERS}
        self.events: list = []
        self.t0 = 0.0

    # -- setup -----------------------------------------------------------------
    def build(self) -> None:
        self.mesh.start_group(MEMBERS, start=self._start, timeout=60.0)
        pin_neighbours(self.lab, MEMBERS)

    def _interface(self, name: str) -> str:
        from grouptun import config as gconfig
        return gconfig.load(self.mesh.members[name].config).group.interface

    def _start(self, name: str) -> None:
        """Start member ``name``'s daemon and a capture on its TUN device once that exists."""
        self.mesh.up(name)
        ns, ifname = self.lab.host(name).ns, self._interface(name)
        if not wait_until(lambda: _link_up(ns, ifname), timeout=30.0, interval=0.05):
            raise LabError(f"[{name}] TUN device {ifname} did not appear:\n{self.mesh.members[name].proc.tail(20)}")
        instance = self.instances[name]
        path = self.lab.workdir / f"tun-{name}-{instance}.pcap"
        Capture(self.lab, name, ifname, path, bpf="ip or ip6", snaplen=64, label=f"tun-{name}-{instance}",
                direction="in")
        self.tun_captures[name].append(path)

    def _snapshot(self, name: str) -> None:
        try:
            self.last_drops[f"{name}#{self.instances[name]}"] = drop_counts(self.mesh.status(name))
        except LabError as exc:  # a daemon between kill and restart has no control socket
            self.events.append((round(time.monotonic() - self.t0, 1), "status-failed", name, str(exc)[:120]))

    def _kill_and_restart(self, name: str) -> None:
        self._snapshot(name)
        self.mesh.members[name].proc.kill9()
        self.events.append((round(time.monotonic() - self.t0, 1), "kill", name))
        time.sleep(1.0)  # RestartSec=1
        self.instances[name] += 1
        self._start(name)
        self.mesh.wait_ready(name, timeout=60.0)

    # -- run -------------------------------------------------------------------
    def run(self) -> SoakReport:
        lab, spec, mesh = self.lab, self.spec, self.mesh
        self.build()
        under = {name: Capture(lab, name, lab.host(name).ifname, lab.workdir / f"under-{name}.pcap",
                               bpf=f"udp and src port {mesh.listen_port}", snaplen=128, label=f"under-{name}",
                               direction="out") for name in MEMBERS}
        relays = {name: impair(lab, name, loss=spec.loss, reorder=spec.reorder, duplicate=spec.duplicate,
                               delay=0.005, seed=spec.seed + i) for i, name in enumerate(MEMBERS)}
        seconds = spec.minutes * 60.0
        flows = self._start_flows(seconds)
        attacker = self._start_attacker(seconds)
        self.t0 = start = time.monotonic()
        kill_every = min(spec.kill_every, seconds / 2)  # a short run still kills once
        next_rekey, next_kill, next_snapshot, victim = spec.rekey_every, kill_every, 5.0, 0
        while (now := time.monotonic() - start) < seconds:
            if now >= next_kill:
                self._kill_and_restart(MEMBERS[victim % len(MEMBERS)])
                victim, next_kill = victim + 1, next_kill + kill_every
            if now >= next_rekey:
                mesh.rekey()
                self.events.append((round(now, 1), "rekey"))
                next_rekey += spec.rekey_every
            if now >= next_snapshot:
                for name in MEMBERS:
                    self._snapshot(name)
                next_snapshot += 10.0
            time.sleep(0.2)
        elapsed = time.monotonic() - start
        for name in MEMBERS:
            self._snapshot(name)
        report = SoakReport(asdict(spec), elapsed, events=self.events)
        report.flows = self._flow_results(flows, elapsed)
        tap, attack = attacker
        attack.stop(timeout=10.0)
        report.attacker = _last_json(attack.output())
        tap.stop()
        report.relays = {name: link.stop() for name, link in relays.items()}
        captured = [d for cap in under.values() for d in cap.stop()]
        reuse = nonce_reuse(captured, mesh.listen_port)
        report.underlay = {"packets": reuse.packets, "distinct": reuse.distinct, "reused": len(reuse.reused),
                           "repeated": len(reuse.repeated), "reused_examples": reuse.reused[:5],
                           "repeated_examples": reuse.repeated[:5]}
        for name in MEMBERS:
            mesh.down(name)  # the last TUN captures end with their device
        report.drops = self.last_drops
        report.delivered = {name: self._wrong_member(name) for name in MEMBERS}
        return report

    def _start_flows(self, seconds: float) -> dict:
        procs = {}
        for name in MEMBERS:
            m = self.mesh.members[name]
            peers = [self.mesh.members[p].overlay(f) for p in MEMBERS if p != name for f in (4, 6)]
            conf = {"self": [m.overlay(4), m.overlay(6)], "peers": peers, "pps": self.spec.flow_pps,
                    "payload": self.spec.payload, "seconds": seconds, "port": FLOW_PORT}
            procs[name] = self.lab.spawn(name, f"flow-{name}", [*_module_main("grouptun.lab.traffic"),
                                                                 json.dumps(conf)])
        for name, proc in procs.items():
            if not proc.wait_for_output("flowing", timeout=15.0):
                raise LabError(f"[{name}] flow did not start: {proc.tail()}")
        return procs

    def _flow_results(self, procs: dict, elapsed: float) -> dict:
        """Per ordered pair and family: sent (by the source's count), received (by the destination's)."""
        for proc in procs.values():
            proc.signal(signal.SIGTERM)
        out = {}
        for name, proc in procs.items():
            wait_until(lambda: not proc.alive(), timeout=10.0)
            out[name] = _last_json(proc.output())
        results, members = {}, self.mesh.members
        for src in MEMBERS:
            for dst in (d for d in MEMBERS if d != src):
                for family in (4, 6):
                    to, frm = members[dst].overlay(family), members[src].overlay(family)
                    got = out[dst].get("received", {}).get(frm, {})
                    results[f"{src}->{dst} IPv{family}"] = {
                        "sent": out[src].get("sent", {}).get(to, 0), "received": got.get("packets", 0),
                        "received_bytes": got.get("bytes", 0), "duplicates": got.get("duplicates", 0),
                        "mbps": got.get("bytes", 0) * 8 / elapsed / 1e6}
        return results

    def _start_attacker(self, seconds: float):
        lab, mesh = self.lab, self.mesh
        attacker = lab.host(ATTACKER)
        tap_path = lab.workdir / "tap-m1.pcap"
        tap = Capture(lab, None, lab.host("m1").port, tap_path, bpf=f"udp and src port {mesh.listen_port}",
                      snaplen=2048, label="tap-m1", direction="in")  # "in" at the switch: what m1 sent
        conf = {"pcap": str(tap_path), "port": mesh.listen_port, "seconds": seconds + 5,
                "pps": self.spec.attack_pps, "copy_from": lab.host("m3").ipv4, "copy_to": lab.host("m2").ipv4}
        proc = lab.spawn(ATTACKER, "attacker", [*_module_main("grouptun.lab.soak"), "attacker", json.dumps(conf)])
        if not proc.wait_for_output("attacking", timeout=15.0):
            raise LabError(f"attacker did not start: {proc.tail()} (own address {attacker.ipv4})")
        return tap, proc

    def _wrong_member(self, name: str) -> dict:
        """Inner packets on ``name``'s TUN captures whose destination is not ``name``."""
        m = self.mesh.members[name]
        mine = {ipaddress.ip_interface(a).ip.packed for a in m.addresses}
        broadcast = {ipaddress.ip_interface(a).network.broadcast_address.packed for a in m.addresses
                     if ipaddress.ip_interface(a).version == 4} | {b"\xff" * 4}
        total = wrong = 0
        examples: list[str] = []
        for path in self.tun_captures[name]:
            if not path.exists():
                continue
            for _ts, linktype, frame in read_pcap(path):
                found = ip_destination(linktype, frame)
                if found is None:
                    continue
                total += 1
                address = ipaddress.ip_address(found[1])
                if found[1] in mine or found[1] in broadcast or address.is_multicast:
                    continue
                wrong += 1
                if len(examples) < 3 and str(address) not in examples:
                    examples.append(str(address))
        return {"packets": total, "wrong": wrong, "examples": examples}


def _link_up(ns: str, ifname: str) -> bool:
    out = netns.run(["ip", "-n", ns, "-j", "link", "show", "dev", ifname], check=False).stdout
    return bool(out.strip()) and "UP" in json.loads(out)[0].get("flags", [])


def _module_main(module: str) -> list[str]:
    """argv running ``python3 -m module`` from this working tree."""
    from grouptun.lab.mesh import REPO
    return [sys.executable, "-c", f"import runpy, sys; sys.path.insert(0, {str(REPO)!r}); "
                                  f"runpy.run_module({module!r}, run_name='__main__')"]


def _last_json(text: str) -> dict:
    for line in reversed(text.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    return {}


# -- the attacker, run in the outsider's namespace ------------------------------------------------

def _attacker_main(conf: dict) -> int:
    """Follow the tap's capture; replay each datagram to its destination, copy copy_from's to copy_to."""
    from grouptun.core import wire
    from grouptun.errors import WireFormatError
    from grouptun.lab.pcap import udp_datagram

    stop: list = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    counts = dict(seen=0, replayed=0, copied=0, over_budget=0, send_errors=0)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    budget, last = float(conf["pps"]), time.monotonic()
    deadline = last + float(conf["seconds"])
    stream = PcapStream(conf["pcap"])
    print("attacking", flush=True)
    with open(conf["pcap"], "rb") as capture:
        while not stop and time.monotonic() < deadline:
            records = stream.feed(capture.read(1 << 20))
            if not records:
                time.sleep(0.01)
                continue
            for record in records:
                d = udp_datagram(*record)
                if d is None or d.dport != conf["port"] or d.length != len(d.payload):
                    continue
                try:
                    wire.decode(d.payload)
                except WireFormatError:
                    continue
                counts["seen"] += 1
                now = time.monotonic()
                budget, last = min(float(conf["pps"]), budget + (now - last) * conf["pps"]), now
                targets = ([("copied", conf["copy_to"])] if d.dst == conf["copy_from"] else []) + [("replayed", d.dst)]
                for kind, dst in targets:
                    if budget < 1:
                        counts["over_budget"] += 1
                        continue
                    budget -= 1
                    try:
                        sock.sendto(d.payload, (dst, d.dport))
                        counts[kind] += 1
                    except OSError:
                        counts["send_errors"] += 1
    sock.close()
    print(json.dumps(counts), flush=True)
    return 0


def _on_alarm(_signum, _frame):
    raise LabError("soak ran past its hard time limit")


def main(argv: list[str] | None = None) -> int:
    """``scripts/soak-hostile``: exit 0 on PASS, 1 on FAIL, 2 if the lab could not be built or run."""
    import argparse

    from grouptun.lab.topology import install_signal_handlers

    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["attacker"]:
        return _attacker_main(json.loads(argv[1]))
    parser = argparse.ArgumentParser(prog="scripts/soak-hostile", description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the soak (0.5..30, default 10)")
    parser.add_argument("--report", type=Path, help="also write the report as JSON here")
    parser.add_argument("--tag", default="sk", help="lab name tag (namespaces gt-TAG-*)")
    args = parser.parse_args(argv)
    if not 0.5 <= args.minutes <= 30:
        parser.error("--minutes must be 0.5..30")
    spec = SoakSpec(minutes=args.minutes)
    install_signal_handlers()
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.alarm(int(args.minutes * 60 + 420))  # setup, restarts and teardown included
    lab = Lab(args.tag, hosts=("p", *MEMBERS, ATTACKER))
    try:
        with lab:
            try:
                report = Soak(lab, spec).run()
            except Exception:
                print("--- lab logs ---\n" + lab.log_tails(20), file=sys.stderr)
                raise
    except (LabError, OSError) as exc:
        print(f"scripts/soak-hostile: {exc}", file=sys.stderr)
        return 2
    finally:
        signal.alarm(0)
    print(report.table())
    if args.report:
        args.report.write_text(json.dumps(report.to_json(), indent=1, default=str))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
