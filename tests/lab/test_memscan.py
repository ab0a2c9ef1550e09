"""The memory search the linked-provider journey relies on: it finds what a process holds, in every form."""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.lab import memscan


def test_forms_cover_every_base64_alignment():
    secret = bytes(range(1, 33))
    for prefix in (b"", b"x", b"xy"):
        text = base64.b64encode(prefix + secret + b"tail")
        assert memscan.find(text, {"s": secret}), prefix
        assert memscan.find(base64.urlsafe_b64encode(b"\xfb" + prefix + secret), {"s": secret}), prefix
    assert memscan.find(secret.hex().upper().encode(), {"s": secret}) == ["s HEX"]
    assert memscan.find(b"nothing here" * 100, {"s": secret}) == []


def _cannot_dump() -> str | None:
    if shutil.which("gcore") is None:
        return "needs gdb's gcore"
    yama = Path("/proc/sys/kernel/yama/ptrace_scope")
    if os.geteuid() != 0 and yama.exists() and yama.read_text().strip() != "0":
        return "needs root, or ptrace_scope 0 (gdb attaches to a process it did not start)"
    return None


@pytest.mark.skipif(_cannot_dump() is not None, reason=str(_cannot_dump()))
def test_a_core_dump_of_a_live_process_shows_the_secret_it_holds_and_not_others(tmp_path):
    held, absent = os.urandom(32), os.urandom(32)
    # the child gets the secret on stdin (not argv), so only its memory can hold it
    code = ("import base64, sys; key = bytearray(sys.stdin.buffer.read(32)); "
            "text = base64.b64encode(b'xy' + bytes(key)); print('ready', flush=True); sys.stdin.read()")
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        child.stdin.write(held)
        child.stdin.flush()
        assert child.stdout.readline() == b"ready\n"
        hits, size = memscan.find_in_process(child.pid, tmp_path, {"held": held, "absent": absent}, "child")
    finally:
        child.kill()
        child.wait(timeout=10)
    assert "held raw" in hits and "held b64+1" in hits, hits
    assert not [h for h in hits if h.startswith("absent")]
    assert size > 1_000_000 and list(tmp_path.iterdir()) == []  # a real image, removed after the search


def test_the_file_search_finds_raw_secrets_with_newlines_and_nuls_and_nothing_else(tmp_path):
    awkward = b"\n\0" * 4 + bytes(range(1, 25))  # grep takes lines: looked for by its longest clean run
    only_breaks = b"\n\0" * 16                      # no run grep could take: bytes.find alone
    path = tmp_path / "image"
    path.write_bytes(os.urandom(1 << 20) + awkward + b"x" + base64.b64encode(only_breaks) + b"y" + only_breaks
                     + os.urandom(1 << 16))
    found = memscan.find_in_file(path, {"awkward": awkward, "only_breaks": only_breaks, "absent": os.urandom(32)})
    assert {"awkward raw", "only_breaks raw", "only_breaks b64+0"} <= set(found)  # (periodic: other shifts too)
    assert not [hit for hit in found if hit.startswith("absent") or hit.startswith("awkward b64")]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["image"]  # grep's pattern list is removed
