"""scripts/bench-core still runs (a smoke run; figures are not judged here)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench-core"


def test_bench_core_smoke_run():
    done = subprocess.run([sys.executable, str(SCRIPT), "--repeats", "1", "--smoke"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    rows = [line.split() for line in done.stdout.splitlines()[2:]]
    assert {(row[0], row[1], row[2]) for row in rows} >= {
        ("1400", "1", "session"), ("1400", "2", "session"), ("65536", "1", "cipher"), ("65536", "2", "cipher")}
