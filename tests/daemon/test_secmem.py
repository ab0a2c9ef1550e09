"""The locked key-memory arena: accounting, dump exclusion, wiping, the RLIMIT_MEMLOCK fallback."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from grouptun.core.session import Session
from grouptun.secmem import REGION_SIZE, SecretArena

from .fakes import arena_holds, epoch_material, mapping_flags, vm_locked

REPO = Path(__file__).resolve().parents[2]


def _memfd_secret_works() -> bool:
    arena = SecretArena()
    try:
        arena.free(arena.alloc(32))
        arena.alloc(32)
        return arena.status()["mechanism"] == "memfd_secret"
    finally:
        arena.close()


MECHANISMS = [
    "mlock",
    pytest.param("memfd_secret", marks=pytest.mark.skipif(
        not _memfd_secret_works(), reason="this kernel has no memfd_secret (or secretmem.enable=0)")),
]


@pytest.fixture(params=MECHANISMS)
def arena(request):
    arena = SecretArena(use_memfd_secret=request.param == "memfd_secret")
    yield arena
    arena.close()


def test_slots_are_zeroed_writable_exact_size_and_locked_bytes_match_vmlck(arena):
    before = vm_locked()
    small, key, blob = arena.alloc(16), arena.alloc(32), arena.alloc(128)
    assert [len(small), len(key), len(blob)] == [16, 32, 128] and not any(small) and not any(blob)
    key[:] = b"k" * 32
    st = arena.status()
    assert st["regions"] == 2 and st["slots_in_use"] == 3 and st["unlocked_bytes"] == 0
    assert st["locked_bytes"] == 2 * REGION_SIZE == vm_locked() - before
    flags = mapping_flags(key)
    assert "dd" in flags and "lo" in flags  # MADV_DONTDUMP (never in a core dump) and locked


def test_free_zeroes_the_slot_releases_the_view_and_unmaps_an_empty_region(arena):
    before = vm_locked()
    keep = arena.alloc(32)  # keeps the region mapped so its memory can be searched
    key = arena.alloc(32)
    key[:] = b"secret key material, 32 bytes..."
    assert arena_holds(arena, b"secret key material")
    arena.free(key)
    assert not arena_holds(arena, b"secret key material")
    with pytest.raises(ValueError):
        key[0]  # a stale reference raises instead of reading a recycled slot
    again = arena.alloc(32)
    assert again is not key and arena.status()["slots_in_use"] == 2
    arena.free(again)
    arena.free(keep)
    st = arena.status()
    assert st["regions"] == 0 and st["locked_bytes"] == 0 and vm_locked() == before


def test_close_zeroes_every_slot_still_out(arena, caplog):
    key = arena.alloc(32)
    key[:] = b"x" * 32
    spy = memoryview(key)  # a view cut from the slot keeps the mapping alive, so we can look after close
    arena.close()
    assert bytes(spy) == bytes(32)
    with pytest.raises(ValueError):
        key[0]
    assert "stay mapped" in caplog.text  # the one region that could not be unmapped is said so
    spy.release()
    with pytest.raises(MemoryError):
        arena.alloc(32)
    arena.free(key)  # after close: a no-op, everything was zeroed


def test_a_forked_child_exiting_leaves_the_parents_keys_alone(arena):
    key = arena.alloc(32)
    key[:] = b"k" * 32
    pid = os.fork()
    if pid == 0:  # the child's atexit would close the arena: memfd_secret pages are shared
        arena.close()
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0  # no fault touching pages it must not have
    assert bytes(key) == b"k" * 32 and arena.status()["slots_in_use"] == 1


def test_bounds_and_foreign_buffers_are_refused():
    arena = SecretArena()
    try:
        for size in (0, -1, 129):
            with pytest.raises(ValueError, match="1..128"):
                arena.alloc(size)
        with pytest.raises(ValueError, match="not a live buffer"):
            arena.free(bytearray(32))
        key = arena.alloc(32)
        arena.free(key)
        with pytest.raises(ValueError, match="not a live buffer"):
            arena.free(key)  # double free
        assert SecretArena(max_bytes=REGION_SIZE).alloc(32) is not None
        full = SecretArena(max_bytes=REGION_SIZE)
        with pytest.raises(MemoryError, match="full"):
            [full.alloc(32) for _ in range(REGION_SIZE // 32 + 1)]
        full.close()
    finally:
        arena.close()


def test_a_thousand_epochs_installed_and_dropped_leak_no_slot(arena):
    before = vm_locked()
    session = Session("alice")
    session.install_epoch(epoch_material(1, arena), now=0.0)
    steady = arena.status()
    for epoch in range(2, 1001):
        session.install_epoch(epoch_material(epoch, arena), now=float(epoch))
        assert arena.status()["slots_in_use"] <= 2 * steady["slots_in_use"]
    held = session._keyring.current  # noqa: SLF001
    for index in range(3000):  # an epoch with 3000 senders: its keys need regions of their own
        held.keys.enc_key(index)
    grown = vm_locked()
    assert grown > before + steady["locked_bytes"]
    session.install_epoch(epoch_material(1001, arena), now=2000.0)
    session.install_epoch(epoch_material(1002, arena), now=2001.0)  # drops the 3000-sender epoch
    assert vm_locked() < grown and vm_locked() - before == arena.status()["locked_bytes"]
    session.close()
    assert arena.status()["slots_in_use"] == 0 and vm_locked() == before


_LOW_RLIMIT_CHILD = textwrap.dedent("""
    import json, logging, resource, sys
    resource.setrlimit(resource.RLIMIT_MEMLOCK, (0, 0))
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="%(levelname)s %(message)s")
    from daemon.fakes import mapping_flags
    from grouptun.secmem import REGION_SIZE, SecretArena
    arena = SecretArena()
    views = [arena.alloc(32) for _ in range(3 * REGION_SIZE // 32)]  # three regions, three lock attempts
    for view in views:
        view[:] = b"s" * 32
    status = arena.status()
    flags = mapping_flags(views[1])
    arena.free(views[0])
    zeroed = bytes(arena._regions[32][0].view[:32]) == bytes(32)
    arena.close()
    print(json.dumps({"status": status, "flags": flags, "zeroed": zeroed}))
""")


def test_too_small_rlimit_memlock_logs_one_warning_and_runs_on_unlocked():
    command = [sys.executable, "-c", _LOW_RLIMIT_CHILD]
    if os.geteuid() == 0:  # root's CAP_IPC_LOCK ignores RLIMIT_MEMLOCK: take it away for the child
        if shutil.which("setpriv") is None:
            pytest.skip("running as root needs setpriv(1) to drop CAP_IPC_LOCK")
        command = ["setpriv", "--bounding-set=-ipc_lock", "--inh-caps=-ipc_lock", *command]
    env = {**os.environ, "PYTHONPATH": f"{REPO}:{REPO / 'tests'}"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["status"]["mechanism"] == "none" and result["status"]["locked_bytes"] == 0
    assert result["status"]["unlocked_bytes"] == 3 * REGION_SIZE and result["status"]["slots_in_use"] > 0
    assert "dd" in result["flags"] and "lo" not in result["flags"]  # not locked, still kept out of dumps
    assert result["zeroed"]  # and still wiped
    warnings = [line for line in done.stderr.splitlines() if line.startswith("WARNING")]
    assert len(warnings) == 1 and "cannot lock key memory" in warnings[0] and "RLIMIT_MEMLOCK 0" in warnings[0]
