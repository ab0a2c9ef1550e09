"""``scripts/bench``: grouptun against plain veth (and other VPNs) in one run.

Builds ``gt-bn-a`` -- veth -- ``gt-bn-b``, runs a provider and two grouptun
members there, and per repetition measures ``plain`` (the veth), then
``grouptun``, then each ``--peers`` tunnel of the peers harness (on
that harness's pb-a/pb-b topology, through its peer scripts), with the
harness's tests and settings (see grouptun.lab.bench_measure). Prints a
markdown table of medians with ratio columns against the best peer in the
run (plain if no peer ran), and writes every record to a JSON file.

``--soak S`` is a separate mode: grouptun only, a TCP x1 load for S
seconds, the daemons' summed VmRSS sampled every ``--soak-interval`` s;
reports start/end/max and the slope (whole run and second half).

Bounded: a whole-run deadline (SIGALRM) and per-command timeouts; every
exit path (failure, Ctrl-C, SIGTERM, deadline) tears down the current peer,
pb-a/pb-b, and the gt-bn lab.

``--peers`` needs the peers harness, which is not part of this repository:
it is looked up at ``../shared/bench/peers`` beside the repository root
(bench_peers.PEERS_DIR). Without it the peers are skipped, with that
reason printed and listed in the report; plain and grouptun still run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from grouptun.errors import GrouptunError
from grouptun.lab import bench_stats as bs
from grouptun.lab.bench_measure import Settings, measure, soak
from grouptun.lab.bench_peers import (PEERS_DIR, GrouptunPeer, PlainPeer, ScriptPeer, VethLab,
                                      git_state, topology, tree_digest)
from grouptun.lab.mesh import REPO
from grouptun.lab.netns import list_ns
from grouptun.lab.topology import install_signal_handlers

PEER_CMDS = {"wireguard-go": ("wireguard-go", "wg"), "nebula": ("nebula", "nebula-cert"),
             "openvpn": ("openvpn", "openssl"), "tinc": ("tincd",)}


# What a failed bring-up may raise (lab commands, config, peer scripts, peer.env).
UP_ERRORS = (GrouptunError, OSError, subprocess.SubprocessError, ValueError, KeyError)


class DeadlineReached(BaseException):
    """Raised by SIGALRM; a BaseException so no step's error handling swallows it."""


def _on_alarm(_signum, _frame):
    raise DeadlineReached()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="scripts/bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=3, help="repetitions (medians over them)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per iperf3 test")
    p.add_argument("--peers", default="", help="comma list of harness peers, e.g. nebula,wireguard-go")
    p.add_argument("--offload", choices=("auto", "off"), help="[daemon] offload of the members, if the key exists")
    p.add_argument("--quick", action="store_true", help="smoke run: 1 rep x 3 s")
    p.add_argument("--soak", type=float, metavar="SECONDS", help="RSS-growth check only (grouptun under load)")
    p.add_argument("--soak-interval", type=float, default=5.0)
    p.add_argument("--out", type=Path, help="JSON results (default /tmp/gt-bench-<UTC time>.json)")
    p.add_argument("--timeout", type=float, help="whole-run deadline, s (default: from the plan)")
    args = p.parse_args(argv)
    if args.quick:
        args.reps, args.duration = 1, 3.0
    if args.reps < 1 or args.duration < 1 or (args.soak is not None and args.soak < 2 * args.soak_interval):
        p.error("--reps >= 1, --duration >= 1, --soak >= 2 x --soak-interval")
    args.peers = [x for x in args.peers.split(",") if x]
    for name in args.peers:
        if name in ("plain", "grouptun"):
            p.error(f"--peers: {name} is always measured; list only harness peers")
        if PEERS_DIR.is_dir() and not (PEERS_DIR / f"peer-{name}.sh").is_file():
            p.error(f"--peers: no peer-{name}.sh in {PEERS_DIR}")
    return args


def peers_harness_missing() -> str | None:
    """Why no peer can run here, or None when the harness is present."""
    if PEERS_DIR.is_dir():
        return None
    return f"needs the peers harness at {PEERS_DIR} (../shared/bench/peers beside the repository), absent"


def available_peers(names: list[str]) -> tuple[list[str], list[str]]:
    """(installed, skipped-with-reason) by ``command -v`` of their binaries."""
    missing_harness = peers_harness_missing()
    if missing_harness:
        return [], [f"{name} ({missing_harness})" for name in names]
    ok, skipped = [], []
    for name in names:
        missing = [c for c in PEER_CMDS.get(name, ()) if shutil.which(c) is None]
        (skipped.append(f"{name} (not installed: {' '.join(missing)})") if missing else ok.append(name))
    return ok, skipped


def run_meta(args, run_id: str, settings: Settings) -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "?")
    iperf = subprocess.run(["iperf3", "--version"], capture_output=True, text=True, timeout=10,
                           check=False).stdout.splitlines()[:1]
    status = subprocess.run(["git", "-C", str(REPO), "status", "--short"],
                            capture_output=True, text=True, timeout=10, check=False).stdout.splitlines()
    return {"run_id": run_id, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "host": platform.node(), "kernel": platform.release(), "cpu": cpu, "nproc": os.cpu_count(),
            "loadavg_start": os.getloadavg()[0], "iperf3": iperf[0] if iperf else "?",
            "commit": git_state(), "git_status": status[:40], "tree_digest": tree_digest(),
            "argv": sys.argv[1:], "reps": args.reps, "duration_s": settings.duration,
            "parallel": settings.parallel, "udp_len": settings.udp_len, "ping_count": settings.ping_count,
            "tcp_cc": settings.tcp_cc, "offload_arg": args.offload}


def bench_reps(args, settings: Settings, adapters: list, rawdir: Path, records: list[dict]) -> None:
    for rep in range(1, args.reps + 1):
        for adapter in adapters:
            print(f"[{time.strftime('%H:%M:%S')}] == {adapter.name}, repetition {rep}/{args.reps}", flush=True)
            try:
                target = adapter.up()
            except UP_ERRORS as exc:   # this peer, this rep failed: record it, go on
                rec = bs.empty_record(adapter.name, rep, "?")
                rec["errors"].append(f"up failed: {str(exc).splitlines()[0][:300]}")
                records.append(rec)
                print(f"   up failed: {exc}", flush=True)
                adapter.down()
                continue
            try:
                rec = measure(target, settings, rep, rawdir / f"{adapter.name}-rep{rep}")
            finally:
                adapter.down()
            records.append(rec)
            print(f"   tcp1 {rec['tcp1_mbps']} Mbit/s (cpu {rec['cpu_s_per_gb']} s/GB, "
                  f"kernel {rec['kernel_s_per_gb']}, retrans "
                  f"{rec['tcp1_retrans']}), tcp{settings.parallel} {rec['tcp4_mbps']}, udp rx "
                  f"{rec['udp_rx_mbps']} ({rec['udp_rx_pps']} pps, loss {rec['udp_loss_pct']}%), rtt avg "
                  f"{rec['ping_avg_ms']} ms, rss idle/load {rec['rss_idle_mib']}/{rec['rss_load_mib']} MiB"
                  + (f"  errors: {'; '.join(rec['errors'])}" if rec["errors"] else ""), flush=True)
            time.sleep(1.0)


def report(doc: dict) -> str:
    m = doc["meta"]
    lines = [f"run {m['run_id']}: {m['cpu']} x{m['nproc']}, kernel {m['kernel']}, {m['iperf3']}, "
             f"grouptun {m['commit']}, tree {m.get('tree_digest')}, offload {m.get('offload')}"]
    if not doc["summary"]:
        lines.append("")
    else:
        lines += [f"{m['reps']} x {m['duration_s']:g} s per test, TCP {m['tcp_cc']}, "
                  f"UDP {m['udp_len']} B unlimited rate, medians; ratio columns against {doc['reference']} "
                  + ("(no other peer in this run: the veth ceiling)" if doc["reference"] == "plain"
                     else "(best peer in this run by TCP x1)"), ""]
        lines += [bs.markdown_table(doc["summary"], doc["reference"]), ""]
        for peer, s in doc["summary"].items():
            lines.append(f"- {peer} [{s['topology']}]: {s['version'] or '?'} -- {s['notes'] or ''}")
        for r in doc["records"]:
            if r["errors"]:
                lines.append(f"  - {r['peer']} rep {r['rep']} errors: {'; '.join(r['errors'])}")
    for s in doc["skipped"]:
        lines.append(f"- skipped: {s}")
    if doc.get("soak"):
        k = doc["soak"]
        lines.append(f"soak {k['seconds']:g} s (TCP x1 {k['tcp_mbps']} Mbit/s): RSS of both daemons "
                     f"start {k['start_mib']} / end {k['end_mib']} / max {k['max_mib']} MiB, HWM "
                     f"{k['hwm_mib']} MiB, slope {k['slope_mib_per_min']} MiB/min (second half "
                     f"{k['slope_second_half_mib_per_min']}), {k['samples']} samples")
    return "\n".join(lines)


def _plan_seconds(args, n_adapters: int) -> float:
    per_rep = n_adapters * (3 * (args.duration + 12) + 40)
    return 150 + args.reps * per_rep + (args.soak + 60 if args.soak else 0)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("scripts/bench: must run as root (network namespaces, TUN)", file=sys.stderr)
        return 1
    run_id = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out = args.out or Path(f"/tmp/gt-bench-{run_id}.json")
    rawdir = out.with_suffix(".raw")
    settings = Settings(duration=args.duration)
    peers, skipped = available_peers(args.peers) if args.soak is None else ([], [])
    for reason in skipped:
        print(f"scripts/bench: skipping peer {reason}", file=sys.stderr)
    doc = {"meta": run_meta(args, run_id, settings), "records": [], "summary": {},
           "reference": None, "skipped": skipped, "soak": None, "error": None}
    doc["meta"]["offload"] = None
    if peers and list_ns("pb-"):
        print(f"scripts/bench: namespaces {' '.join(list_ns('pb-'))} exist: is another peers-harness run "
              f"going on? (remove them with: bash {PEERS_DIR}/topology.sh down)", file=sys.stderr)
        return 1
    signal.signal(signal.SIGINT, signal.default_int_handler)
    install_signal_handlers()
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, args.timeout or _plan_seconds(args, 2 + len(peers)))
    lab = VethLab()
    adapters: list = []
    try:
        with lab:
            gt = GrouptunPeer(lab, args.offload)
            doc["meta"]["offload"] = gt.offload
            if args.soak is not None:
                target = gt.up()
                print(f"soak: {args.soak:g} s of TCP x1 through grouptun, RSS every {args.soak_interval:g} s",
                      flush=True)
                doc["soak"] = soak(target, settings, args.soak, args.soak_interval, rawdir / "soak")
            else:
                adapters = [PlainPeer(lab), gt]
                # Listed before topology.sh up, so that the finally below tears it down in any case.
                adapters += [ScriptPeer(n, PEERS_DIR / f"peer-{n}.sh", rawdir / "pb-run", rawdir / "logs")
                             for n in peers]
                if peers:
                    topology("up", rawdir)
                bench_reps(args, settings, adapters, rawdir, doc["records"])
    except DeadlineReached:
        doc["error"] = "whole-run deadline reached; stopped and cleaned up"
    except KeyboardInterrupt:
        doc["error"] = "interrupted (Ctrl-C); cleaned up"
    except SystemExit as exc:
        doc["error"] = f"terminated ({exc.code}); cleaned up"
    except Exception as exc:       # any failure: report it, keep the partial records
        doc["error"] = f"{type(exc).__name__}: {exc}"[:2000]
        print(lab.log_tails(20), file=sys.stderr)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        for adapter in adapters[2:]:
            adapter.close()
        if len(adapters) > 2:
            topology("down", rawdir)
        shutil.rmtree(rawdir / "pb-run", ignore_errors=True)   # peers' keys
    doc["summary"] = bs.summarize(doc["records"]) if doc["records"] else {}
    doc["reference"] = bs.reference_peer(doc["summary"]) if doc["summary"] else None
    out.write_text(json.dumps(doc, indent=1))
    text = report(doc)
    print("\n" + text)
    out.with_suffix(".md").write_text(text + "\n")
    print(f"\nresults: {out} (table {out.with_suffix('.md')}, raw {rawdir}/)")
    if doc["error"]:
        print(f"ERROR: {doc['error']}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
