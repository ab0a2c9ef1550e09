"""The note a removed member's daemon leaves beside its control socket (``RUN_DIR/GROUP.removed``).

A daemon whose member the provider removed (issue 17: by its admin, or its
time ended) stops and exits 67 (``MemberRemoved``); its control socket goes
with it. The note keeps what ``grouptun status`` should still say::

    {"group": str, "member": str, "reason": str, "removed_at": unix seconds}

``grouptun up`` deletes a stale note when it starts. The run directory is a
tmpfs (``/run/grouptun``), so notes do not outlive a reboot. Nothing secret
is in it. Limits: written best effort -- a daemon that cannot write it still
logs the removal and exits with its status.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

log = logging.getLogger("grouptun.daemon")
SUFFIX = ".removed"


def path_for(control_socket: Path) -> Path:
    return Path(control_socket).with_suffix(SUFFIX)


def write(control_socket: Path, group: str, member: str, reason: str) -> None:
    target = path_for(control_socket)
    note = {"group": group, "member": member, "reason": reason, "removed_at": time.time()}
    temporary = target.with_name(target.name + ".tmp")
    try:
        temporary.write_text(json.dumps(note, sort_keys=True) + "\n")
        os.chmod(temporary, 0o644)
        os.replace(temporary, target)
    except OSError as exc:
        log.warning("could not leave the removal note %s: %s", target, exc.strerror)


def read(control_socket: Path) -> dict | None:
    try:
        note = json.loads(path_for(control_socket).read_text())
    except (OSError, ValueError):
        return None
    return note if isinstance(note, dict) else None


def clear(control_socket: Path) -> None:
    try:
        path_for(control_socket).unlink()
    except FileNotFoundError:
        return
    except OSError as exc:
        log.warning("could not delete the stale removal note: %s", exc.strerror)
