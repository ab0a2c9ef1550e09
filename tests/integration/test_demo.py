"""The README's main command, as a user runs it: scripts/demo --keep, then
scripts/attack against the kept lab, then scripts/demo --down."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from grouptun.lab import links, list_ns
from grouptun.lab.topology import remove_tag

pytestmark = [pytest.mark.root, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]


def _run(*argv: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([str(REPO / "scripts" / argv[0]), *argv[1:]], cwd=REPO, text=True,
                          capture_output=True, timeout=timeout)


def test_demo_keep_attack_down():
    try:
        demo = _run("demo", "--keep", timeout=240)
        print(demo.stdout[-1500:])
        assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-2000:]
        assert "ALL PASS" in demo.stdout and "sudo scripts/demo --down" in demo.stdout
        assert "ping IPv6 c -> a" in demo.stdout and "Mbit/s" in demo.stdout
        assert sorted(list_ns("gt-demo-")) == ["gt-demo-a", "gt-demo-b", "gt-demo-c",
                                              "gt-demo-p", "gt-demo-sw"]
        attack = _run("attack", timeout=120)
        print(attack.stdout)
        assert attack.returncode == 0, attack.stdout + attack.stderr
        assert "PASS" in attack.stdout and "gt-demo-e" not in list_ns("gt-demo-")
        down = _run("demo", "--down", timeout=60)
        assert down.returncode == 0, down.stderr
    finally:
        remove_tag("demo")
    assert list_ns("gt-demo-") == []
    assert [n for n in links() if n.startswith("gt-demo")] == []
    assert not Path("/dev/shm/gt-demo").exists()
