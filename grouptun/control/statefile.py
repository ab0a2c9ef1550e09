"""The highest epoch this member has held, per group (PROTOCOL.md 4).

Before a daemon uses an epoch it records it here; after a restart it never
uses an epoch at or below the recorded one. Each write goes to a temp file
in the same directory, is fsynced, renamed over the old file, and the
directory is fsynced, so after a crash the file holds either the old or the
new content, never a mix.

Limits: one JSON object ``{"<group_id hex>": epoch, ...}``, small by
construction. A corrupt or unreadable file stops the daemon
(KeystoreError): guessing a highest epoch would break the no-reuse rule.
Recording an epoch at or below the recorded one (or outside u32) is
refused with ``EpochRejected("epoch")``, the acceptance step it breaks.
A write the disk has no room for (ENOSPC, EDQUOT) raises StateDirFull:
the control path backs off and ``grouptun status`` says "state dir full".
Restoring this file from an older backup is what the start challenge rule
protects against; resuming a VM snapshot is out of scope.
"""

from __future__ import annotations

import errno
import json
import threading
from pathlib import Path
from typing import Callable

from grouptun.errors import EpochRejected, KeystoreError, StateDirFull
from grouptun.control.keystore import write_atomic

EPOCH_MAX = 2**32 - 1
FULL = (errno.ENOSPC, errno.EDQUOT)


class EpochStateFile:
    """Monotonic per-group epoch record; thread-safe; works from a missing file."""

    def __init__(self, path: Path, write: Callable[[Path, bytes, int], None] = write_atomic) -> None:
        self.path = Path(path)
        self._write = write
        self._lock = threading.Lock()
        self._data = self._read()

    def _read(self) -> dict[str, int]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise KeystoreError(f"cannot read epoch state {self.path}: {exc.strerror}") from exc
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise KeystoreError(f"epoch state {self.path} is corrupt: {exc}") from exc
        if not isinstance(data, dict) or not all(
            isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= EPOCH_MAX
            for k, v in data.items()
        ):
            raise KeystoreError(f"epoch state {self.path} is corrupt: expected {{group_id: epoch}}")
        return data

    def highest(self, group_id: bytes) -> int:
        """The highest epoch recorded for ``group_id``, or -1 if none."""
        with self._lock:
            return self._data.get(group_id.hex(), -1)

    def record(self, group_id: bytes, epoch: int) -> None:
        """Durably record ``epoch``; EpochRejected for one at or below the recorded highest."""
        if not 0 <= epoch <= EPOCH_MAX:
            raise EpochRejected("epoch", f"epoch {epoch} out of u32 range")
        key = group_id.hex()
        with self._lock:
            current = self._data.get(key, -1)
            if epoch <= current:
                raise EpochRejected("epoch", f"epoch {epoch} is not above the recorded {current}")
            new = dict(self._data)
            new[key] = epoch
            payload = (json.dumps(new, sort_keys=True) + "\n").encode()
            try:
                self._write(self.path, payload, 0o600)
            except OSError as exc:
                if exc.errno in FULL:
                    raise StateDirFull(f"state dir full: cannot write epoch state {self.path}: {exc.strerror}") from exc
                raise KeystoreError(f"cannot write epoch state {self.path}: {exc.strerror}") from exc
            self._data = new
