"""One repetition of the peers-harness tests against one target, from root.

Same commands and settings as ../shared/bench/peers/run.sh: a fresh
``iperf3 -s -1`` in namespace B per test, the client in namespace A towards
B's overlay address: TCP 1 stream and N streams (``-O 1 -C cubic``), UDP
at unlimited rate (``-u -b 0 -l 1392``), then ``ping -q -c 50 -i 0.01`` and the lone packet at other
gaps: 15 pings 200 ms apart, 300 at 1 ms, and a flood of 2000 (``-f``).
Around the TCP x1 test: utime+stime of the daemons and /proc/stat; during
the three iperf3 tests: the daemons' summed VmRSS, sampled every 0.5 s;
after them: VmHWM. Raw outputs are kept in ``rawdir``.

Limits: every external command runs under ``timeout``; a daemon that dies
mid-test yields None figures plus a note in ``errors``, not a crash.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from grouptun.lab import bench_stats as bs
from grouptun.lab.traffic import tcp_listening
from grouptun.lab.wait import wait_until

HZ = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Settings:
    duration: float = 10.0
    parallel: int = 4
    udp_len: int = 1392
    ping_count: int = 50
    tcp_cc: str = "cubic"
    port: int = 5201


@dataclass
class Target:
    """What a peer adapter hands over once its tunnel passes traffic."""

    name: str
    topology: str                 # "gt-bn" (our veth lab) or "pb" (peers harness)
    ns_a: str
    ns_b: str
    addr_b: str
    mtu: int
    pids_a: list[int] = field(default_factory=list)
    pids_b: list[int] = field(default_factory=list)
    version: str = ""
    notes: str = ""

    @property
    def pids(self) -> list[int]:
        return self.pids_a + self.pids_b


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as fh:
            return fh.read()
    except OSError:
        return None


def ticks(pids: list[int]) -> tuple[int, int] | None:
    """Summed (utime+stime, stime) of ``pids``; None if one of them is gone."""
    total = kernel = 0
    for pid in pids:
        text = _read(f"/proc/{pid}/stat")
        if text is None:
            return None
        both, stime = bs.stat_ticks(text)
        total, kernel = total + both, kernel + stime
    return total, kernel


def mem_kib(pids: list[int], key: str) -> int | None:
    """Summed VmRSS / VmHWM of ``pids`` in KiB; None if one is gone."""
    total = 0
    for pid in pids:
        text = _read(f"/proc/{pid}/status")
        value = bs.status_kib(text, key) if text is not None else None
        if value is None:
            return None
        total += value
    return total


class RssSampler:
    """Max of the summed VmRSS of ``pids`` while running (a thread, 0.5 s steps)."""

    def __init__(self, pids: list[int], interval: float = 0.5) -> None:
        self.pids, self.interval = pids, interval
        self.max_kib: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while True:
            value = mem_kib(self.pids, "VmRSS")
            if value is not None:
                self.max_kib = max(self.max_kib or 0, value)
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> "RssSampler":
        if self.pids:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5.0)


def _ns(ns: str, argv: list[str]) -> list[str]:
    return ["ip", "netns", "exec", ns, *argv]


def iperf_test(t: Target, s: Settings, out: Path, args: list[str], seconds: float | None = None) -> str:
    """One-off server in B, client in A; returns (and saves) the client's JSON text."""
    seconds = s.duration if seconds is None else seconds
    with open(out.with_suffix(".server.log"), "wb") as log:
        server = subprocess.Popen(_ns(t.ns_b, ["timeout", str(int(seconds + 40)), "iperf3", "-s", "-1",
                                               "-p", str(s.port)]),
                                  stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                  process_group=0)  # our session: see grouptun.lab.process
    try:
        wait_until(lambda: tcp_listening(t.ns_b, s.port, timeout=10) or server.poll() is not None,
                   timeout=5.0)
        argv = _ns(t.ns_a, ["timeout", str(int(seconds + 30)), "iperf3", "-c", t.addr_b,
                            "-p", str(s.port), "-t", f"{seconds:g}", "-J", *args])
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 45, check=False)
        out.write_text(proc.stdout)
        if proc.stderr:
            out.with_suffix(".client.err").write_text(proc.stderr)
        return proc.stdout
    finally:
        if server.poll() is None:
            server.terminate()
        try:
            server.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=5.0)


def _tcp_args(s: Settings) -> list[str]:
    return ["-O", "1"] + (["-C", s.tcp_cc] if s.tcp_cc else [])


def measure(t: Target, s: Settings, rep: int, rawdir: Path) -> dict:
    """All tests of one repetition; returns a record with every RECORD_KEYS key."""
    rawdir.mkdir(parents=True, exist_ok=True)
    rec = bs.empty_record(t.name, rep, t.topology)
    rec.update(mtu=t.mtu, version=t.version, notes=t.notes)
    errors = rec["errors"]
    has_daemon = bool(t.pids)
    if has_daemon:
        time.sleep(1.0)    # let the bring-up settle before calling it idle
        idle = mem_kib(t.pids, "VmRSS")
        rec["rss_idle_mib"] = round(idle / 1024, 2) if idle is not None else None
    with RssSampler(t.pids) as sampler:
        a0, b0 = ticks(t.pids_a), ticks(t.pids_b)
        host0, wall0 = bs.host_ticks(_read("/proc/stat") or ""), time.monotonic()
        text = iperf_test(t, s, rawdir / "tcp1.json", _tcp_args(s))
        a1, b1 = ticks(t.pids_a), ticks(t.pids_b)
        host1, wall1 = bs.host_ticks(_read("/proc/stat") or ""), time.monotonic()
        tcp1 = bs.load_iperf(text, "tcp1", errors)
        rec["tcp1_wall_s"] = round(wall1 - wall0, 3)
        if tcp1:
            fig = bs.tcp_figures(tcp1)
            rec.update(tcp1_mbps=fig["mbps"], tcp1_retrans=fig["retrans"])
            if has_daemon and None not in (a0, a1, b0, b1):
                rec.update(bs.cpu_figures(a1[0] - a0[0], b1[0] - b0[0], HZ, wall1 - wall0, fig["bytes_total"],
                                          kernel_ticks=a1[1] - a0[1] + b1[1] - b0[1]))
            elif has_daemon:
                errors.append("tcp1: a daemon exited during the test (no CPU figure)")
        busy, total = host1[0] - host0[0], host1[1] - host0[1]
        rec["tcp1_host_cpu_pct"] = round(100 * os.cpu_count() * busy / total, 1) if total else None

        tcp4 = bs.load_iperf(iperf_test(t, s, rawdir / "tcp4.json", _tcp_args(s) + ["-P", str(s.parallel)]),
                             "tcp4", errors)
        rec["tcp4_mbps"] = bs.tcp_figures(tcp4)["mbps"] if tcp4 else None
        udp = bs.load_iperf(iperf_test(t, s, rawdir / "udp.json", ["-u", "-b", "0", "-l", str(s.udp_len)]),
                            "udp", errors)
        if udp:
            fig = bs.udp_figures(udp)
            rec.update(udp_tx_mbps=fig["tx_mbps"], udp_rx_mbps=fig["rx_mbps"],
                       udp_rx_pps=fig["rx_pps"], udp_loss_pct=fig["loss_pct"])
    if has_daemon:
        hwm = mem_kib(t.pids, "VmHWM")
        rec["rss_load_mib"] = round(sampler.max_kib / 1024, 2) if sampler.max_kib else None
        rec["rss_hwm_mib"] = round(hwm / 1024, 2) if hwm is not None else None
    rec.update(bs.ping_figures(_ping(t, rawdir / "ping.txt", s.ping_count, "0.01"), errors))
    # the lone packet at other gaps: asleep 200 ms (every step cold), 1 ms, and a flood (nothing cold)
    for key, count, interval in (("ping200_avg_ms", 15, "0.2"), ("ping1_avg_ms", 300, "0.001"),
                                 ("pingflood_avg_ms", 2000, None)):
        text = _ping(t, rawdir / f"{key}.txt", count, interval)
        rec[key] = bs.ping_figures(text, errors)["ping_avg_ms"]
    return rec


def _ping(t: Target, out: Path, count: int, interval: str | None) -> str:
    """``ping -q`` from a to b (``-f`` when ``interval`` is None); its output, also written to ``out``."""
    gap = ["-f"] if interval is None else ["-i", interval]
    proc = subprocess.run(_ns(t.ns_a, ["timeout", "30", "ping", "-q", "-c", str(count), *gap, "-W", "1",
                                       t.addr_b]), capture_output=True, text=True, timeout=40, check=False)
    out.write_text(proc.stdout + proc.stderr)
    return proc.stdout


def soak(t: Target, s: Settings, seconds: float, interval: float, rawdir: Path) -> dict:
    """RSS of the daemons (summed MiB) every ``interval`` s under a TCP x1 load
    of ``seconds``; returns the samples and their start/end/max/slope."""
    rawdir.mkdir(parents=True, exist_ok=True)
    samples: list[tuple[float, float]] = []
    result: dict = {}
    t0 = time.monotonic()

    def run_load():
        result["text"] = iperf_test(t, s, rawdir / "soak.json", ["-i", "5"] + _tcp_args(s), seconds)

    loader = threading.Thread(target=run_load, daemon=True)
    loader.start()
    for _ in range(int(seconds / interval) + 20):   # bounded: ends with the load
        value = mem_kib(t.pids, "VmRSS")
        if value is not None:
            samples.append((round(time.monotonic() - t0, 2), value / 1024))
        loader.join(timeout=interval)
        if not loader.is_alive():
            break
    loader.join(timeout=seconds + 60)
    errors: list[str] = []
    data = bs.load_iperf(result.get("text", ""), "soak", errors)
    out = bs.soak_summary(samples)
    out.update(seconds=seconds, interval_s=interval, tcp_mbps=bs.tcp_figures(data)["mbps"] if data else None,
               hwm_mib=round(h / 1024, 2) if (h := mem_kib(t.pids, "VmHWM")) is not None else None,
               daemons_alive=mem_kib(t.pids, "VmRSS") is not None,
               samples_mib=[[ts, round(v, 3)] for ts, v in samples], errors=errors)
    return out
