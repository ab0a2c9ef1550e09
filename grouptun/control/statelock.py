"""The exclusive lock a running daemon holds on its state directory (PROTOCOL.md 4).

Two daemons on one state directory would hold the same member's keys and
the same statefile: a second ``grouptun up`` (with a copied config and
another control socket, say) must stop before it contacts the provider.
The lock is ``fcntl.flock(LOCK_EX | LOCK_NB)`` on ``<state_dir>/lock``;
the kernel drops it when the process exits, even on kill -9, so a crash
leaves nothing stale. The file holds the holder's pid, for the message.

Limits: flock is per host (a copied state directory on another host, a
cloned VM, is caught by the provider's instance rule instead); on NFS
flock may be emulated or local only.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from grouptun.errors import StateDirLocked, SystemSetupError

LOCK_NAME = "lock"


class StateDirLock:
    """Held from :meth:`acquire` until :meth:`release` (or the process ends)."""

    def __init__(self, state_dir: Path) -> None:
        self.path = Path(state_dir) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> "StateDirLock":
        """Take the lock; StateDirLocked at once if another process holds it."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise SystemSetupError(f"cannot open the state dir lock {self.path}: {exc.strerror}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
            os.close(fd)
            raise StateDirLocked(f"state dir {self.path.parent} is in use by another grouptun daemon "
                                 f"(pid {holder}); stop it first (one daemon per member)") from None
        except OSError as exc:
            os.close(fd)
            raise SystemSetupError(f"cannot lock the state dir {self.path.parent}: {exc.strerror}") from exc
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the last fd drops the flock
            self._fd = None
