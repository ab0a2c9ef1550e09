"""Locked, non-dumpable memory for key material (PROTOCOL.md 3; seed 001, claim 11).

:class:`SecretArena` is the daemon's :class:`grouptun.core.keys.SecretMemory`:
the core asks it for buffers (epoch secrets, PRK, nonce_common, packet
keys), the keystore keeps the private keys in it. It maps a few regions of
``REGION_SIZE`` bytes, each cut into fixed slots of one size class
(``SLOT_SIZES``), and hands out slots as writable ``memoryview`` objects of
exactly the size asked for. ``free`` zeroes the whole slot and *releases*
the view, so a stale reference raises ValueError instead of reading a
recycled slot; a region whose last slot is freed is zeroed and unmapped.
``close`` (the daemon's shutdown path, and atexit) zeroes and unmaps
everything that is still out.

Each region gets the best mechanism this process can have, tried in order:

``memfd_secret``
    memfd_secret(2) (Linux >= 5.14; on 5.14..6.4 only with the boot option
    ``secretmem.enable=1``): the pages leave the kernel's direct map, so
    even ptrace and /proc/PID/mem cannot read them; locked and never
    dumped by construction. Counted against RLIMIT_MEMLOCK.
``mlock``
    an anonymous private mapping with MADV_DONTDUMP (no core dump) and
    mlock(2) (never swapped).
``none``
    mlock failed (RLIMIT_MEMLOCK too small and no CAP_IPC_LOCK): the same
    mapping, still DONTDUMP and still wiped, but it may be swapped. One
    warning per arena says so; the daemon runs on.

A forked child gets no memfd_secret pages (MADV_DONTFORK: they are shared
mappings) and its ``close`` (atexit) leaves the parent's memory alone.

Limits: slots of up to ``SLOT_SIZES[-1]`` bytes; at most ``max_bytes``
mapped (MemoryError beyond). The view must not be re-exported
(``memoryview(slot)`` held, ctypes ``from_buffer``) past a call, or ``free``
raises BufferError. Thread-safe (one lock).
"""

from __future__ import annotations

import atexit
import ctypes
import errno
import logging
import mmap
import os
import resource
import sys
import threading
from dataclasses import dataclass, field

log = logging.getLogger("grouptun.secmem")

SLOT_SIZES = (32, 128)      # 16/32-byte secrets and keys; the 128-byte keystore plaintext
REGION_SIZE = 16 * 1024     # 4 pages: a small group's keys fit in one region per size class
MAX_BYTES = 64 * 1024 * 1024
SYS_MEMFD_SECRET = 447      # the same number on every Linux architecture (asm-generic and x86)
MECHANISMS = ("none", "mlock", "memfd_secret")  # weakest first

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.mlock.argtypes = (ctypes.c_void_p, ctypes.c_size_t)


@dataclass(eq=False)
class _Region:
    map: mmap.mmap
    view: memoryview
    slot: int
    mechanism: str
    free: list[int] = field(default_factory=list)
    used: int = 0


class SecretArena:
    """Slots of locked, non-dumpable memory; see the module docstring."""

    def __init__(self, *, use_memfd_secret: bool = True, max_bytes: int = MAX_BYTES) -> None:
        self._use_memfd_secret = use_memfd_secret and sys.platform == "linux"
        self._max_bytes = max_bytes
        self._regions: dict[int, list[_Region]] = {size: [] for size in SLOT_SIZES}
        self._live: dict[int, tuple[memoryview, _Region, int]] = {}  # id(view) -> (view, region, offset)
        self._stale: list[_Region] = []  # emptied, zeroed, but still exported: unmapped at close if possible
        self._mapped = 0
        self._last_mechanism = "none"
        self._warned = False
        self._closed = False
        self._lock = threading.Lock()
        self._pid = os.getpid()
        atexit.register(self.close)

    # -- SecretMemory ---------------------------------------------------------
    def alloc(self, size: int) -> memoryview:
        """A zero-filled writable view of exactly ``size`` bytes (1..128)."""
        if not 1 <= size <= SLOT_SIZES[-1]:
            raise ValueError(f"secret buffers are 1..{SLOT_SIZES[-1]} bytes, asked for {size}")
        slot = next(s for s in SLOT_SIZES if s >= size)
        with self._lock:
            if self._closed:
                raise MemoryError("secret memory arena is closed")
            region = next((r for r in self._regions[slot] if r.free), None) or self._new_region(slot)
            offset = region.free.pop()
            region.used += 1
            view = region.view[offset:offset + size]
            self._live[id(view)] = (view, region, offset)
            return view

    def free(self, buffer: memoryview | bytearray) -> None:
        """Zero the slot and release ``buffer``; after :meth:`close` a no-op (everything was zeroed then)."""
        with self._lock:
            entry = self._live.get(id(buffer))
            if entry is None or entry[0] is not buffer:
                if self._closed:
                    return
                raise ValueError("not a live buffer of this secret arena")
            view, region, offset = entry
            region.view[offset:offset + region.slot] = bytes(region.slot)
            view.release()  # BufferError (and nothing changed) if someone still exports it
            del self._live[id(buffer)]
            region.used -= 1
            region.free.append(offset)
            if region.used == 0:
                self._regions[region.slot].remove(region)
                self._unmap(region)

    # -- lifetime and status --------------------------------------------------
    def close(self) -> None:
        """Zero every slot still out, release the views, unmap every region (idempotent)."""
        with self._lock:
            if self._closed or os.getpid() != self._pid:  # a forked child must not zero its parent's pages
                return
            self._closed = True
            for view, _region, _offset in self._live.values():
                view.release()
            self._live.clear()
            for regions in self._regions.values():
                for region in regions:
                    self._unmap(region)
                regions.clear()
            for region in list(self._stale):
                self._close_map(region)
            if self._stale:
                log.warning("%d zeroed key memory region(s) stay mapped: a view of them is still referenced",
                            len(self._stale))
        atexit.unregister(self.close)

    def status(self) -> dict:
        """What ``grouptun status`` shows: bytes locked, regions, the weakest mechanism in use."""
        with self._lock:
            regions = [r for rs in self._regions.values() for r in rs] + self._stale
            locked = sum(len(r.map) for r in regions if r.mechanism != "none")
            weakest = min((MECHANISMS.index(r.mechanism) for r in regions), default=None)
            return {
                "mechanism": self._last_mechanism if weakest is None else MECHANISMS[weakest],
                "locked_bytes": locked, "unlocked_bytes": self._mapped - locked,
                "regions": len(regions), "slots_in_use": len(self._live),
            }

    # -- regions ----------------------------------------------------------------
    def _new_region(self, slot: int) -> _Region:
        if self._mapped + REGION_SIZE > self._max_bytes:
            raise MemoryError(f"secret memory arena is full ({self._max_bytes} bytes)")
        mapping, mechanism = self._map()
        view = memoryview(mapping)
        view[:] = bytes(REGION_SIZE)  # touch every page now, not on a hot path
        region = _Region(mapping, view, slot, mechanism, list(range(REGION_SIZE - slot, -1, -slot)))
        self._regions[slot].append(region)
        self._mapped += REGION_SIZE
        self._last_mechanism = mechanism
        return region

    def _map(self) -> tuple[mmap.mmap, str]:
        if self._use_memfd_secret:
            mapping = self._map_secret()
            if mapping is not None:
                return mapping, "memfd_secret"
        mapping = mmap.mmap(-1, REGION_SIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS,
                            prot=mmap.PROT_READ | mmap.PROT_WRITE)
        mapping.madvise(mmap.MADV_DONTDUMP)
        failure = _mlock(mapping)
        if failure is None:
            return mapping, "mlock"
        if not self._warned:
            self._warned = True
            soft, _hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
            log.warning("cannot lock key memory (mlock: %s; RLIMIT_MEMLOCK %s bytes): keys stay in "
                        "unlocked memory, still excluded from core dumps and wiped", failure,
                        "unlimited" if soft == resource.RLIM_INFINITY else soft)
        return mapping, "none"

    def _map_secret(self) -> mmap.mmap | None:
        """A memfd_secret mapping, or None (never again if the kernel or seccomp refuses the call)."""
        fd = _libc.syscall(SYS_MEMFD_SECRET, os.O_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            self._use_memfd_secret = False
            log.info("memfd_secret unavailable (%s): key memory uses mlock", os.strerror(err))
            return None
        try:
            os.ftruncate(fd, REGION_SIZE)
            mapping = mmap.mmap(fd, REGION_SIZE, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
            mapping.madvise(mmap.MADV_DONTFORK)  # shared pages: a forked child must not see or change them
            return mapping
        except OSError as exc:  # RLIMIT_MEMLOCK reached (EAGAIN) or no memory: try mlock for this region
            log.debug("memfd_secret region refused: %s", exc)
            return None
        finally:
            os.close(fd)

    def _unmap(self, region: _Region) -> None:
        region.view[:] = bytes(len(region.view))
        region.view.release()
        self._close_map(region)

    def _close_map(self, region: _Region) -> None:
        try:
            region.map.close()  # munmap also unlocks
        except BufferError:  # a view cut from a slot is still referenced: keep it mapped (zeroed, never reused)
            if region not in self._stale:
                self._stale.append(region)
            return
        if region in self._stale:
            self._stale.remove(region)
        self._mapped -= REGION_SIZE


def _mlock(mapping: mmap.mmap) -> str | None:
    """mlock the whole mapping; None on success, else the reason."""
    window = (ctypes.c_char * len(mapping)).from_buffer(mapping)
    try:
        if _libc.mlock(ctypes.addressof(window), len(mapping)) == 0:
            return None
        err = ctypes.get_errno()
        return f"{errno.errorcode.get(err, err)} {os.strerror(err)}"
    finally:
        del window  # the export would keep the mapping from being closed
