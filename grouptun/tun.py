"""The TUN device: python-pytun, ``IFF_TUN | IFF_NO_PI``, non-blocking.

Each ``read`` returns one whole IP packet (no packet-information prefix);
``write`` takes one. The device disappears when it is closed (it is never
made persistent), which is how a clean shutdown removes the interface.

Limits: one queue, no vnet header (no TSO/GSO offload yet); reads and
writes go straight to the fd with ``os.read``/``os.write`` so EAGAIN shows
up as ``None``/``False`` instead of an exception on the hot path.
"""

from __future__ import annotations

import errno
import os

from grouptun.errors import SystemSetupError

READ_SIZE = 65535


class TunDevice:
    """A non-blocking TUN device; ``fileno()`` is for the event loop."""

    def __init__(self, name: str) -> None:
        import pytun  # imported here so the rest of the daemon tests need no /dev/net/tun

        try:
            self._dev = pytun.TunTapDevice(name=name, flags=pytun.IFF_TUN | pytun.IFF_NO_PI)
        except (pytun.Error, OSError) as exc:
            raise SystemSetupError(f"cannot create TUN device {name!r}: {exc}") from exc
        self.name = self._dev.name
        self._fd = self._dev.fileno()
        os.set_blocking(self._fd, False)

    def fileno(self) -> int:
        return self._fd

    def read(self) -> bytes | None:
        """One packet, or None when nothing is waiting (EAGAIN)."""
        try:
            return os.read(self._fd, READ_SIZE)
        except BlockingIOError:
            return None

    def write(self, packet: bytes) -> bool:
        """Hand one packet to the kernel; False when it could not take it now."""
        try:
            os.write(self._fd, packet)
            return True
        except BlockingIOError:
            return False
        except OSError as exc:
            # EINVAL: the kernel refused a malformed packet; EIO: device down.
            if exc.errno in (errno.EINVAL, errno.EIO):
                return False
            raise

    def close(self) -> None:
        if self._fd >= 0:
            self._dev.close()
            self._fd = -1
