"""Looking for secrets in a live process's memory: a core dump (gdb's ``gcore``) and a search of it.

The linked-provider journey (tests/integration/test_linked_providers.py)
uses it to show that the relaying provider never holds an epoch's secrets
(issue 19: "a core dump of its process holds none of the epoch's SS, salt or
keys"), and, with the same dump and the same search, that a member daemon
does hold its own packet keys: a search that finds nothing proves nothing
unless it is known to find what is there.

- :func:`core_dump` runs ``gcore -o PATH PID`` and returns the core file.
  gcore stops the process while it copies every dumpable mapping, so the
  image is one moment of it; pages marked MADV_DONTDUMP (the daemon's locked
  key arena) and memfd_secret pages are not in it, by design.
- :func:`forms` is what a secret may look like in memory: raw, lowercase and
  uppercase hex, and standard and URL-safe base64 at each of the three byte
  alignments a secret can have inside a longer base64 text.
- :func:`find` names every (secret, form) found in a buffer; :func:`find_in_file`
  the same for a file, with one pass of GNU ``grep -F`` (Aho-Corasick) for
  all the forms at once, so a dump of a few hundred MiB takes seconds, not
  a ``bytes.find`` per form; what grep reports is confirmed with
  ``bytes.find``. grep's patterns are lines, so a raw secret is looked for
  by its longest run without a newline or NUL (never shorter than
  ``MIN_PROBE``; a secret with no such run is looked for by ``bytes.find``).

Limits: a secret split across non-contiguous pages, or kept only in some
other encoding (XOR-masked, compressed), is not found; PROTOCOL.md secrets
are 16 or 32 raw bytes, stored and sent as raw, hex or base64.
"""

from __future__ import annotations

import base64
import shutil
import subprocess
from pathlib import Path

GCORE_TIMEOUT = 120.0
GREP_TIMEOUT = 300.0
MIN_PROBE = 8


def core_dump(pid: int, path: Path) -> Path:
    """A core file of process ``pid`` (gcore writes ``PATH.PID``); LookupError when gdb is not installed."""
    if shutil.which("gcore") is None:
        raise LookupError("gcore (gdb) is not installed")
    proc = subprocess.run(["gcore", "-o", str(path), str(pid)], capture_output=True, text=True,
                          timeout=GCORE_TIMEOUT, check=False)
    core = path.with_name(f"{path.name}.{pid}")
    if proc.returncode != 0 or not core.is_file():
        raise RuntimeError(f"gcore {pid} -> exit {proc.returncode}: {(proc.stderr or proc.stdout)[-400:]}")
    return core


def forms(secret: bytes) -> dict[str, bytes]:
    """How ``secret`` may appear in memory, by name; base64 at offsets 0-2, since inside a longer encoded
    text only whole 3-byte groups of the secret encode to the same characters."""
    found = {"raw": secret, "hex": secret.hex().encode(), "HEX": secret.hex().upper().encode()}
    for shift in range(3):
        whole = secret[shift:shift + 3 * ((len(secret) - shift) // 3)]
        found[f"b64+{shift}"] = base64.b64encode(whole)
        found[f"b64url+{shift}"] = base64.urlsafe_b64encode(whole)
    return found


def find(image: bytes, secrets: dict[str, bytes]) -> list[str]:
    """``"NAME FORM"`` for every form of every secret found in ``image`` (sorted; empty: none)."""
    hits = []
    for name, secret in secrets.items():
        for form, pattern in forms(secret).items():
            if image.find(pattern) >= 0:
                hits.append(f"{name} {form}")
    return sorted(hits)


def _probe(pattern: bytes) -> bytes:
    """The longest run of ``pattern`` grep can take as a fixed string (no newline, no NUL)."""
    return max(pattern.replace(b"\0", b"\n").split(b"\n"), key=len)


def find_in_file(path: Path, secrets: dict[str, bytes]) -> list[str]:
    """:func:`find` for the file at ``path``: one grep pass, then ``bytes.find`` on what it reported."""
    patterns = {f"{name} {form}": pattern for name, secret in secrets.items()
                for form, pattern in forms(secret).items()}
    probes = {label: _probe(pattern) for label, pattern in patterns.items()}
    short = [label for label, probe in probes.items() if len(probe) < MIN_PROBE]
    listed = path.with_name(path.name + ".probes")
    listed.write_bytes(b"\n".join(sorted({p for p in probes.values() if len(p) >= MIN_PROBE})) + b"\n")
    try:
        proc = subprocess.run(["grep", "-F", "-a", "-o", "-f", str(listed), str(path)], capture_output=True,
                              timeout=GREP_TIMEOUT, check=False, env={"LC_ALL": "C"})
    finally:
        listed.unlink()
    if proc.returncode not in (0, 1):  # 1: nothing found
        raise RuntimeError(f"grep {path} -> exit {proc.returncode}: {proc.stderr[-300:]!r}")
    seen = set(proc.stdout.split(b"\n"))
    candidates = [label for label, probe in probes.items() if probe in seen] + short
    if not candidates:
        return []
    image = path.read_bytes()
    return sorted(label for label in candidates if image.find(patterns[label]) >= 0)


def find_in_process(pid: int, workdir: Path, secrets: dict[str, bytes], label: str) -> tuple[list[str], int]:
    """(hits, size of the dump in bytes) of a core dump of ``pid`` written under ``workdir`` (removed after)."""
    core = core_dump(pid, workdir / f"core-{label}")
    try:
        return find_in_file(core, secrets), core.stat().st_size
    finally:
        core.unlink()
