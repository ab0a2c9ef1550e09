"""scripts/install-host: --dry-run changes nothing; --root installs, idempotently."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from ops.units import REPO, stage_root, verify

SCRIPT = REPO / "scripts" / "install-host"

pytestmark = pytest.mark.skipif(shutil.which("systemd-sysusers") is None, reason="needs systemd-sysusers")


def run(*args: str, script: Path = SCRIPT) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(script), *args], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def tree(root: Path) -> dict[str, tuple[int, int, int]]:
    out = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        out[str(path.relative_to(root))] = (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)
    return out


def test_dry_run_changes_nothing(tmp_path):
    proc = run("--root", str(tmp_path), "--no-package", "--dry-run")
    assert list(tmp_path.iterdir()) == []
    assert "would install: /usr/local/lib/systemd/system/grouptun@.service" in proc.stdout
    assert "would run: systemd-sysusers" in proc.stdout
    assert re.search(r"dry run: (\d+) change\(s\) would be made", proc.stdout)


def changes(proc: subprocess.CompletedProcess) -> int:
    m = re.search(r"(?:done|dry run): (\d+) change", proc.stdout)
    assert m, proc.stdout
    return int(m.group(1))


def test_root_install_layout_and_idempotence(tmp_path):
    planned = changes(run("--root", str(tmp_path), "--no-package", "--dry-run"))
    first = run("--root", str(tmp_path), "--no-package")
    assert changes(first) == planned >= 14
    got = tree(tmp_path)
    uid = int(next(line.split(":")[2] for line in (tmp_path / "etc/passwd").read_text().splitlines()
                   if line.startswith("grouptun-provider:")))
    gid = int(next(line.split(":")[2] for line in (tmp_path / "etc/group").read_text().splitlines()
                   if line.startswith("grouptun-provider:")))
    assert got["usr/local/lib/systemd/system/grouptun@.service"][0] == 0o644
    assert got["etc/grouptun-provider"] == (0o750, 0, gid)
    assert got["etc/credstore.encrypted"] == (0o700, 0, 0)
    assert got["var/lib/grouptun"] == (0o700, 0, 0)
    assert got["var/lib/grouptun-provider"] == (0o700, uid, gid)
    assert got["usr/local/share/doc/grouptun/README.md"][0] == 0o644
    assert (tmp_path / "etc/grouptun/example.toml.sample").read_bytes() == (REPO / "grouptun/example.toml").read_bytes()
    assert "grouptun-provider:" in (tmp_path / "etc/passwd").read_text()
    for prog in ("grouptun", "grouptun-provider"):
        for path in (f"usr/local/share/bash-completion/completions/{prog}", f"usr/local/share/zsh/site-functions/_{prog}",
                     f"usr/local/share/man/man8/{prog}.8"):
            assert got[path][0] == 0o644, path

    second = run("--root", str(tmp_path), "--no-package")
    assert changes(second) == 0
    assert tree(tmp_path) == got

    # a drifted file and mode are repaired, nothing else is touched
    (tmp_path / "usr/local/lib/systemd/system/grouptun@.service").write_text("[Unit]\n")
    os.chmod(tmp_path / "var/lib/grouptun", 0o755)
    third = run("--root", str(tmp_path), "--no-package")
    assert changes(third) == 2
    assert tree(tmp_path) == got

    # the units verify where they were installed
    stage_root(tmp_path)
    proc = verify(tmp_path, "grouptun@lan.service", "grouptun-provider.service")
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr


def _bash_completes(script: Path, words: list[str]) -> list[str]:
    """What the installed bash completion offers for the last of ``words``."""
    code = (f'source "{script}"; COMP_WORDS=({" ".join(words)}); COMP_CWORD={len(words) - 1}; '
            f'COMP_LINE="{" ".join(words)}"; COMP_POINT=${{#COMP_LINE}}; _shtab_grouptun; printf "%s\\n" "${{COMPREPLY[@]}}"')
    proc = subprocess.run(["bash", "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()


def test_completion_and_man_pages_come_from_the_parsers(tmp_path):
    run("--root", str(tmp_path), "--no-package")
    share = tmp_path / "usr/local/share"
    completion = share / "bash-completion/completions/grouptun"
    assert _bash_completes(completion, ["grouptun", "pi"]) == ["ping"]
    assert set(_bash_completes(completion, ["grouptun", ""])) >= {"join", "up", "status", "ping", "down"}
    assert "--dump" in _bash_completes(completion, ["grouptun", "status", "--d"])
    assert "_grouptun-provider" in (share / "zsh/site-functions/_grouptun-provider").read_text()
    page = (share / "man/man8/grouptun.8").read_text()
    assert page.startswith('.TH GROUPTUN "8"') and "grouptun ping" in page and "\\-\\-dump" in page
    provider_page = (share / "man/man8/grouptun-provider.8").read_text()
    assert "grouptun\\-provider serve" in provider_page
    if shutil.which("man"):
        proc = subprocess.run(["man", "-l", str(share / "man/man8/grouptun.8")], capture_output=True, text=True,
                              timeout=60, env={**os.environ, "MANWIDTH": "100"})
        assert proc.returncode == 0 and "COMMAND 'grouptun ping'" in proc.stdout, proc.stderr


def test_bad_arguments_are_refused(tmp_path):
    proc = subprocess.run([str(SCRIPT), "--frobnicate"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "unknown option --frobnicate" in proc.stderr
    proc = subprocess.run([str(SCRIPT), "--root", str(tmp_path / "missing")], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and "not a directory" in proc.stderr


def test_help_describes_options():
    proc = run("--help")
    assert "--dry-run" in proc.stdout and "--root DIR" in proc.stdout


@pytest.mark.slow
def test_venv_install_offline(tmp_path):
    """The package step: venv + pip from a copy of the tree (--no-deps: only the build
    backend is fetched, from whatever index pip is configured with)."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "grouptun", "provider", "systemd", "scripts"):
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif (REPO / name).exists():
            shutil.copy(REPO / name, src / name)
    if (REPO / "README.md").exists():
        shutil.copy(REPO / "README.md", src / "README.md")
    else:
        (src / "README.md").write_text("grouptun\n")
    root = tmp_path / "root"
    root.mkdir()
    args = ("--root", str(root), "--python", sys.executable,
            "--pip-args", "--no-deps")
    proc = subprocess.run([str(src / "scripts/install-host"), *args], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0 and "No matching distribution found" in proc.stdout + proc.stderr:
        pytest.skip("pip cannot reach an index for the build backend (setuptools)")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    first = proc
    assert "linked: /usr/local/bin/grouptun -> /opt/grouptun/venv/bin/grouptun" in first.stdout
    assert (root / "opt/grouptun/venv/bin/grouptun").exists()
    second = run(*args, script=src / "scripts/install-host")
    assert "unchanged: venv /opt/grouptun/venv" in second.stdout
    assert "done: 0 change(s)" in second.stdout
    # the console script runs from the venv
    proc = subprocess.run([str(root / "opt/grouptun/venv/bin/grouptun"), "--version"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.startswith("grouptun ")
