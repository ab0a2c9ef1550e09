"""Smoke run of ``scripts/bench --quick`` (root): every field is in the JSON,
grouptun moved traffic, and nothing is left behind. Figures are printed by
the script, never asserted against a speed."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from grouptun.lab import bench_stats as bs
from grouptun.lab.netns import links, list_ns

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.root
def test_bench_quick_writes_every_field(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([str(REPO / "scripts" / "bench"), "--quick", "--out", str(out), "--timeout", "100"],
                          capture_output=True, text=True, timeout=130, check=False)
    print(proc.stdout[-3000:], proc.stderr[-2000:])
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads(out.read_text())
    assert set(doc) >= {"meta", "records", "summary", "reference", "skipped", "soak", "error"}
    assert doc["error"] is None and doc["reference"] == "plain"
    assert [r["peer"] for r in doc["records"]] == ["plain", "grouptun"]
    for rec in doc["records"]:
        assert set(rec) == set(bs.RECORD_KEYS) and rec["errors"] == [], rec
    gt = doc["records"][1]
    # Every figure of a tunnel with daemons was measured (not None).
    missing = [k for k in bs.NUMERIC_KEYS if gt[k] is None]
    assert missing == [], missing
    assert gt["tcp1_mbps"] > 0 and gt["rss_idle_mib"] > 0 and gt["cpu_s_per_gb"] > 0
    assert set(doc["summary"]["grouptun"]) >= set(bs.NUMERIC_KEYS)
    for key in ("commit", "git_status", "tree_digest", "offload", "kernel", "duration_s", "reps"):
        assert key in doc["meta"]
    assert "| grouptun | 1420 | 1/1 |" in out.with_suffix(".md").read_text()
    assert list_ns("gt-bn-") == [] and [n for n in links() if n.startswith("gt-bn")] == []
