"""Provider storage: SQLAlchemy Core tables over SQLite (WAL), or PostgreSQL.

Schema version 12 (table ``meta``, key ``schema_version``)::

    meta      key PK, value
    groups    id PK, name UNIQUE, group_id(16), cidr, cidr6, suite, mtu,
              rekey_after_seconds, rekey_after_packets, switch_delay, grace,
              created_at, epoch_hw (highest epoch ever issued), version
              (archive version), current_epoch, epoch_opened_at,
              archive (signed envelope of ``version``)
    members   id PK, group FK, name, ed25519_public, kem_public,
              credential_hash (Argon2id, see members.py), addr4, addr6,
              endpoints (JSON list), enrolled_at, instance (SHA-256 of the
              start challenge that owns the member, PROTOCOL.md 4; NULL
              before its first start), home (a linked provider's member:
              its home provider's id; NULL: ours); UNIQUE(group, name)
    tokens    id PK, token_hash UNIQUE (SHA-256 of the secret), group FK,
              name, created_at, expires_at, used_at
    epochs    (group, epoch) PK, suite, nonce_start, group_size, data_id,
              key_check, opened_at, reason, challenges (JSON hex list)
    capsules  (group, epoch, member) PK, idx, capsule, sealed_salt
    audit     id PK, ts, actor, action, group_name, detail (JSON, never a secret)
    subnet_routes  (member FK, prefix) PK, approved_at: the LAN prefixes a
              member asked for (approved_at NULL) or an admin approved behind
              it (provider/routes_approved.py)
    nonces    (scope, nonce) PK, expires_at: request-signature nonces seen by any
              replica (PostgreSQL; SQLite's one server keeps them in memory)
    starts    (group, member) PK, challenge, expires_at: daemons' start challenges
              not yet listed by an epoch, seen by every replica (provider/hub.py)
    buckets   key PK, tokens, updated_at: rate-limit token buckets every replica
              shares (PostgreSQL; costs bounded per member, not per replica)
    links     id PK, name UNIQUE, url, tls_fingerprint, keys_hash UNIQUE (the
              linked provider's id), groups (JSON list, NULL: any group),
              created_at, provider_keys (JSON, NULL until `link check`
              fetched them over the pinned TLS), checked_at: the linked
              trust providers (provider/links.py); last_ok_at,
              last_failure_at, last_failure (reason, no secret), down_since:
              the last link request made or answered (provider/linkstate.py)
    link_removals  id PK, link, remote_name, alias, name, owner_name,
              created_at, attempts, next_at, last_error: members this
              provider removed from a group a linked provider owns, until
              the owner confirmed (provider/linkremove.py)
    remote_groups, remote_invites, remote_members: this provider's members
              in groups a linked provider owns, and their join tokens
              (provider/remote.py)

Migrations: :meth:`Store.check_schema` upgrades an older database in
place, one step per version (``MIGRATIONS``), in one write transaction:
1 -> 2 adds ``members.instance`` (NULL: the member's next start sets it);
2 -> 3 creates the sealed-data tables (``provider/sealed.py``);
3 -> 4 adds ``members.attributes, expires_at``, ``tokens.max_uses, uses,
revoked_at, attributes, member_ttl``, ``groups.owner_fields, expires_at, owners``
(all NULL: as before) and the table ``removed`` (id, group FK, name,
ed25519_public, removed_at, reason): see ``provider/membership.py``.
4 -> 5 adds the ``subnet_routes`` table (empty: no routes approved).
5 -> 6 adds the tables ``nonces``, ``starts`` and ``buckets`` (replicas share them).
6 -> 7 adds ``groups.policy`` (the access policy's canonical text, NULL:
none, everything allowed) and ``groups.policy_version``: see
``provider/policy.py``.
7 -> 8 adds ``groups.export_rules`` (JSON object label -> selector, NULL:
no limits): see ``provider/exportrules.py``.
8 -> 9 adds the ``links`` table (empty: no linked providers) and
``members.home`` (NULL: every member is this provider's own), see
``provider/links.py`` and ``provider/linked.py``.
9 -> 10 adds ``links.last_ok_at, last_failure_at, last_failure, down_since``
(NULL: no contact recorded yet) and the ``link_removals`` table (empty).
10 -> 11 adds ``groups.compact``, the compact form of the archive of the
same version (PROTOCOL.md 2.2; NULL until the group's next signed version:
members asking for it get the full form meanwhile).
11 -> 12 adds the ``remote_removed`` table (empty): members of accepted
groups removed here, so their signed requests get 410 as a local member's do.

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

from sqlalchemy import (BigInteger, Column, Float, ForeignKey, Index, Integer, LargeBinary, MetaData, String, Table, Text,
                        UniqueConstraint, create_engine, delete, event, func, insert, inspect, select, text, update)
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import StaticPool

from provider.errors import SchemaError, StateDirError

SCHEMA_VERSION = 12
WRITE_LOCK_KEY = 0x67747076  # "gtpv": PostgreSQL advisory lock serialising writers (all processes)
TIMER_LOCK_KEY = 0x67747473  # "gtts": PostgreSQL session advisory lock of the replica running the timers
CHANGE_CHANNEL = "grouptun_changed"  # NOTIFY after every serialised write (provider/hub.py listens)
SERVER_APPLICATION = "grouptun-provider serve"  # application_name of a replica's connections (+ " PID"; restore looks)
IDENTITY_KEYS = ("provider_keys", "tls_fingerprint", "url")
metadata = MetaData()

meta = Table("meta", metadata, Column("key", String(64), primary_key=True), Column("value", Text, nullable=False))

groups = Table(
    "groups", metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(32), nullable=False, unique=True),
    Column("group_id", LargeBinary(16), nullable=False),
    Column("cidr", String(64), nullable=False),
    Column("cidr6", String(64)),
    Column("suite", Integer, nullable=False),
    Column("mtu", Integer, nullable=False),
    Column("rekey_after_seconds", Float, nullable=False),
    Column("rekey_after_packets", Integer, nullable=False),
    Column("switch_delay", Float, nullable=False),
    Column("grace", Float, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("epoch_hw", BigInteger, nullable=False, default=0),
    Column("version", BigInteger, nullable=False, default=0),
    Column("current_epoch", BigInteger),
    Column("epoch_opened_at", Float),
    Column("archive", LargeBinary),
    Column("compact", LargeBinary),  # v11: the same version's compact form (PROTOCOL.md 2.2); NULL: not signed yet
    Column("owner_fields", Text),    # v3: JSON object, the archive's group_metadata.owner (NULL: none)
    Column("expires_at", Float),     # v3: the whole group's end (NULL: none)
    Column("owners", Text),          # v3: JSON sorted list of owner names, the archive's roles (NULL: none)
    Column("policy", Text),          # v4: canonical access policy text (NULL: none, everything allowed)
    Column("policy_version", BigInteger),  # v4: the last policy version issued (kept when cleared)
    Column("export_rules", Text),    # JSON {label: canonical selector} (NULL: no limits), provider/exportrules.py
)

members = Table(
    "members", metadata,
    Column("id", Integer, primary_key=True),
    Column("group", Integer, ForeignKey("groups.id", ondelete="CASCADE"), nullable=False),
    Column("name", String(64), nullable=False),
    Column("ed25519_public", LargeBinary(32), nullable=False),
    Column("kem_public", LargeBinary(1216), nullable=False),
    Column("credential_hash", String(200), nullable=False),
    Column("addr4", String(64), nullable=False),
    Column("addr6", String(64)),
    Column("endpoints", Text, nullable=False, default="[]"),
    Column("enrolled_at", Float, nullable=False),
    Column("instance", LargeBinary(32)),
    Column("attributes", Text),     # v3: JSON object of signed key=value pairs (NULL: none)
    Column("expires_at", Float),    # v3: a temporary member's deadline (NULL: permanent)
    Column("home", String(64)),     # v9: the home provider's id of a linked provider's member (NULL: ours)
    UniqueConstraint("group", "name"),
)

tokens = Table(
    "tokens", metadata,
    Column("id", Integer, primary_key=True),
    Column("token_hash", LargeBinary(32), nullable=False, unique=True),
    Column("group", Integer, ForeignKey("groups.id", ondelete="CASCADE"), nullable=False),
    Column("name", String(64), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
    Column("used_at", Float),
    Column("max_uses", Integer),     # v3: a reusable key's bound (NULL: a one-time token, name fixed)
    Column("uses", Integer),         # v3: enrollments made with it (NULL: 0)
    Column("revoked_at", Float),     # v3
    Column("attributes", Text),      # v3: JSON attributes every member it enrolls gets (NULL: none)
    Column("member_ttl", Float),     # v3: members it enrolls expire this long after enrolling (NULL: never)
)

epochs = Table(
    "epochs", metadata,
    Column("group", Integer, ForeignKey("groups.id", ondelete="CASCADE"), primary_key=True),
    Column("epoch", BigInteger, primary_key=True),
    Column("suite", Integer, nullable=False),
    Column("nonce_start", BigInteger, nullable=False),
    Column("group_size", Integer, nullable=False),
    Column("data_id", LargeBinary(16), nullable=False),
    Column("key_check", LargeBinary(16), nullable=False),
    Column("opened_at", Float, nullable=False),
    Column("reason", String(64), nullable=False),
    Column("challenges", Text, nullable=False, default="[]"),
)

capsules = Table(
    "capsules", metadata,
    Column("group", Integer, ForeignKey("groups.id", ondelete="CASCADE"), primary_key=True),
    Column("epoch", BigInteger, primary_key=True),
    Column("member", String(64), primary_key=True),
    Column("idx", Integer, nullable=False),
    Column("capsule", LargeBinary, nullable=False),
    Column("sealed_salt", LargeBinary, nullable=False),
)

removed = Table(  # v3: members removed or expired, so their signed requests get 410 with the reason
    "removed", metadata,
    Column("id", Integer, primary_key=True),
    Column("group", Integer, ForeignKey("groups.id", ondelete="CASCADE"), nullable=False),
    Column("name", String(64), nullable=False),
    Column("ed25519_public", LargeBinary(32), nullable=False),
    Column("removed_at", Float, nullable=False),
    Column("reason", String(200), nullable=False),
    Index("removed_by_name", "group", "name"),  # looked up for every request signed by an unknown name
)

audit = Table(
    "audit", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("ts", Float, nullable=False),
    Column("actor", String(80), nullable=False),
    Column("action", String(40), nullable=False),
    Column("group_name", String(32)),
    Column("detail", Text, nullable=False, default="{}"),
)


# Sealed data (provider/sealed.py): one row per blob, its bytes in parts of at most sealed.PART_SIZE.
# The database holds them, not the state dir: it is the one place every replica shares, and a
# part is written in its own transaction only after the request signing it was verified.
sealed = Table(
    "sealed", metadata,
    Column("id", Integer, primary_key=True),
    Column("group", Integer, ForeignKey("groups.id", ondelete="CASCADE"), nullable=False),
    Column("data_id", LargeBinary(16), nullable=False, unique=True),
    Column("sender", String(64), nullable=False),
    Column("recipients", Text, nullable=False),   # JSON list of member names
    Column("size", BigInteger, nullable=False),    # announced and, once complete, stored
    Column("parts", Integer, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),  # the upload window while uploading, then the TTL
    Column("ttl", Float, nullable=False),
    Column("complete", Integer, nullable=False, default=0),
)

sealed_parts = Table(
    "sealed_parts", metadata,
    Column("blob", Integer, ForeignKey("sealed.id", ondelete="CASCADE"), primary_key=True),
    Column("part", Integer, primary_key=True),
    Column("bytes", LargeBinary, nullable=False),
)


def _create_sealed_tables(conn: Connection) -> None:
    metadata.create_all(conn, tables=[sealed, sealed_parts])


nonces = Table(
    "nonces", metadata,
    Column("scope", String(100), primary_key=True),
    Column("nonce", String(64), primary_key=True),
    Column("expires_at", Float, nullable=False, index=True),
)

starts = Table(
    "starts", metadata,
    Column("group", Integer, ForeignKey("groups.id", ondelete="CASCADE"), primary_key=True),
    Column("member", String(64), primary_key=True),
    Column("challenge", LargeBinary(32), nullable=False),
    Column("expires_at", Float, nullable=False),
)

buckets = Table(
    "buckets", metadata,
    Column("key", String(120), primary_key=True),
    Column("tokens", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
)


def _add_column(conn: Connection, table: Table, name: str) -> None:
    """ALTER TABLE ... ADD COLUMN for a nullable column of ``table`` (its type in this dialect)."""
    quote = conn.dialect.identifier_preparer.quote
    column_type = table.c[name].type.compile(dialect=conn.dialect)
    conn.exec_driver_sql(f"ALTER TABLE {quote(table.name)} ADD COLUMN {quote(name)} {column_type}")


def _membership_columns(conn: Connection) -> None:
    """v2 -> v3 (issue 17): attributes, deadlines, reusable keys, group metadata, the removed table.

    Skips what is there already (a database whose older columns were dropped by hand in a test)."""
    found = inspect(conn)
    for table, names in ((members, ("attributes", "expires_at")),
                         (tokens, ("max_uses", "uses", "revoked_at", "attributes", "member_ttl")),
                         (groups, ("owner_fields", "expires_at", "owners"))):
        present = {c["name"] for c in found.get_columns(table.name)}
        for name in names:
            if name not in present:
                _add_column(conn, table, name)
    removed.create(conn, checkfirst=True)


subnet_routes = Table(
    "subnet_routes", metadata,
    Column("member", Integer, ForeignKey("members.id", ondelete="CASCADE"), primary_key=True),
    Column("prefix", String(64), primary_key=True),
    Column("approved_at", Float),  # NULL: asked for by the member, not approved (yet)
)


def _add_subnet_routes(conn: Connection) -> None:
    """The subnet_routes table (its own step: other migrations of other branches stay independent)."""
    subnet_routes.create(conn, checkfirst=True)


def _policy_columns(conn: Connection) -> None:
    """Issue 17 item 6: the group's access policy and its version (NULL: none)."""
    present = {c["name"] for c in inspect(conn).get_columns(groups.name)}
    for name in ("policy", "policy_version"):
        if name not in present:
            _add_column(conn, groups, name)


def _export_rules_column(conn: Connection) -> None:
    """Issue 20 item 2: the group's export rules (NULL: no limits)."""
    if "export_rules" not in {c["name"] for c in inspect(conn).get_columns(groups.name)}:
        _add_column(conn, groups, "export_rules")


def _compact_column(conn: Connection) -> None:
    """Issue 16: the compact form of each group's archive (NULL until its next version is signed)."""
    if "compact" not in {c["name"] for c in inspect(conn).get_columns(groups.name)}:
        _add_column(conn, groups, "compact")


# Linked trust providers (issue 19, provider/links.py): what each admin pinned of the other provider.
links = Table(
    "links", metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(32), nullable=False, unique=True),
    Column("url", String(200), nullable=False),
    Column("tls_fingerprint", String(64), nullable=False),
    Column("keys_hash", String(64), nullable=False, unique=True),  # the linked provider's id
    Column("groups", Text),  # JSON sorted list of group names the link is limited to (NULL: any)
    Column("created_at", Float, nullable=False),
    Column("provider_keys", Text),  # its public keys, once fetched over the pinned TLS and matching keys_hash
    Column("checked_at", Float),    # when they were (NULL: not yet)
    Column("last_ok_at", Float),        # v10: the last link request to or from it that got through
    Column("last_failure_at", Float),   # v10: the last one that did not
    Column("last_failure", String(200)),  # v10: why (a reason, never a secret)
    Column("down_since", Float),        # v10: the first failure since the last success (NULL: up)
)


# A home provider's members in groups a linked provider owns (provider/remote.py).
remote_groups = Table(
    "remote_groups", metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(32), nullable=False, unique=True),  # the local name members use (no local group has it)
    Column("link", String(32), nullable=False),               # links.name of the owner
    Column("remote_name", String(32), nullable=False),        # the group's name at the owner
    Column("created_at", Float, nullable=False),
)

remote_invites = Table(
    "remote_invites", metadata,
    Column("id", Integer, primary_key=True),
    Column("token_hash", LargeBinary(32), nullable=False, unique=True),
    Column("remote_group", Integer, ForeignKey("remote_groups.id", ondelete="CASCADE"), nullable=False),
    Column("name", String(64), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
    Column("used_at", Float),
)

remote_members = Table(
    "remote_members", metadata,
    Column("id", Integer, primary_key=True),
    Column("remote_group", Integer, ForeignKey("remote_groups.id", ondelete="CASCADE"), nullable=False),
    Column("name", String(64), nullable=False),        # its name here
    Column("owner_name", String(64), nullable=False),  # NAME@LINK, its name at the owner (and its keyid here)
    Column("ed25519_public", LargeBinary(32), nullable=False),
    Column("kem_public", LargeBinary(1216), nullable=False),
    Column("credential_hash", String(200), nullable=False),
    Column("enrolled_at", Float, nullable=False),
    UniqueConstraint("remote_group", "name"),
    UniqueConstraint("remote_group", "owner_name"),
)


# Removals of this provider's members from a partner's group, kept until the owner confirmed (linkremove.py).
link_removals = Table(
    "link_removals", metadata,
    Column("id", Integer, primary_key=True),
    Column("link", String(32), nullable=False),         # links.name of the owner
    Column("remote_name", String(32), nullable=False),  # the group's name at the owner
    Column("alias", String(32), nullable=False),        # its name here
    Column("name", String(64), nullable=False),         # the member's name here (gt-member)
    Column("owner_name", String(64), nullable=False),   # NAME@LINK at the owner
    Column("created_at", Float, nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_at", Float, nullable=False),
    Column("last_error", String(200)),
    UniqueConstraint("link", "remote_name", "name"),
)
LINK_STATE_COLUMNS = ("last_ok_at", "last_failure_at", "last_failure", "down_since")

remote_removed = Table(  # v12: what ``removed`` is for local members, for the members of accepted groups
    "remote_removed", metadata,
    Column("id", Integer, primary_key=True),
    Column("remote_group", Integer, ForeignKey("remote_groups.id", ondelete="CASCADE"), nullable=False),
    Column("owner_name", String(64), nullable=False),  # NAME@LINK: the keyid its requests are signed with
    Column("ed25519_public", LargeBinary(32), nullable=False),
    Column("removed_at", Float, nullable=False),
    Column("reason", String(200), nullable=False),
    Index("remote_removed_by_name", "remote_group", "owner_name"),
)


def _remote_removed_table(conn: Connection) -> None:
    """Issue 19: removed members of accepted groups (their requests get 410, PROTOCOL.md 8)."""
    remote_removed.create(conn, checkfirst=True)


def _link_state(conn: Connection) -> None:
    """Issue 19 item 6: each link's last contact, and removals the owner has not confirmed yet."""
    present = {c["name"] for c in inspect(conn).get_columns(links.name)}
    for name in LINK_STATE_COLUMNS:
        if name not in present:
            _add_column(conn, links, name)
    link_removals.create(conn, checkfirst=True)


def _add_links(conn: Connection) -> None:
    """Issue 19: the links table and ``members.home`` (one step, appended: other branches' steps stay
    independent)."""
    metadata.create_all(conn, tables=[links, remote_groups, remote_invites, remote_members])
    if "home" not in {c["name"] for c in inspect(conn).get_columns(members.name)}:
        _add_column(conn, members, "home")


# from-version -> the step to the next version (run in the caller's write transaction)
MIGRATIONS = {
    1: lambda conn: _add_column(conn, members, "instance"),
    2: _create_sealed_tables,
    3: _membership_columns,
    4: _add_subnet_routes,
    5: lambda conn: metadata.create_all(conn, tables=[nonces, starts, buckets]),
    6: _policy_columns,
    7: _export_rules_column,
    8: _add_links,
    9: _link_state,
    10: _compact_column,
    11: _remote_removed_table,
}


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
