"""``grouptun-provider backup FILE`` and ``restore FILE``: online snapshots of the provider's database.

SQLite: ``backup`` copies ``provider.db`` with SQLite's online backup API
(a consistent snapshot while ``serve`` writes); FILE is a SQLite database.
PostgreSQL: ``backup`` runs ``pg_dump --format=custom`` (one snapshot
transaction; replicas keep serving); FILE is its archive. The password
goes to pg_dump/pg_restore in ``PGPASSWORD``, never on a command line.

``restore FILE`` (both: the server must be stopped -- on SQLite the state
dir's ``serve.lock`` must be free, on PostgreSQL no connection named
``SERVER_APPLICATION`` may be open on the database -- since a replica that
kept running would hold the later state in its caches):

1. FILE is checked first, nothing written on a refusal: it must hold a
   grouptun provider of this state dir's provider keys, of a schema version
   this provider knows (an older one is migrated afterwards).
2. It replaces the database: SQLite with the backup API in one step,
   PostgreSQL with ``pg_restore --clean --if-exists --single-transaction``.
3. ``after_restore``: every group's epoch counter floor goes above
   every number ever issued (time-based, ``epochs.restore_floor``) and each
   group of 2 or more members gets a new epoch at once, so members that
   held newer epochs than the backup's move on to one above theirs (their
   archives versions are Unix milliseconds: the new one is newer too).

When the database being replaced can still be read, ``live_state`` takes
from it first what members hold now: each group's epoch high-water mark
(exact, on top of the time-based floor) and each member's instance (the
daemon started after the backup keeps owning its member: an archive naming
the backup's older instance would make it exit as "started elsewhere").
When it cannot (the database is lost), those daemons must be started again.

What a restore cannot bring back: members enrolled after the backup (they
enroll again with a new invitation) and other changes made after it.
"""

from __future__ import annotations

import fcntl
import glob
import os
import re
import shutil
import sqlite3
import subprocess
from contextlib import closing, contextmanager
from pathlib import Path

from sqlalchemy import select, text, update
from sqlalchemy.exc import SQLAlchemyError

from provider.database import DatabaseSetting, canonical_keys
from provider.epochs import restore_floor
from provider.errors import InvalidInput, NotEnoughMembers, ProviderFault, StateDirError
from provider.keys import StatePaths
from provider.service import Provider
from provider.store import SERVER_APPLICATION, add_audit
from provider.tables import SCHEMA_VERSION, groups, members

TOOL_TIMEOUT = 3600


@contextmanager
def serve_lock(paths: StatePaths):
    """The state dir's ``serve.lock`` (held by a running ``serve``); StateDirError if taken."""
    with open(paths.root / "serve.lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            raise StateDirError(f"another grouptun-provider serve is running on {paths.root}") from exc
        yield


def backup(setting: DatabaseSetting, target: Path) -> None:
    if target.exists():
        raise InvalidInput(f"{target} exists already: give a new file")
    if setting.url is None:
        _sqlite_copy(setting.sqlite_path, target)
        with closing(sqlite3.connect(target)) as copy:  # one self-contained file, no -wal beside it
            copy.execute("PRAGMA journal_mode = DELETE")
    else:
        _pg_tool(setting, "pg_dump", "--format=custom", "--no-owner", "--no-privileges", f"--file={target}")
    os.chmod(target, 0o600)  # sealed capsules and hashes only, but nobody else's business


def restore(setting: DatabaseSetting, paths: StatePaths, config: dict,
            source: Path) -> dict[str, tuple[int, dict[str, bytes]]]:
    """Steps 1 and 2 of the module docstring; returns ``live_state`` of the replaced database (the caller
    runs ``after_restore`` with it)."""
    if not source.is_file():
        raise InvalidInput(f"{source} is not a file")
    if setting.url is None:
        with serve_lock(paths):
            _check_meta(_sqlite_meta(source), config, source)
            live = live_state(setting, config)
            _sqlite_copy(source, setting.sqlite_path)
        return live
    _check_meta(_pg_meta(setting, source), config, source)
    _refuse_running_replicas(setting)
    live = live_state(setting, config)
    _pg_tool(setting, "pg_restore", "--clean", "--if-exists", "--single-transaction", "--no-owner",
             "--no-privileges", "--exit-on-error", str(source))
    return live


def after_restore(provider: Provider, backup: str,
                  live: dict[str, tuple[int, dict[str, bytes]]]) -> dict[str, int | None]:
    """Once a backup is back: raise every group's epoch floor above every number ever issued, then give
    each group a new epoch (above the epochs its members may hold from after the backup). Group -> epoch.

    ``live`` (``live_state``: what the replaced database held, group -> (high-water mark, member ->
    instance)) raises the floor further and gives members their latest instances back."""
    now = provider.clock()
    with provider.store.write() as conn:
        for g in list(conn.execute(select(groups))):
            held_hw, instances = live.get(g.name, (0, {}))
            floor = max(restore_floor(g.created_at, now), held_hw)
            if floor > g.epoch_hw:
                conn.execute(update(groups).where(groups.c.id == g.id).values(epoch_hw=floor))
            for name, instance in instances.items():
                conn.execute(update(members).where(members.c.group == g.id, members.c.name == name)
                             .values(instance=instance))
        add_audit(conn, now, "admin", "restore", None, backup=backup[:200], live_groups=len(live))
    opened = {}
    for name in provider.list_groups():
        try:
            opened[name] = provider.open_epoch(name, "restore", "admin").epoch
        except NotEnoughMembers:
            opened[name] = None
    return opened


def live_state(setting: DatabaseSetting, config: dict) -> dict[str, tuple[int, dict[str, bytes]]]:
    """What the database about to be replaced holds, if it can be read: group -> (epoch high-water mark,
    member -> instance); empty when it cannot (lost or broken: that is why one restores)."""
    from provider.database import open_store  # noqa: PLC0415 -- database imports nothing of ours back

    try:
        store = open_store(setting, config)
    except ProviderFault:
        return {}
    try:
        with store.read() as conn:
            marks = {r.id: (r.name, r.epoch_hw) for r in conn.execute(select(groups.c.id, groups.c.name,
                                                                              groups.c.epoch_hw))}
            held = {name: (hw, {}) for name, hw in marks.values()}
            for row in conn.execute(select(members.c.group, members.c.name, members.c.instance)
                                    .where(members.c.instance.is_not(None))):
                held[marks[row.group][0]][1][row.name] = row.instance
        return held
    except SQLAlchemyError:
        return {}
    finally:
        store.close()


def _sqlite_copy(source: Path, target: Path) -> None:
    """SQLite's online backup from ``source`` into ``target`` (pages copied in one read snapshot)."""
    with closing(sqlite3.connect(source, timeout=10)) as src, closing(sqlite3.connect(target, timeout=10)) as dst:
        src.backup(dst)


def _check_meta(meta: dict[str, str], config: dict, source: Path) -> None:
    version = meta.get("schema_version", "")
    if not version.isdigit():
        raise StateDirError(f"{source} holds no grouptun provider database")
    if int(version) > SCHEMA_VERSION:
        raise StateDirError(f"{source} has schema version {version}, this provider knows {SCHEMA_VERSION}")
    held = meta.get("provider_keys")
    if held is not None and held != canonical_keys(config["provider_keys"]):
        raise StateDirError(f"{source} is another provider's backup (other provider keys)")


def _sqlite_meta(source: Path) -> dict[str, str]:
    try:
        with closing(sqlite3.connect(f"file:{source}?mode=ro", uri=True)) as conn:  # never creates it
            return dict(conn.execute("SELECT key, value FROM meta"))
    except sqlite3.DatabaseError as exc:
        raise StateDirError(f"{source} is not a SQLite backup of a provider: {exc}") from exc


def _pg_meta(setting: DatabaseSetting, source: Path) -> dict[str, str]:
    """The ``meta`` rows of a pg_dump archive (its COPY data, as pg_restore prints it)."""
    out = _pg_tool(setting, "pg_restore", "--data-only", "--table=meta", "--file=-", str(source), database=False)
    rows, copying = {}, False
    for line in out.splitlines():
        if re.match(r"COPY (\S+\.)?meta \(", line):
            copying = True
        elif copying and line == "\\.":
            break
        elif copying and "\t" in line:
            key, value = line.split("\t", 1)
            rows[key] = value.replace("\\\\", "\\")
    return rows


def _refuse_running_replicas(setting: DatabaseSetting) -> None:
    store = setting.store()
    try:
        with store.read() as conn:
            running = conn.execute(text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND application_name LIKE :app AND pid <> pg_backend_pid()"), {"app": SERVER_APPLICATION + "%"}).scalar_one()
    except SQLAlchemyError as exc:
        raise setting.fail(StateDirError(f"database unreachable: {getattr(exc, 'orig', exc)}")) from exc
    finally:
        store.close()
    if running:
        raise setting.fail(StateDirError(f"{running} connection(s) of a running grouptun-provider serve: "
                                         "stop every replica before a restore"))


def _tool_path(name: str) -> str:
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)
    if found is None:
        raise StateDirError(f"{name} not found: install the PostgreSQL client tools (apt-get install postgresql-client)")
    return found


def _pg_tool(setting: DatabaseSetting, name: str, *args: str, database: bool = True) -> str:
    """Run pg_dump/pg_restore on the setting's database (``database`` False: on a file only); its stdout."""
    url = setting.url
    env = {**os.environ}
    if url.password is not None:
        env["PGPASSWORD"] = url.password
    conninfo = url.set(drivername="postgresql", password=None).render_as_string(hide_password=False)
    command = [_tool_path(name), *((f"--dbname={conninfo}",) if database else ()), *args]
    try:
        proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=TOOL_TIMEOUT)
    except subprocess.TimeoutExpired as exc:
        raise setting.fail(StateDirError(f"{name} did not finish in {TOOL_TIMEOUT} s")) from exc
    if proc.returncode != 0:
        detail = " ".join(proc.stderr.split())[-400:]
        raise setting.fail(StateDirError(f"{name} failed ({proc.returncode}): {detail}"))
    return proc.stdout
