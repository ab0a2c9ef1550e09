"""Provider storage: SQLAlchemy Core tables over SQLite (WAL), or PostgreSQL.

The schema (tables, ``SCHEMA_VERSION``, the migration steps) is ``provider/tables.py``; this module
owns the engine, the transactions and the small queries every module shares.

Nothing here opens traffic without a member's private key: capsules and
sealed salts are HPKE-sealed to member keys; SS and salt are never stored.
Durability: WAL, ``synchronous=FULL``; the API acknowledges only after
commit, so a kill -9 loses nothing acknowledged. Writers take ``BEGIN
IMMEDIATE`` (one writer at a time, across processes: the admin CLI writes
to the same file while the server runs) with a 10 s busy timeout.

PostgreSQL (``Store(url="postgresql+psycopg://...")``, driver psycopg 3; every
``tests/provider`` store test runs on both backends): the same tables
and queries. Writers are serialised the way SQLite's ``BEGIN IMMEDIATE``
does it, with one transaction-scoped advisory lock (``WRITE_LOCK_KEY``)
taken first in every write transaction (READ COMMITTED, so what a writer
reads after the lock is the latest commit); reads run in REPEATABLE READ
(one snapshot, like a SQLite read transaction). Numbers that outgrow 32
bits (archive versions are Unix milliseconds, epochs and nonce starts are
u32) are BIGINT; VARCHAR lengths are enforced there (values are validated
or cut to them first). The admin CLI and server choose the database with
``provider/database.py`` (a URL from a flag, the environment or provider.json).

``meta`` also holds the provider's identity (``provider_keys``,
``tls_fingerprint``, ``url``), written by ``create_schema``: a replica joining
the database (``init --join``) and every command check that their state dir's
keys are the database's. ``create_schema`` refuses a database that has any
of these tables already, so a second ``init`` never overwrites a provider.
Replicas (issue 16): any number of ``serve`` processes share one PostgreSQL
database. Every serialised write ends with ``NOTIFY`` on ``CHANGE_CHANNEL``
(delivered at commit; the hubs of all replicas listen); ``light()`` is a short
transaction without the writers' lock, for rows that only ever conflict on
their own key (nonces, pending starts, rate buckets). One replica at a time
runs the timers, holding the session advisory lock ``TIMER_LOCK_KEY``
(``hub.TimerLeadership``).
"""

from __future__ import annotations

import json
import threading
from contextlib import contextmanager
from typing import Iterator

from sqlalchemy import Table, create_engine, delete, event, func, insert, inspect, select, text, update
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import StaticPool

from provider.errors import SchemaError, StateDirError
from provider.tables import MIGRATIONS, SCHEMA_VERSION, audit, capsules, groups, members, meta, metadata

WRITE_LOCK_KEY = 0x67747076  # "gtpv": PostgreSQL advisory lock serialising writers (all processes)
TIMER_LOCK_KEY = 0x67747473  # "gtts": PostgreSQL session advisory lock of the replica running the timers
CHANGE_CHANNEL = "grouptun_changed"  # NOTIFY after every serialised write (provider/hub.py listens)
SERVER_APPLICATION = "grouptun-provider serve"  # application_name of a replica's connections (+ " PID"; restore looks)
IDENTITY_KEYS = ("provider_keys", "tls_fingerprint", "url")


def _sqlite_setup(engine: Engine, memory: bool) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record):
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA busy_timeout = 10000")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.execute("PRAGMA synchronous = FULL")
        if memory is False:
            cursor.execute("PRAGMA journal_mode = WAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.info.get("write") else "BEGIN")


class Store:
    """Owns the engine; ``read()`` and ``write()`` yield a connection in a transaction.

    ``path`` None (and no ``url``) means an in-memory SQLite database (tests);
    ``url`` a PostgreSQL database (see the module docstring). Limits: one
    database; ``write()`` serialises writers of this process with a lock and
    other processes with SQLite's lock or PostgreSQL's advisory lock.
    """

    def __init__(self, path: str | None, *, url: str | URL | None = None, application: str | None = None) -> None:
        self.application = application
        self._memory = path is None and url is None
        self._postgres = url is not None
        if url is not None:
            url = make_url(url)
            if url.get_backend_name() != "postgresql":
                raise StateDirError(f"database url must be postgresql+psycopg://..., not {url.drivername!r}")
            args = {} if "connect_timeout" in url.query else {"connect_timeout": 10}  # libpq waits forever
            if application is not None:  # restore refuses to run while replicas are connected
                args["application_name"] = application
            self.engine = create_engine(url, pool_size=20, max_overflow=8, pool_pre_ping=True, connect_args=args)
        elif path is None:
            self.engine = create_engine("sqlite://", poolclass=StaticPool,
                                        connect_args={"check_same_thread": False})
        else:
            self.engine = create_engine(f"sqlite:///{path}", pool_size=40, max_overflow=8,
                                        connect_args={"check_same_thread": False, "timeout": 10})
        if url is None:
            _sqlite_setup(self.engine, path is None)
        self._write_lock = threading.RLock() if self._memory else threading.Lock()

    def create_schema(self, identity: dict[str, str] | None = None) -> None:
        """Tables and ``meta`` (schema version, ``identity``) in an empty database; refuses a non-empty one."""
        with self.write() as conn:
            self._refuse_tables(conn)
            metadata.create_all(conn)
            conn.execute(insert(meta).values(key="schema_version", value=str(SCHEMA_VERSION)))
            for key, value in (identity or {}).items():
                conn.execute(insert(meta).values(key=key, value=value))

    def check_empty(self) -> None:
        """StateDirError unless the database is reachable and has none of the provider's tables."""
        try:
            with self.read() as conn:
                self._refuse_tables(conn)
        except OperationalError as exc:
            raise StateDirError(f"database unreachable: {exc.orig}") from exc

    @staticmethod
    def _refuse_tables(conn: Connection) -> None:
        present = sorted(set(inspect(conn).get_table_names()) & set(metadata.tables))
        if "meta" in present:
            raise StateDirError("holds a grouptun provider already (init --join adds a replica to it)")
        if present:
            raise StateDirError(f"is not empty: it has tables {', '.join(present)}")

    def identity(self) -> dict[str, str]:
        """The provider identity rows of ``meta`` (absent in databases created before they existed)."""
        with self.read() as conn:
            rows = conn.execute(select(meta.c.key, meta.c.value).where(meta.c.key.in_(IDENTITY_KEYS)))
            return {row.key: row.value for row in rows}

    def check_schema(self) -> None:
        try:
            with self.read() as conn:
                value = None if not inspect(conn).has_table("meta") else conn.execute(
                    select(meta.c.value).where(meta.c.key == "schema_version")).scalar()
        except OperationalError as exc:
            raise StateDirError(f"database unreachable or unreadable: {exc.orig}") from exc
        if value is None:
            raise SchemaError("database has no schema version (not initialised?)")
        if int(value) < SCHEMA_VERSION and int(value) in MIGRATIONS:
            self._migrate()
        elif int(value) != SCHEMA_VERSION:
            raise SchemaError(f"database schema version {value}, this provider knows {SCHEMA_VERSION}")

    def _migrate(self) -> None:
        """Upgrade to SCHEMA_VERSION one step at a time, in one write transaction (another process may race us)."""
        with self.write() as conn:
            version = int(conn.execute(select(meta.c.value).where(meta.c.key == "schema_version")).scalar_one())
            while version < SCHEMA_VERSION:
                MIGRATIONS[version](conn)
                version += 1
            conn.execute(update(meta).where(meta.c.key == "schema_version").values(value=str(version)))

    @contextmanager
    def read(self) -> Iterator[Connection]:
        if self._memory:  # one shared connection: serialise with writers
            with self._write_lock, self.engine.begin() as conn:
                yield conn
            return
        if self._postgres:  # one snapshot for the whole read, as SQLite gives
            with self.engine.connect().execution_options(isolation_level="REPEATABLE READ") as conn:
                with conn.begin():
                    yield conn
            return
        with self.engine.begin() as conn:
            yield conn

    @contextmanager
    def write(self) -> Iterator[Connection]:
        with self._write_lock:
            with self.engine.connect() as conn:
                conn.info["write"] = True
                try:
                    with conn.begin():
                        if self._postgres:  # BEGIN IMMEDIATE's equivalent: one writer at a time
                            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": WRITE_LOCK_KEY})
                            conn.exec_driver_sql(f"NOTIFY {CHANGE_CHANNEL}")  # sent at commit, to every replica
                        yield conn
                finally:
                    conn.info.pop("write", None)

    @contextmanager
    def light(self) -> Iterator[Connection]:
        """A short write transaction without the writers' lock (PostgreSQL) for rows that conflict only on
        their own key; SQLite has one writer anyway, so there it is ``write()``."""
        if not self._postgres:
            with self.write() as conn:
                yield conn
            return
        with self.engine.begin() as conn:
            yield conn

    @property
    def postgres(self) -> bool:
        return self._postgres

    def close(self) -> None:
        self.engine.dispose()

    # --- small shared queries -------------------------------------------------

    def group_versions(self) -> dict[str, int]:
        with self.read() as conn:
            return {row.name: row.version for row in conn.execute(select(groups.c.name, groups.c.version))}

    def archive_version(self, group: str) -> int | None:
        """The group's archive version without the archive (None: no such group)."""
        with self.read() as conn:
            return conn.execute(select(groups.c.version).where(groups.c.name == group)).scalar()

    def archive(self, group: str, compact: bool = False) -> tuple[int, bytes | None]:
        """(version, signed archive) of ``group``; with ``compact`` its compact form (see :meth:`archive_forms`)."""
        version, full, small = self.archive_forms(group)
        return version, small if compact else full

    def archive_forms(self, group: str) -> tuple[int, bytes | None, bytes | None]:
        """(version, full archive, compact form) of ``group``, read together. A version signed before
        schema 11 has no compact form: the full one stands in for it (members accept either)."""
        with self.read() as conn:
            row = conn.execute(select(groups.c.version, groups.c.archive, groups.c.compact)
                               .where(groups.c.name == group)).first()
        return (0, None, None) if row is None else (row.version, row.archive, row.compact or row.archive)


def add_audit(conn: Connection, now: float, actor: str, action: str, group: str | None, **detail) -> None:
    """One audit row. Callers pass only non-secret detail (names, numbers, reasons)."""
    conn.execute(insert(audit).values(ts=now, actor=actor[:80], action=action[:40],
                                      group_name=None if group is None else group[:32],
                                      detail=json.dumps(detail, sort_keys=True, default=str)))


def group_row(conn: Connection, name: str):
    return conn.execute(select(groups).where(groups.c.name == name)).first()


def member_rows(conn: Connection, group_pk: int) -> list:
    return list(conn.execute(select(members).where(members.c.group == group_pk).order_by(members.c.id)))


def audit_rows(conn: Connection, after_id: int = 0, limit: int = 1000) -> list:
    query = select(audit).where(audit.c.id > after_id).order_by(audit.c.id).limit(limit)
    return list(conn.execute(query))


def prune_capsules(conn: Connection, group_pk: int, keep_from_epoch: int) -> None:
    """Drop capsules of epochs before ``keep_from_epoch`` (members hold at most two)."""
    conn.execute(delete(capsules).where(capsules.c.group == group_pk, capsules.c.epoch < keep_from_epoch))


def count(conn: Connection, table: Table, *where) -> int:
    return conn.execute(select(func.count()).select_from(table).where(*where)).scalar_one()


def upsert(conn: Connection, table: Table, values: dict, key: list[str], replace: list[str] | None = None) -> bool:
    """INSERT ``values``; on a conflict on ``key`` update the ``replace`` columns, or (None) do nothing.
    Whether a row was written (False: the key existed and nothing was replaced)."""
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as dialect_insert
    else:
        from sqlalchemy.dialects.sqlite import insert as dialect_insert
    statement = dialect_insert(table).values(**values)
    if replace is None:
        statement = statement.on_conflict_do_nothing(index_elements=key)
    else:
        statement = statement.on_conflict_do_update(index_elements=key,
                                                    set_={c: statement.excluded[c] for c in replace})
    # RETURNING, not rowcount: on PostgreSQL (psycopg 3) it reads -1 for an INSERT .. ON CONFLICT here
    return conn.execute(statement.returning(table.c[key[0]])).first() is not None
