"""kill -9 and restore-from-backup: nothing acknowledged is lost, no epoch number is reissued.

SQLite only: the restore half copies the database file (backup and restore on PostgreSQL are issue 16 item 4).
"""

from __future__ import annotations

import shutil
import sqlite3
import threading
import time

from grouptun.core.archive import verify_archive
from grouptun.errors import ProviderError
from provider_helpers import TestMember, admin, init_provider


def _epochs(env) -> set[int]:
    return {row[0] for row in env.rows("SELECT epoch FROM epochs")}


def test_kill9_during_writes_then_restart_and_restore(tmp_path):
    env = init_provider(tmp_path)
    admin(env.state, "group", "create", "lan", "--cidr", "10.78.0.0/24")
    tokens = [admin(env.state, "invite", "lan", f"m{i}").stdout.strip() for i in range(3)]
    env.server.start()
    try:
        first = TestMember("m0")
        first.enroll(tokens[0])
        TestMember("m2").enroll(tokens[2])  # an epoch needs two members
        acked_members, acked_epochs, stop = ["m0", "m2"], [], threading.Event()

        def writer():  # starts (new epochs) until the server dies; record only acknowledged ones
            client = first.client(timeout=5)
            for _ in range(200):
                if stop.is_set():
                    return
                try:
                    raw = client.start(time.time_ns().to_bytes(32, "big"))
                except ProviderError:
                    return
                acked_epochs.append(verify_archive(raw, first.result.provider_keys).epoch.epoch)

        thread = threading.Thread(target=writer)
        thread.start()
        for _ in range(200):
            if len(acked_epochs) >= 4:
                break
            time.sleep(0.05)
        env.server.kill()  # SIGKILL mid-stream
        stop.set()
        thread.join(timeout=30)
        assert len(acked_epochs) >= 4, acked_epochs

        env.server.start()
        assert set(acked_epochs) <= _epochs(env), "an acknowledged epoch was lost"
        assert {r[0] for r in env.rows("SELECT name FROM members")} >= set(acked_members)
        backup = tmp_path / "backup.db"
        with sqlite3.connect(env.state / "provider.db") as src, sqlite3.connect(backup) as dst:
            src.backup(dst)
        issued_after_backup = verify_archive(first.client().start(b"\x01" * 32), first.result.provider_keys)
        second = TestMember("m1")
        second.enroll(tokens[1])
        last_seen = verify_archive(second.client().archive(), first.result.provider_keys)
        issued = _epochs(env)
        env.server.stop()

        # Restore the backup over the live database (as an admin would after losing the disk).
        for suffix in ("", "-wal", "-shm"):
            (env.state / f"provider.db{suffix}").unlink(missing_ok=True)
        shutil.copy(backup, env.state / "provider.db")
        env.server.start()
        # The restored database is older than what m0 saw: its watch must wait, not answer the old archive.
        assert first.client().watch(last_seen.version, timeout=0.5) is None
        after = verify_archive(first.client().start(b"\x02" * 32), first.result.provider_keys)
        assert after.epoch.epoch > max(issued), (after.epoch.epoch, max(issued))
        assert after.epoch.epoch > issued_after_backup.epoch.epoch
        assert after.version > last_seen.version
    finally:
        env.server.stop()
