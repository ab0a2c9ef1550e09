"""Pure figures for ``scripts/bench``: iperf3/ping/proc parsing, medians, table.

Nothing here touches the system: every function takes text or numbers and
returns numbers, so the unit tests feed it canned iperf3 JSON. The figures
mirror ../shared/bench/peers/pbresults.py (same keys where they overlap) so
that a grouptun row and a peer row mean the same thing.

Limits: iperf3 3.x ``--json`` layout (``end.sum_sent`` / ``end.sum_received``;
UDP also ``end.sum``); /proc layouts of Linux. Missing or failed inputs give
None plus a note in ``errors``, never a made-up number.
"""

from __future__ import annotations

import json
import re
import statistics
from typing import Iterable

# Every per-repetition record carries exactly these keys (None when not measured).
RECORD_KEYS = (
    "peer", "rep", "topology", "mtu", "version", "notes",
    "tcp1_mbps", "tcp1_retrans", "tcp4_mbps",
    "udp_tx_mbps", "udp_rx_mbps", "udp_rx_pps", "udp_loss_pct",
    "ping_min_ms", "ping_avg_ms", "ping_max_ms", "ping_loss_pct",
    "ping200_avg_ms", "ping1_avg_ms", "pingflood_avg_ms",
    "tcp1_wall_s", "tcp1_gb", "tcp1_daemon_cpu_s", "tcp1_daemon_cpu_pct",
    "tcp1_daemon_cpu_pct_a", "tcp1_daemon_cpu_pct_b", "cpu_s_per_gb", "kernel_s_per_gb",
    "tcp1_host_cpu_pct",
    "rss_idle_mib", "rss_load_mib", "rss_hwm_mib", "errors",
)
# Keys whose median goes into the summary.
NUMERIC_KEYS = tuple(k for k in RECORD_KEYS if k not in
                     ("peer", "rep", "topology", "mtu", "version", "notes", "errors"))
_PING_LOSS = re.compile(r"([\d.]+)% packet loss")
_PING_RTT = re.compile(r"= ([\d.]+)/([\d.]+)/([\d.]+)/([\d.]+) ms")


def empty_record(peer: str, rep: int, topology: str) -> dict:
    rec = {k: None for k in RECORD_KEYS}
    rec.update(peer=peer, rep=rep, topology=topology, errors=[])
    return rec


def load_iperf(text: str, name: str, errors: list[str]) -> dict | None:
    """iperf3's JSON document, or None with a note in ``errors``."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        errors.append(f"{name}: not JSON ({exc.__class__.__name__}: {text.strip()[:80]!r})")
        return None
    if not isinstance(data, dict) or "end" not in data:
        errors.append(f"{name}: no 'end' section")
        return None
    if data.get("error"):
        errors.append(f"{name}: {data['error']}")
        return None
    return data


def _mbps(bps: float) -> float:
    return round(bps / 1e6, 1)


def tcp_figures(data: dict) -> dict:
    """Received Mbit/s, sender retransmits, and bytes moved including the
    omitted warm-up (the CPU window covers it too)."""
    end = data["end"]
    received = end["sum_received"]
    omitted = sum(int(i["sum"]["bytes"]) for i in data.get("intervals", [])
                  if i.get("sum", {}).get("omitted"))
    return {"mbps": _mbps(float(received["bits_per_second"])),
            "retrans": end.get("sum_sent", {}).get("retransmits"),
            "bytes_total": int(received["bytes"]) + omitted}


def udp_figures(data: dict) -> dict:
    """Sent and delivered Mbit/s, delivered packets/s, loss % (receiver side)."""
    end = data["end"]
    recv = end.get("sum_received") or end["sum"]
    sent = end.get("sum_sent") or end["sum"]
    packets, lost = int(recv.get("packets", 0)), int(recv.get("lost_packets", 0))
    seconds = float(recv.get("seconds") or 0.0)
    return {"tx_mbps": _mbps(float(sent["bits_per_second"])),
            "rx_mbps": _mbps(float(recv["bits_per_second"])),
            "rx_pps": round((packets - lost) / seconds) if seconds > 0 else None,
            "loss_pct": round(float(recv.get("lost_percent", 0.0)), 2)}


def ping_figures(text: str, errors: list[str]) -> dict:
    out = {"ping_min_ms": None, "ping_avg_ms": None, "ping_max_ms": None, "ping_loss_pct": None}
    loss, rtt = _PING_LOSS.search(text), _PING_RTT.search(text)
    if loss:
        out["ping_loss_pct"] = float(loss.group(1))
    if rtt:
        out["ping_min_ms"], out["ping_avg_ms"], out["ping_max_ms"] = (
            float(rtt.group(1)), float(rtt.group(2)), float(rtt.group(3)))
    else:
        errors.append("ping: no rtt line")
    return out


def stat_ticks(text: str) -> tuple[int, int]:
    """(utime + stime, stime) in clock ticks, all threads, from a /proc/PID/stat line: stime is the kernel's share
    (the TUN and UDP system calls and what they run), which no change to the daemon's Python can shrink."""
    fields = text.rsplit(")", 1)[1].split()    # comm may hold spaces and ')'
    utime, stime = int(fields[11]), int(fields[12])   # fields 14 and 15 of stat(5)
    return utime + stime, stime


def status_kib(text: str, key: str) -> int | None:
    """A ``kB`` value (VmRSS, VmHWM) from /proc/PID/status, or None."""
    m = re.search(rf"^{key}:\s+(\d+) kB", text, re.MULTILINE)
    return int(m.group(1)) if m else None


def host_ticks(text: str) -> tuple[int, int]:
    """(busy, total) ticks from the first line of /proc/stat."""
    user, nice, system, idle, iowait, irq, softirq, steal = (int(v) for v in text.split()[1:9])
    busy = user + nice + system + irq + softirq + steal
    return busy, busy + idle + iowait


def cpu_figures(ticks_a: int, ticks_b: int, hz: int, wall_s: float, bytes_total: int | None,
                kernel_ticks: int = 0) -> dict:
    """Daemon CPU during the TCP x1 test: seconds, % of one core, s per GB moved (all, and the kernel's part)."""
    cpu_s = (ticks_a + ticks_b) / hz
    gb = bytes_total / 1e9 if bytes_total else None
    return {"tcp1_daemon_cpu_s": round(cpu_s, 2),
            "tcp1_daemon_cpu_pct": round(100 * cpu_s / wall_s, 1),
            "tcp1_daemon_cpu_pct_a": round(100 * ticks_a / hz / wall_s, 1),
            "tcp1_daemon_cpu_pct_b": round(100 * ticks_b / hz / wall_s, 1),
            "tcp1_gb": round(gb, 3) if gb is not None else None,
            "cpu_s_per_gb": round(cpu_s / gb, 2) if gb else None,
            "kernel_s_per_gb": round(kernel_ticks / hz / gb, 2) if gb else None}


def slope_per_min(samples: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, value) samples, per minute; None if < 2 times."""
    if len({t for t, _ in samples}) < 2:
        return None
    ts, vs = [t for t, _ in samples], [v for _, v in samples]
    return statistics.linear_regression(ts, vs).slope * 60.0


def soak_summary(samples: list[tuple[float, float]]) -> dict:
    """start/end/max (MiB) and slopes (MiB/min, whole run and second half)."""
    if not samples:
        return {"samples": 0, "start_mib": None, "end_mib": None, "max_mib": None,
                "slope_mib_per_min": None, "slope_second_half_mib_per_min": None}
    half = [s for s in samples if s[0] >= samples[-1][0] / 2]
    rnd = lambda v: round(v, 3) if v is not None else None  # noqa: E731
    return {"samples": len(samples), "start_mib": rnd(samples[0][1]), "end_mib": rnd(samples[-1][1]),
            "max_mib": rnd(max(v for _, v in samples)),
            "slope_mib_per_min": rnd(slope_per_min(samples)),
            "slope_second_half_mib_per_min": rnd(slope_per_min(half))}


# --- summary over repetitions --------------------------------------------------

def median_of(rows: Iterable[dict], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(values) if values else None


def summarize(records: list[dict]) -> dict[str, dict]:
    """Per peer (in first-seen order): medians of every numeric key, plus
    ``reps`` / ``ok`` counts and the descriptive fields of its first record."""
    out: dict[str, dict] = {}
    for peer in dict.fromkeys(r["peer"] for r in records):
        rows = [r for r in records if r["peer"] == peer]
        med = {k: median_of(rows, k) for k in NUMERIC_KEYS}
        med.update(reps=len(rows), ok=sum(r.get("tcp1_mbps") is not None for r in rows),
                   mtu=rows[0].get("mtu"), topology=rows[0].get("topology"),
                   version=rows[0].get("version"), notes=rows[0].get("notes"))
        out[peer] = med
    return out


def reference_peer(summary: dict[str, dict], exclude: tuple[str, ...] = ("plain", "grouptun")) -> str | None:
    """The best real peer by median TCP x1; ``plain`` when no other peer ran."""
    peers = [(s["tcp1_mbps"], p) for p, s in summary.items()
             if p not in exclude and s.get("tcp1_mbps") is not None]
    if peers:
        return max(peers)[1]
    return "plain" if summary.get("plain", {}).get("tcp1_mbps") is not None else None


def ratio(value: float | None, base: float | None) -> float | None:
    return round(value / base, 3) if value is not None and base else None


RATIO_KEYS = ("tcp1_mbps", "tcp4_mbps", "udp_rx_mbps", "cpu_s_per_gb")
_COLUMNS = (  # header, keys, format
    ("TCP x1 Mbit/s", ("tcp1_mbps",), "{:.0f}"),
    ("TCP x1 retrans", ("tcp1_retrans",), "{:.0f}"),
    ("TCP x4 Mbit/s", ("tcp4_mbps",), "{:.0f}"),
    ("UDP rx Mbit/s", ("udp_rx_mbps",), "{:.0f}"),
    ("UDP rx kpps", ("udp_rx_pps",), "{:.1f}"),
    ("UDP loss %", ("udp_loss_pct",), "{:.1f}"),
    ("RTT min/avg/max ms", ("ping_min_ms", "ping_avg_ms", "ping_max_ms"), "{:.3f}"),
    ("RTT avg ms at 200/10/1 ms, flood", ("ping200_avg_ms", "ping_avg_ms", "ping1_avg_ms", "pingflood_avg_ms"),
     "{:.3f}"),
    ("daemon CPU % (a+b)", ("tcp1_daemon_cpu_pct",), "{:.0f}"),
    ("CPU s/GB", ("cpu_s_per_gb",), "{:.1f}"),
    ("of it kernel s/GB", ("kernel_s_per_gb",), "{:.1f}"),
    ("RSS MiB idle/load/HWM", ("rss_idle_mib", "rss_load_mib", "rss_hwm_mib"), "{:.1f}"),
)


def _cell(s: dict, keys: tuple[str, ...], fmt: str) -> str:
    def one(k):
        v = s.get(k)
        if v is None:
            return "-"
        return fmt.format(v / 1000 if k == "udp_rx_pps" else v)
    return " / ".join(one(k) for k in keys)


def markdown_table(summary: dict[str, dict], ref: str | None) -> str:
    short = {"tcp1_mbps": "TCP x1", "tcp4_mbps": "TCP x4", "udp_rx_mbps": "UDP rx",
             "cpu_s_per_gb": "CPU s/GB"}
    headers = ["peer", "MTU", "ok"] + [h for h, _, _ in _COLUMNS]
    if ref:
        headers += [f"{short[k]} / {ref}" for k in RATIO_KEYS]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for peer, s in summary.items():
        row = [peer, str(s.get("mtu") or "-"), f"{s['ok']}/{s['reps']}"]
        row += [_cell(s, keys, fmt) for _, keys, fmt in _COLUMNS]
        if ref:
            row += [f"{r:.2f}" if (r := ratio(s.get(k), summary[ref].get(k))) is not None else "-"
                    for k in RATIO_KEYS]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)
