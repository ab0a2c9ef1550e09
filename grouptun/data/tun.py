"""The TUN device: plain IP packets, non-blocking; with offloads when the kernel has them.

It is the :class:`grouptun.data.devices.TunDevice` of the data path: ``read_runs``, ``write`` and
``flush`` hide the offloads (:mod:`grouptun.data.offload.tunruns`).

``offload="off"``: python-pytun, ``IFF_TUN | IFF_NO_PI``; each ``read``
returns one whole IP packet and ``write`` takes one.

``offload="auto"`` (default): ``IFF_VNET_HDR`` with TSO4/TSO6 (and USO on
Linux >= 6.2) via :func:`grouptun.data.offload.linux.open_tun`. Every read and
write then starts with a 10-byte virtio-net header, reads may be TCP/UDP
"super-packets" of up to 64 KiB that the data plane segments, and writes
may be coalesced GRO packets. ``vnet_hdr`` says which mode is active. If
the kernel refuses the vnet header the device is opened plain (``vnet_hdr``
False).

The device disappears when it is closed (it is never made persistent),
which is how a clean shutdown removes the interface. Reads and writes go
straight to the fd so EAGAIN shows up as ``None``/``False`` instead of an
exception on the hot path.
"""

from __future__ import annotations

import errno
import logging
import os

from grouptun.errors import ConfigError, SystemSetupError

log = logging.getLogger("grouptun.data.tun")

READ_SIZE = 65535


class TunDevice:
    """A non-blocking TUN device; ``fileno()`` is for the event loop."""

    def __init__(self, name: str, offload: str = "auto") -> None:
        if offload not in ("auto", "off"):
            raise ConfigError("daemon.offload", f"must be 'auto' or 'off', not {offload!r}")
        self.vnet_hdr = False
        self.offloads = 0
        self._dev = self._raw = None
        if offload == "auto":
            self._open_vnet(name)
        if self._raw is None:
            self._open_plain(name)
        from grouptun.data.offload.tunruns import PlainRuns, VnetRuns

        self._runs = VnetRuns(self.read_into, self.write_parts) if self.vnet_hdr else \
            PlainRuns(self.read, self.write_parts_one)
        self.counters = self._runs.counters
        self.read_runs, self.write, self.flush = self._runs.read_runs, self._runs.write, self._runs.flush

    def _open_vnet(self, name: str) -> None:
        from grouptun.data.offload import linux

        try:
            if not linux.tun_features() & linux.IFF_VNET_HDR:
                return
            self._raw = linux.open_tun(name, vnet_hdr=True)
        except SystemSetupError as exc:
            log.debug("TUN %s: no virtio-net header (%s); plain packets", name, exc)
            return
        self.name, self._fd = self._raw.name, self._raw.fd
        self.vnet_hdr, self.offloads = True, self._raw.offloads

    def _open_plain(self, name: str) -> None:
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

    def describe(self) -> str:
        from grouptun.data.offload.linux import offload_names

        return f"vnet_hdr+{offload_names(self.offloads)}" if self.vnet_hdr else "plain"

    def read(self) -> bytes | None:
        """One packet, or None when nothing is waiting (EAGAIN). Plain mode only."""
        try:
            return os.read(self._fd, READ_SIZE)
        except BlockingIOError:
            return None

    def read_into(self, buf: bytearray | memoryview) -> int | None:
        """One read into ``buf`` (>= 65535 + 10 bytes); its length, or None when nothing waits."""
        try:
            return os.readv(self._fd, [buf])
        except BlockingIOError:
            return None

    def write_parts_one(self, packet: bytes | bytearray | memoryview) -> bool:
        """Hand one packet to the kernel; False when it could not take it now. Plain mode only."""
        return self.write_parts((packet,))

    def write_parts(self, parts) -> bool:
        """Write the concatenation of ``parts`` as one packet (one writev: nothing is copied in Python),
        e.g. an all-zero virtio-net header and a plaintext where it was decrypted."""
        try:
            os.writev(self._fd, parts)
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
            if self._raw is not None:
                self._raw.close()
            else:
                self._dev.close()
            self._fd = -1
