"""``scripts/demo``: a live grouptun mesh in network namespaces, end to end.

Builds a bridge lab (``gt-demo-p`` provider, ``gt-demo-a/b/c`` members),
runs the README journey with the real commands (provider init/serve,
group create, invite, join, up), pings every pair through the tunnel over
IPv4 and IPv6, runs iperf3 between two members, shows ``grouptun status``,
prints a pass/fail summary and removes everything. ``--keep`` leaves it up
(and prints how to enter and remove it); ``--down`` removes a kept demo.

Bounded: a whole-run deadline (``--timeout``, default 170 s) raises inside
whatever step is running, and every exit path (failure, Ctrl-C, SIGTERM,
deadline) goes through the lab's teardown.
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import signal
import sys
import time
from pathlib import Path

from grouptun.lab.mesh import Mesh
from grouptun.lab.netns import LabError
from grouptun.lab.topology import Lab, install_signal_handlers, remove_tag
from grouptun.lab.traffic import iperf3, ping, wait_ping

TAG = "demo"
WORKDIR = Path("/dev/shm/gt-demo") if Path("/dev/shm").is_dir() else Path("/run/gt-demo")
MEMBERS = ("a", "b", "c")


class DeadlineReached(BaseException):
    """Raised by SIGALRM; a BaseException so no step's error handling swallows it."""


class Steps:
    """Records and prints pass/fail per step; a failed required step stops the run."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, bool, str]] = []

    def run(self, name: str, fn, *args, required: bool = True):
        t0 = time.monotonic()
        try:
            value = fn(*args)
        except Exception as exc:    # any failure is this step's FAIL row; the lab still goes
            self.add(name, False, str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__)
            print(f"        {str(exc)[:2000]}", flush=True)
            if required:
                raise
            return None
        self.add(name, True, f"{time.monotonic() - t0:.1f} s")
        return value

    def add(self, name: str, ok: bool, detail: str = "") -> None:
        self.rows.append((name, ok, detail))
        print(f"[{' ok ' if ok else 'FAIL'}] {name}" + (f"  ({detail})" if detail else ""), flush=True)

    @property
    def ok(self) -> bool:
        return bool(self.rows) and all(ok for _, ok, _ in self.rows)

    def summary(self, extra: list[str]) -> str:
        passed = sum(ok for _, ok, _ in self.rows)
        lines = ["", "=== grouptun demo summary ===",
                 *(f"  {'PASS' if ok else 'FAIL'}  {name}" + (f"  ({d})" if d else "")
                   for name, ok, d in self.rows),
                 *extra, f"  {passed}/{len(self.rows)} steps passed: "
                 f"{'ALL PASS' if self.ok else 'FAILURES'}"]
        return "\n".join(lines)


def _first_ping(lab: Lab, mesh: Mesh) -> None:
    if not wait_ping(lab, "a", mesh.members["b"].overlay(4), timeout=15.0):
        raise LabError("no reply within 15 s")


def _ping_pairs(lab: Lab, mesh: Mesh, steps: Steps) -> None:
    for family in (4, 6):
        for src, dst in itertools.permutations(MEMBERS, 2):
            addr = mesh.members[dst].overlay(family)
            result = ping(lab, src, addr, count=3, interval=0.2)
            rtt = f"{result.rtt_avg_ms:.2f} ms" if result.rtt_avg_ms is not None else "no reply"
            steps.add(f"ping IPv{family} {src} -> {dst} ({addr})", result.ok,
                      f"{result.received}/{result.sent}, {rtt}")


def _journey(lab: Lab, mesh: Mesh, steps: Steps, seconds: float) -> list[str]:
    steps.run("provider: init + serve (HTTPS)", mesh.start_provider)
    steps.run(f"provider: group create {mesh.group} {mesh.cidr} {mesh.cidr6}", mesh.create_group)
    for name in MEMBERS:
        m = steps.run(f"{name}: invite + grouptun join", mesh.join, name)
        print(f"        {name}: overlay {', '.join(m.addresses)}")
    for name in MEMBERS:
        mesh.up(name)
    for name in MEMBERS:
        steps.run(f"{name}: grouptun up (epoch installed)", mesh.wait_ready, name, 40.0)
    # The first packets may wait for endpoints to be learned: allow a short warm-up.
    steps.run("mesh: first ping a -> b", _first_ping, lab, mesh)
    _ping_pairs(lab, mesh, steps)
    result = iperf3(lab, "b", "a", mesh.members["b"].overlay(4), seconds=seconds, interval=1.0)
    detail = (f"{result.mbps:.0f} Mbit/s, {result.retransmits} retransmits" if result.ok
              else f"error: {result.error}")
    steps.add(f"iperf3 TCP a -> b, {seconds:g} s", result.ok, detail)
    print("\n--- grouptun status lan (in gt-demo-a) ---")
    print(mesh.status_text("a").rstrip())
    extra = [f"  throughput a -> b: {result.mbps:.0f} Mbit/s (TCP, {seconds:g} s, 2 vCPU host)"] \
        if result.ok else []
    return extra


def _keep_instructions(lab: Lab, mesh: Mesh) -> str:
    from grouptun.lab.mesh import REPO
    cli = "grouptun" if shutil.which("grouptun") else f"env PYTHONPATH={REPO} python3 -m grouptun.cli.main"
    a, b = mesh.members["a"], mesh.members["b"]
    return "\n".join([
        "", "The lab is still up (--keep). Explore it:",
        f"  sudo ip netns exec gt-demo-a bash          # a shell on member a ({lab.workdir})",
        f"  ping {b.overlay(4)}; ping {b.overlay(6)}              # through the tunnel, from a",
        f"  sudo ip netns exec gt-demo-a {cli} status lan --run-dir {a.run_dir}",
        "  sudo scripts/attack                          # replay/forge/bit-flip/copy attacks, drop counters",
        "  logs: " + str(lab.workdir / "logs"),
        "Remove it:", "  sudo scripts/demo --down"])


def down() -> int:
    removed = remove_tag(TAG)
    shutil.rmtree(WORKDIR, ignore_errors=True)
    print(f"removed {len(removed)} namespaces ({' '.join(removed) or 'none'}) and {WORKDIR}")
    return 0


def _on_alarm(_signum, _frame):
    raise DeadlineReached()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", action="store_true", help="leave the lab up to explore")
    parser.add_argument("--down", action="store_true", help="remove a lab left by --keep")
    parser.add_argument("--timeout", type=float, default=170.0, help="whole-run deadline, s")
    parser.add_argument("--seconds", type=float, default=5.0, help="iperf3 duration, s")
    args = parser.parse_args(argv)
    if args.down:
        return down()
    remove_tag(TAG)                            # a kept or crashed earlier demo
    shutil.rmtree(WORKDIR, ignore_errors=True)
    steps = Steps()
    extra: list[str] = []
    # Ctrl-C must clean up even when started from a shell that ignores SIGINT (cmd &)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    install_signal_handlers()
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, args.timeout)
    t0 = time.monotonic()
    lab = Lab(TAG, hosts=("p", *MEMBERS), workdir=str(WORKDIR))
    mesh = Mesh(lab)
    try:
        with lab:
            steps.add(f"lab: namespaces gt-demo-{{p,a,b,c}} on a bridge, underlay "
                      f"{lab.host('a').ipv4}/24 + {lab.host('a').ipv6}/64", True)
            try:
                extra = _journey(lab, mesh, steps, args.seconds)
            except Exception as exc:   # a failed step stops the journey
                if steps.ok:           # not reported by Steps.run yet
                    steps.add("unexpected error", False, f"{type(exc).__name__}: {exc}"[:200])
                print("\n--- last log lines ---\n" + lab.log_tails(), flush=True)
            signal.setitimer(signal.ITIMER_REAL, 0)
            if args.keep and steps.ok:
                (lab.workdir / "lab.json").write_text(json.dumps(
                    {"lab": lab.describe(), "mesh": mesh.describe()}, indent=1))
                lab.detach()
    except DeadlineReached:
        steps.add(f"deadline of {args.timeout:.0f} s", False, "stopped and cleaned up")
    except KeyboardInterrupt:
        steps.add("interrupted (Ctrl-C)", False, "cleaned up")
    except SystemExit as exc:
        steps.add(f"terminated by signal {exc.code - 128 if isinstance(exc.code, int) else exc.code}",
                  False, "cleaned up")
    except Exception as exc:           # building or removing the lab itself failed
        steps.add("lab", False, f"{type(exc).__name__}: {exc}"[:300])
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    extra.append(f"  total time: {time.monotonic() - t0:.0f} s")
    print(steps.summary(extra))
    if args.keep and steps.ok:
        print(_keep_instructions(lab, mesh))
    elif args.keep:
        print("not kept: a step failed (the lab was removed)")
    else:
        print("lab removed (gt-demo-* namespaces and their interfaces, workdir)")
    return 0 if steps.ok else 1


if __name__ == "__main__":
    sys.exit(main())
