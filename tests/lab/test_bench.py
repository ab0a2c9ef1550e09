"""scripts/bench figures from canned iperf3 / ping / proc text (no root needed)."""

from __future__ import annotations

import json
import subprocess

import pytest

from grouptun.lab import bench_stats as bs
from grouptun.lab.bench import available_peers, parse_args, report
from grouptun.lab.bench_peers import _read_peer_env

# Shapes as iperf3 3.12 writes them (-J), trimmed to the keys we read.
TCP_JSON = {
    "intervals": [{"sum": {"bytes": 1_000_000, "omitted": True}},
                  {"sum": {"bytes": 60_000_000, "omitted": False}},
                  {"sum": {"bytes": 65_000_000, "omitted": False}}],
    "end": {"sum_sent": {"seconds": 2.0, "bytes": 125_000_000, "bits_per_second": 5.0e8, "retransmits": 17},
            "sum_received": {"seconds": 2.0, "bytes": 124_000_000, "bits_per_second": 4.96e8}},
}
UDP_JSON = {
    "intervals": [],
    "end": {"sum": {"seconds": 2.0, "bits_per_second": 1.0e8, "packets": 18000, "lost_packets": 0},
            "sum_sent": {"seconds": 2.0, "bits_per_second": 8.0e8, "packets": 140000, "lost_packets": 0},
            "sum_received": {"seconds": 2.0, "bits_per_second": 2.0e8, "packets": 140000,
                             "lost_packets": 104000, "lost_percent": 74.2857}},
}
PING = """--- 10.98.0.2 ping statistics ---
50 packets transmitted, 50 received, 0% packet loss, time 612ms
rtt min/avg/max/mdev = 0.310/0.402/1.512/0.081 ms
"""


def test_tcp_figures_count_the_omitted_second_in_bytes():
    fig = bs.tcp_figures(TCP_JSON)
    assert fig == {"mbps": 496.0, "retrans": 17, "bytes_total": 125_000_000}


def test_udp_figures_delivered_rate_packets_and_loss():
    fig = bs.udp_figures(UDP_JSON)
    assert fig == {"tx_mbps": 800.0, "rx_mbps": 200.0, "rx_pps": 18000, "loss_pct": 74.29}


def test_udp_figures_old_layout_with_only_sum():
    old = {"end": {"sum": {"seconds": 1.0, "bits_per_second": 1.1e7, "packets": 1000,
                           "lost_packets": 10, "lost_percent": 1.0}}}
    assert bs.udp_figures(old) == {"tx_mbps": 11.0, "rx_mbps": 11.0, "rx_pps": 990, "loss_pct": 1.0}


@pytest.mark.parametrize("text, needle", [
    ("", "not JSON"),
    ("iperf3: error - unable to connect", "not JSON"),
    (json.dumps({"start": {}, "end": {}, "error": "unable to connect to server"}), "unable to connect"),
    (json.dumps({"start": {}}), "no 'end'"),
])
def test_load_iperf_failures_are_none_with_a_note(text, needle):
    errors: list[str] = []
    assert bs.load_iperf(text, "tcp1", errors) is None
    assert len(errors) == 1 and needle in errors[0] and errors[0].startswith("tcp1")


def test_ping_figures():
    errors: list[str] = []
    assert bs.ping_figures(PING, errors) == {"ping_min_ms": 0.31, "ping_avg_ms": 0.402,
                                             "ping_max_ms": 1.512, "ping_loss_pct": 0.0}
    assert errors == []
    assert bs.ping_figures("connect: Network is unreachable", errors)["ping_avg_ms"] is None
    assert errors == ["ping: no rtt line"]


def test_proc_parsers():
    # comm with a space and a ')' must not shift the fields
    stat = "4242 (py thon) x) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 31 0 0 20 0 3 0 99 0 0"
    assert bs.stat_ticks(stat) == (281, 31)  # utime 250 + stime 31, and stime alone
    status = "Name:\tpython3\nVmHWM:\t  204800 kB\nVmRSS:\t   71680 kB\n"
    assert (bs.status_kib(status, "VmRSS"), bs.status_kib(status, "VmHWM")) == (71680, 204800)
    assert bs.status_kib("Name:\tkthreadd\n", "VmRSS") is None
    assert bs.host_ticks("cpu  100 5 50 800 10 1 2 3 0 0\ncpu0 1 2 3\n") == (161, 971)


def test_cpu_figures_seconds_per_gb():
    fig = bs.cpu_figures(ticks_a=300, ticks_b=200, hz=100, wall_s=10.0, bytes_total=2_500_000_000,
                         kernel_ticks=125)
    assert fig == {"tcp1_daemon_cpu_s": 5.0, "tcp1_daemon_cpu_pct": 50.0, "tcp1_daemon_cpu_pct_a": 30.0,
                   "tcp1_daemon_cpu_pct_b": 20.0, "tcp1_gb": 2.5, "cpu_s_per_gb": 2.0, "kernel_s_per_gb": 0.5}
    assert bs.cpu_figures(1, 1, 100, 1.0, 0)["cpu_s_per_gb"] is None


def test_slope_and_soak_summary():
    growing = [(t, 100.0 + 0.5 * t) for t in range(0, 300, 5)]      # 0.5 MiB/s = 30 MiB/min
    assert bs.slope_per_min(growing) == pytest.approx(30.0)
    assert bs.slope_per_min([(0.0, 1.0)]) is None
    flat_then_step = [(float(t), 100.0) for t in range(0, 50, 5)] + [(float(t), 120.0) for t in range(50, 100, 5)]
    s = bs.soak_summary(flat_then_step)
    assert (s["start_mib"], s["end_mib"], s["max_mib"], s["samples"]) == (100.0, 120.0, 120.0, 20)
    assert s["slope_mib_per_min"] > 0 and s["slope_second_half_mib_per_min"] == 0.0
    assert bs.soak_summary([])["max_mib"] is None


def _rec(peer, rep, **kw):
    rec = bs.empty_record(peer, rep, "gt-bn")
    rec.update(mtu=1420, **kw)
    return rec


RECORDS = [
    _rec("plain", 1, tcp1_mbps=20000.0, udp_rx_mbps=2500.0), _rec("plain", 2, tcp1_mbps=18000.0),
    _rec("grouptun", 1, tcp1_mbps=300.0, tcp4_mbps=280.0, udp_rx_mbps=100.0, cpu_s_per_gb=20.0),
    _rec("grouptun", 2, tcp1_mbps=500.0, tcp4_mbps=None, udp_rx_mbps=120.0, cpu_s_per_gb=16.0),
    _rec("grouptun", 3, tcp1_mbps=400.0, tcp4_mbps=300.0, udp_rx_mbps=110.0, cpu_s_per_gb=18.0),
    _rec("nebula", 1, tcp1_mbps=800.0, tcp4_mbps=600.0, udp_rx_mbps=400.0, cpu_s_per_gb=3.0),
    _rec("wireguard-go", 1, tcp1_mbps=500.0, tcp4_mbps=450.0, udp_rx_mbps=270.0, cpu_s_per_gb=4.0),
    _rec("wireguard-go", 2),     # up failed: every figure None
]


def test_summarize_medians_ignore_missing_values():
    s = bs.summarize(RECORDS)
    assert list(s) == ["plain", "grouptun", "nebula", "wireguard-go"]
    assert s["grouptun"]["tcp1_mbps"] == 400.0
    assert s["grouptun"]["tcp4_mbps"] == 290.0          # median of the two that ran
    assert (s["grouptun"]["ok"], s["grouptun"]["reps"]) == (3, 3)
    assert (s["wireguard-go"]["ok"], s["wireguard-go"]["reps"]) == (1, 2)
    assert s["plain"]["tcp1_mbps"] == 19000.0
    assert set(bs.NUMERIC_KEYS) <= set(s["plain"])


def test_reference_is_best_real_peer_else_plain():
    s = bs.summarize(RECORDS)
    assert bs.reference_peer(s) == "nebula"
    only_ours = bs.summarize([r for r in RECORDS if r["peer"] in ("plain", "grouptun")])
    assert bs.reference_peer(only_ours) == "plain"
    assert bs.reference_peer(bs.summarize([_rec("grouptun", 1)])) is None


def test_markdown_table_with_ratio_columns():
    s = bs.summarize(RECORDS)
    table = bs.markdown_table(s, "nebula").splitlines()
    header = [c.strip() for c in table[0].strip("|").split("|")]
    assert header[-4:] == ["TCP x1 / nebula", "TCP x4 / nebula", "UDP rx / nebula", "CPU s/GB / nebula"]
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.strip("|").split("|")] for line in table[2:]}
    assert rows["grouptun"][-4:] == ["0.50", "0.48", "0.28", "6.00"]
    assert rows["nebula"][-4:] == ["1.00", "1.00", "1.00", "1.00"]
    assert rows["wireguard-go"][2] == "1/2"
    assert len(table) == 2 + 4 and all(len(r) == len(header) for r in rows.values())


def test_report_mentions_reference_errors_and_skips():
    records = [dict(r) for r in RECORDS]
    records[-1]["errors"] = ["up failed: boom"]
    summary = bs.summarize(records)
    doc = {"meta": {"run_id": "X", "cpu": "cpu", "nproc": 2, "kernel": "k", "iperf3": "iperf 3.12",
                    "commit": "abc", "reps": 3, "duration_s": 10.0, "tcp_cc": "cubic", "udp_len": 1392},
           "records": records, "summary": summary, "reference": "nebula",
           "skipped": ["tinc (not installed: tincd)"], "soak": None}
    text = report(doc)
    assert "against nebula" in text and "wireguard-go rep 2 errors: up failed: boom" in text
    assert "skipped: tinc (not installed: tincd)" in text


@pytest.fixture
def peers_harness(tmp_path, monkeypatch):
    """A stand-in for ../shared/bench/peers: just the peer scripts' names, so no unit test needs it."""
    harness = tmp_path / "peers"
    harness.mkdir()
    for name in ("nebula", "wireguard-go"):
        (harness / f"peer-{name}.sh").write_text("#!/bin/sh\n")
    monkeypatch.setattr("grouptun.lab.bench.PEERS_DIR", harness)
    return harness


def test_parse_args_quick_and_bad_peers(peers_harness):
    args = parse_args(["--quick", "--peers", "nebula,wireguard-go"])
    assert (args.reps, args.duration, args.peers) == (1, 3.0, ["nebula", "wireguard-go"])
    for bad in (["--peers", "nosuchvpn"], ["--peers", "grouptun"], ["--reps", "0"],
                ["--soak", "5", "--soak-interval", "5"]):
        with pytest.raises(SystemExit):
            parse_args(bad)


def test_available_peers_skips_missing_binaries(peers_harness, monkeypatch):
    monkeypatch.setattr("grouptun.lab.bench.shutil.which", lambda c: None if c == "nebula" else f"/usr/bin/{c}")
    ok, skipped = available_peers(["nebula", "wireguard-go"])
    assert ok == ["wireguard-go"] and skipped == ["nebula (not installed: nebula)"]


def test_without_the_peers_harness_peers_are_skipped_with_the_reason(tmp_path, monkeypatch):
    absent = tmp_path / "shared" / "bench" / "peers"
    monkeypatch.setattr("grouptun.lab.bench.PEERS_DIR", absent)
    monkeypatch.setattr("grouptun.lab.bench.shutil.which", lambda c: f"/usr/bin/{c}")
    args = parse_args(["--peers", "nebula"])  # accepted: the run measures plain and grouptun anyway
    ok, skipped = available_peers(args.peers)
    assert ok == [] and skipped == [f"nebula (needs the peers harness at {absent} "
                                    "(../shared/bench/peers beside the repository), absent)"]
    with pytest.raises(SystemExit):
        parse_args(["--peers", "grouptun"])


def test_read_peer_env_decodes_printf_q(tmp_path):
    env = tmp_path / "peer.env"
    script = ('for kv in "$@"; do printf "%s=%q\\n" "${kv%%=*}" "${kv#*=}"; done >"$0"')
    subprocess.run(["bash", "-c", script, str(env), "PEER_ADDR_A=10.202.1.1", "PEER_ADDR_B=10.202.1.2",
                    "PEER_MTU=1420", "PEER_PIDS_A=11 12", "PEER_PIDS_B=13",
                    "PEER_VERSION=wireguard-go v0.0.2022 (it's $HOME)", "PEER_NOTES="],
                   check=True, timeout=10)
    got = _read_peer_env(env)
    assert got["PEER_PIDS_A"] == "11 12" and got["PEER_VERSION"] == "wireguard-go v0.0.2022 (it's $HOME)"
    assert got["PEER_NOTES"] == "" and got["PEER_MTU"] == "1420"


def _member_config(tmp_path):
    from grouptun import config as gconfig
    cfg = gconfig.Config(
        group=gconfig.GroupConfig("bn", "a", bytes(16), "gt-bn", ("10.98.0.1/24",)),
        provider=gconfig.ProviderConfig("https://10.97.0.1:8443", "ab" * 32, "cd" * 32, bytes(32), bytes(1952)),
        paths=gconfig.PathsConfig(tmp_path / "state", tmp_path / "bn.sock"))
    path = tmp_path / "bn.toml"
    path.write_text(gconfig.render(cfg))
    return path


def test_set_offload_rewrites_the_member_config(tmp_path):
    from grouptun import config as gconfig
    from grouptun.lab.bench_peers import offload_key_present, set_offload
    # The bench also drives older trees without the key (offload_key_present guards that); this one has it.
    assert offload_key_present()
    path = _member_config(tmp_path)
    assert set_offload(path, "off") == "off"
    cfg = gconfig.load(path)
    assert cfg.daemon.offload == "off" and cfg.group.addresses == ("10.98.0.1/24",)
    assert set_offload(path, "auto") == "auto"


def test_bench_peer_set_mtu(tmp_path):
    from grouptun import config as gconfig
    from grouptun.lab.bench_peer import set_mtu
    path = _member_config(tmp_path)
    set_mtu(path, 1400)
    assert gconfig.load(path).network.mtu == 1400
