"""iperf3 TCP, 1 stream, through two real grouptun daemons in a grouptun.lab mesh (root).

    sudo python3 tests/offload/fp_bench.py --offload auto|off [--reps 3] [--seconds 10] [--profile SECS]

Builds the lab the integration tests use (provider + members a, b; tag "fpb",
namespaces gt-fpb-*), sets ``[daemon] offload`` in both member configs
before ``up``, checks the path each daemon reports (status --json,
dataplane.path), runs ``reps`` iperf3 b -> a, prints each figure and the
median. ``--profile`` records a py-spy flame summary of the sender daemon
(``py-spy record --format raw``; ``--profile-member a`` for the receiver) during one extra run and prints its top
functions. Not a test: figures are printed, nothing asserted on speed.
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

from grouptun.lab import Lab, wait_ping  # noqa: E402
from grouptun.lab.mesh import Mesh  # noqa: E402
from grouptun.lab.traffic import iperf3  # noqa: E402


def set_offload(path, value: str) -> None:
    import dataclasses

    from grouptun import config as gconfig
    cfg = gconfig.load(path)
    cfg = dataclasses.replace(cfg, daemon=dataclasses.replace(cfg.daemon, offload=value))
    path.write_text(gconfig.render(cfg))


def top_frames(raw: str, n: int = 15) -> list[str]:
    """Self time per innermost function from py-spy's raw (collapsed stacks) output."""
    self_time: collections.Counter = collections.Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        total += int(count)
        self_time[stack.split(";")[-1]] += int(count)
    return [f"{100 * c / max(1, total):5.1f}%  {frame}" for frame, c in self_time.most_common(n)]


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--offload", choices=("auto", "off"), required=True)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--profile", type=float, default=0.0)
    p.add_argument("--profile-member", choices=("a", "b"), default="b", help="b sends, a receives")
    args = p.parse_args()
    lab = Lab("fpb", hosts=("p", "a", "b"))
    with lab:
        try:
            mesh = Mesh(lab)
            mesh.start_provider()
            mesh.create_group()
            for name in ("a", "b"):
                mesh.join(name)
                set_offload(mesh.members[name].config, args.offload)
            for name in ("a", "b"):
                mesh.up(name)
            for name in ("a", "b"):
                mesh.wait_ready(name, timeout=40.0)
            target = mesh.members["a"].overlay(4)
            if not wait_ping(lab, "b", target, timeout=15.0):
                print("no ping b -> a", file=sys.stderr)
                return 1
            for name in ("a", "b"):
                print(f"[{name}] path: {mesh.status(name)['dataplane'].get('path', '(not reported)')}")
            figures = []
            for rep in range(args.reps):
                result = iperf3(lab, "a", "b", target, seconds=args.seconds, interval=1.0)
                figures.append(result.mbps)
                print(f"rep {rep + 1}: {result.mbps:.1f} Mbit/s, retransmits {result.retransmits}"
                      f"{'' if result.ok else ' ERROR ' + str(result.error)}", flush=True)
            print(f"offload={args.offload}: median {statistics.median(figures):.1f} Mbit/s over {len(figures)}")
            if args.profile:
                who = args.profile_member
                pid = mesh.members[who].proc.pid
                out = f"/tmp/gt-fpb-profile-{args.offload}-{who}.txt"
                spy = subprocess.Popen(["py-spy", "record", "--format", "raw", "-o", out, "-d",
                                        str(int(args.profile)), "-p", str(pid), "--nonblocking"],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                iperf3(lab, "a", "b", target, seconds=args.profile + 1, interval=1.0)
                spy.wait(args.profile + 30)
                print(f"py-spy of daemon {who} ({'sender' if who == 'b' else 'receiver'}), self time,"
                      f" offload={args.offload}:")
                print("\n".join(top_frames(open(out).read())))
            for name in ("a", "b"):
                print(f"[{name}] dataplane: {mesh.status(name)['dataplane']}")
        finally:
            lab.down()
    return 0


if __name__ == "__main__":
    sys.exit(main())
