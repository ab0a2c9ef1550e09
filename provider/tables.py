"""The provider database's schema: its tables (SQLAlchemy Core) and the steps that upgrade an older one.

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

Migrations: :meth:`provider.store.Store.check_schema` upgrades an older database in
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
"""

from __future__ import annotations

from sqlalchemy import (BigInteger, Column, Float, ForeignKey, Index, Integer, LargeBinary, MetaData, String, Table, Text,
                        UniqueConstraint, inspect)
from sqlalchemy.engine import Connection

SCHEMA_VERSION = 12
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
