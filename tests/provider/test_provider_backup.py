"""``grouptun-provider backup`` / ``restore`` through the real CLI and server, on SQLite and PostgreSQL.

The round trip: a backup taken while serving, epochs and a member added
after it, then a restore: every epoch number after it is above every one
issued before (none reissued), and a member holding a newer epoch and
archive version than the backup's, and a newer instance, gets the restore's
new epoch (naming its instance) on its long-poll. Bad input (a running server, a garbage file, another provider's
backup, a newer schema's) is refused with one line and changes nothing.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
from pathlib import Path

import pytest

from grouptun.core.archive import verify_archive
from grouptun.core.archivemember import instance_of
from grouptun.core.envelope import ProviderKeys
from provider import backup as backup_module
from provider.database import resolve
from provider.keys import StatePaths
from provider.tables import SCHEMA_VERSION, metadata
from provider_helpers import STORE_KINDS, TestMember, admin, database_url_for, init_provider


@pytest.fixture(params=STORE_KINDS)
def env(request, tmp_path):
    env = init_provider(tmp_path / "p", database_url_for(request.param, request))
    admin(env.state, "group", "create", "lan", "--cidr", "10.77.0.0/24")
    env.server.start()
    try:
        yield env
    finally:
        env.server.stop()


def _verify(env, raw: bytes):
    return verify_archive(raw, ProviderKeys.from_json(env.config["provider_keys"]))


def _issued(env) -> list[int]:
    return [json.loads(r[0])["epoch"] for r in env.rows("SELECT detail FROM audit WHERE action = 'epoch' ORDER BY id")]


def _lose_database(env) -> None:
    """The disaster a restore is for: the provider's database is gone (its tables, or SQLite's file)."""
    if env.database_url is None:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{env.state / 'provider.db'}{suffix}").unlink(missing_ok=True)
        return
    store = env.store()
    with store.write() as conn:
        for table in reversed(metadata.sorted_tables):
            conn.exec_driver_sql(f'DROP TABLE "{table.name}" CASCADE')
    store.close()


@pytest.mark.parametrize("lost", [False, True], ids=["replaced", "lost"])
def test_restore_never_reissues_an_epoch_and_members_holding_newer_ones_move_on(env, tmp_path, lost):
    alice, bob = TestMember("alice"), TestMember("bob")
    alice.enroll(env.invite("alice"))
    bob.enroll(env.invite("bob"))
    _verify(env, alice.client().start(os.urandom(32)))
    snapshot = tmp_path / "provider.backup"
    assert "written" in admin(env.state, "backup", str(snapshot)).stdout  # online: the server keeps serving
    for _ in range(3):
        admin(env.state, "group", "rekey", "lan")
    restarted = os.urandom(32)  # alice's daemon starts again after the backup: a new instance
    _verify(env, alice.client().start(restarted))
    carol = TestMember("carol")
    carol.enroll(env.invite("carol"))
    held = _verify(env, alice.client().archive())  # newer epoch and version than the backup's
    issued = _issued(env)

    before = env.dump()
    proc = admin(env.state, "restore", str(snapshot), check=False)
    assert proc.returncode == 74 and "serve" in proc.stderr, proc.stderr  # a running server: refused
    assert env.dump() == before
    env.server.stop()
    if lost:  # nothing left to learn the high-water mark or instances from: the time-based floor alone
        _lose_database(env)
    out = admin(env.state, "restore", str(snapshot)).stdout
    restored_epoch = int(re.search(r"group lan: new epoch (\d+)", out).group(1))
    assert restored_epoch > max(issued) and restored_epoch % 2**16 not in {e % 2**16 for e in issued[-2:]}
    assert sorted(r[0] for r in env.rows("SELECT name FROM members")) == ["alice", "bob"]  # carol came later

    env.server.start()
    got = _verify(env, alice.client(timeout=20).watch(held.version, timeout=10))
    assert got.epoch.epoch == restored_epoch and got.version > held.version
    if not lost:  # still hers: not "started elsewhere" (from a lost database it cannot be known)
        assert got.member("alice").instance == instance_of(restarted)
    assert len(alice.client().capsule(restored_epoch)) > 0
    later = _verify(env, bob.client().start(os.urandom(32)))
    assert later.epoch.epoch > restored_epoch
    assert _issued(env)[-2:] == [restored_epoch, later.epoch.epoch]


def _other_providers_backup(env, tmp_path: Path, request) -> Path:
    other = init_provider(tmp_path / "other", database_url_for("sqlite" if env.database_url is None else "postgresql",
                                                                request))
    path = tmp_path / "other.backup"
    admin(other.state, "backup", str(path))
    return path


def _newer_schema_backup(env, tmp_path: Path) -> Path:
    path = tmp_path / "newer.backup"
    store = env.store()
    with store.write() as conn:
        conn.exec_driver_sql("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    store.close()
    try:  # the CLI refuses to back up a newer schema: write it the way the CLI would
        paths = StatePaths(env.state)
        backup_module.backup(resolve(None, {}, env.config, paths), path)
    finally:
        store = env.store()
        with store.write() as conn:
            conn.exec_driver_sql(f"UPDATE meta SET value = '{SCHEMA_VERSION}' WHERE key = 'schema_version'")
        store.close()
    return path


@pytest.mark.parametrize("case", ["missing", "garbage", "other-provider", "newer-schema"])
def test_a_bad_backup_is_refused_and_nothing_is_written(env, tmp_path, request, case):
    env.server.stop()
    if case == "missing":
        path, needle, code = tmp_path / "nope.backup", "is not a file", 64
    elif case == "garbage":
        path, needle, code = tmp_path / "garbage.backup", "", 74
        path.write_bytes(os.urandom(4096))
    elif case == "other-provider":
        path, needle, code = _other_providers_backup(env, tmp_path, request), "another provider's backup", 74
    else:
        path, needle, code = _newer_schema_backup(env, tmp_path), "schema version 99", 74
    before = env.dump()
    proc = admin(env.state, "restore", str(path), check=False)
    assert proc.returncode == code and needle in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert env.dump() == before


def test_backup_refuses_to_overwrite_a_file(env, tmp_path):
    path = tmp_path / "exists.backup"
    path.write_bytes(b"keep me")
    proc = admin(env.state, "backup", str(path), check=False)
    assert proc.returncode == 64 and "exists already" in proc.stderr
    assert path.read_bytes() == b"keep me"


def test_a_sqlite_backup_is_one_self_contained_file(tmp_path):
    env = init_provider(tmp_path / "p")
    admin(env.state, "group", "create", "lan", "--cidr", "10.77.0.0/24")
    path = tmp_path / "one.backup"
    admin(env.state, "backup", str(path))
    assert not Path(f"{path}-wal").exists() and oct(path.stat().st_mode & 0o777) == "0o600"
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT name FROM groups").fetchall() == [("lan",)]


def test_backup_and_restore_name_an_unreachable_database_and_write_nothing(tmp_path):
    env = init_provider(tmp_path / "p")
    snapshot = tmp_path / "good.backup"
    admin(env.state, "backup", str(snapshot))
    before = env.dump()
    nowhere = f"postgresql+psycopg://gt@/nodb?host={tmp_path / 'no-socket-here'}"
    for args in (("backup", str(tmp_path / "new.backup")), ("restore", str(snapshot))):
        proc = admin(env.state, *args, "--database-url", nowhere, check=False)
        assert proc.returncode == 74 and "(from --database-url)" in proc.stderr, proc.stderr
        assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert not (tmp_path / "new.backup").exists() and env.dump() == before
