"""Helpers for unit-file tests: a tiny parser and a staged root for systemd-analyze."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SYSTEMD_DIR = REPO / "systemd"
UNITS = ("grouptun@.service", "grouptun-provider.service")
MAX_EXPOSURE = 2.5  # systemd-analyze security: offline on the files, live in tests/ops/test_systemd_nspawn.py
EXPOSURE_RE = re.compile(r"Overall exposure level for (\S+): (\d+\.\d+)")
STUB_BINARIES = ("usr/local/bin/grouptun", "usr/local/bin/grouptun-provider", "usr/bin/sh")


def parse_unit(path: Path) -> dict[str, list[tuple[str, str]]]:
    """section -> [(key, value), ...] in file order (keys may repeat, as in systemd)."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        m = re.fullmatch(r"\[(\w+)\]", line)
        if m:
            current = sections.setdefault(m.group(1), [])
            continue
        key, sep, value = line.partition("=")
        assert sep and current is not None, f"{path}: unparsable line {raw!r}"
        current.append((key.strip(), value.strip()))
    return sections


def values(unit: dict, section: str, key: str) -> list[str]:
    return [v for k, v in unit.get(section, []) if k == key]


def stage_root(root: Path) -> Path:
    """A root systemd-analyze --root can verify against: host units + stub binaries."""
    (root / "usr/lib/systemd").mkdir(parents=True, exist_ok=True)
    for link, target in (("lib", "usr/lib"), ("bin", "usr/bin")):
        if not (root / link).exists():
            os.symlink(target, root / link)
    if not (root / "usr/lib/systemd/system").exists():
        shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    for rel in STUB_BINARIES:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            path.write_text("#!/bin/sh\nexit 0\n")
            path.chmod(0o755)
    return root


def verify(root: Path, *units: str) -> subprocess.CompletedProcess:
    return subprocess.run(["systemd-analyze", "verify", "--man=no", f"--root={root}", *units],
                          capture_output=True, text=True, timeout=60)


def exposure(unit_file: Path) -> tuple[float, str]:
    """(overall exposure, full report) from systemd-analyze security --offline."""
    proc = subprocess.run(["systemd-analyze", "security", "--offline=true", "--no-pager", str(unit_file)],
                          capture_output=True, text=True, timeout=60)
    m = EXPOSURE_RE.search(proc.stdout)
    assert m, f"no exposure figure in:\n{proc.stdout}\n{proc.stderr}"
    return float(m.group(2)), proc.stdout
