"""Admin identities and roles of the remote admin API (issue 17 items 1 and 2; routes: ``provider/admin_routes.py``).

Identities (the RFC 9421 ``keyid`` of a signed admin request):

- ``admin:<id>`` -- a **provider admin** key. ``init`` makes one (and
  ``grouptun-provider admin-key create`` another, e.g. for an existing state
  dir): an Ed25519 key in ``STATE/keys/admin-<id>.pem``, PKCS#8, mode 0600,
  encrypted with the provider passphrase exactly when the archive signing
  keys are (``provider/keys.py``: the same ``_pem``). ``<id>`` is the first 16
  hex digits of SHA-256 of the raw public key; the public keys are in the
  database (``meta`` row ``admin_keys``, JSON ``{id: hex}``), so every
  replica knows them. Copy the file to the host the admin works from.
- ``owner:<group>/<member>`` -- a member signing with its own member key
  (the one its daemon holds): an **owner** when the group's signed
  ``owners`` list names it, else a plain **member**. Only current members
  resolve; a removed member's key is unknown (401).

Roles (what :func:`authorise` allows; every other request is a 403 naming
the role and the action, audited ``refused``):

- provider admin: everything (create groups, name owners: ``group set-meta``,
  rekey, list every group, and all owner actions in any group);
- owner: :data:`OWNER_ACTIONS` in ITS group only;
- member: none.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ed25519
from sqlalchemy import insert, select, update

from provider.archives import stored_names
from provider.errors import Forbidden, InvalidInput
from provider.keys import StatePaths, save_private_key
from provider.store import add_audit
from provider.tables import groups, meta

ADMIN, OWNER, MEMBER = "provider admin", "owner", "member"
ADMIN_KEYS = "admin_keys"  # the meta row
ADMIN_PREFIX, OWNER_PREFIX = "admin:", "owner:"
OWNER_ACTIONS = frozenset({
    "group show", "invite", "tokens list", "tokens revoke", "member list", "member show", "member remove",
    "member extend", "member set-attr", "policy set", "policy show", "policy clear", "route list",
    "route approve", "route remove", "export-rule set", "export-rule list", "export-rule remove"})
ADMIN_ACTIONS = frozenset({"group create", "group list", "group set-meta", "group rekey"}) | OWNER_ACTIONS


@dataclass(frozen=True)
class Principal:
    """Who signed an admin request: ``role`` one of ADMIN, OWNER, MEMBER; ``group`` and ``name`` for the
    latter two (the group its key belongs to)."""

    key_id: str
    role: str
    group: str | None = None
    name: str | None = None


def admin_key_id(public: ed25519.Ed25519PublicKey) -> str:
    return hashlib.sha256(public.public_bytes_raw()).hexdigest()[:16]


def admin_key_path(paths: StatePaths, ident: str) -> Path:
    return paths.root / "keys" / f"admin-{ident}.pem"


def create_admin_key(paths: StatePaths, store, now: float) -> tuple[str, Path]:
    """A new provider-admin key: the private key in ``STATE/keys/admin-<id>.pem``, its public half in the
    database. Returns (its keyid ``admin:<id>``, the file's path)."""
    key = ed25519.Ed25519PrivateKey.generate()
    ident = admin_key_id(key.public_key())
    path = admin_key_path(paths, ident)
    save_private_key(path, key)  # encrypted with the provider passphrase when there is one
    with store.write() as conn:
        held = _admin_keys(conn)
        held[ident] = key.public_key().public_bytes_raw().hex()
        text = json.dumps(held, sort_keys=True)
        if conn.execute(select(meta.c.key).where(meta.c.key == ADMIN_KEYS)).first() is None:
            conn.execute(insert(meta).values(key=ADMIN_KEYS, value=text))
        else:
            conn.execute(update(meta).where(meta.c.key == ADMIN_KEYS).values(value=text))
        add_audit(conn, now, "admin", "admin-key-create", None, key=ADMIN_PREFIX + ident)
    return ADMIN_PREFIX + ident, path


def _admin_keys(conn) -> dict[str, str]:
    raw = conn.execute(select(meta.c.value).where(meta.c.key == ADMIN_KEYS)).scalar()
    return json.loads(raw) if raw else {}


def list_admin_keys(store) -> list[str]:
    with store.read() as conn:
        return sorted(ADMIN_PREFIX + ident for ident in _admin_keys(conn))


def resolve(provider, key_id: str) -> tuple[ed25519.Ed25519PublicKey, Principal] | None:
    """The public key and principal a keyid names, or None (unknown: the verifier then answers 401)."""
    if key_id.startswith(ADMIN_PREFIX):
        with provider.store.read() as conn:
            public = _admin_keys(conn).get(key_id[len(ADMIN_PREFIX):])
        if public is None:
            return None
        return ed25519.Ed25519PublicKey.from_public_bytes(bytes.fromhex(public)), Principal(key_id, ADMIN)
    if not key_id.startswith(OWNER_PREFIX):
        return None
    group, sep, name = key_id[len(OWNER_PREFIX):].partition("/")
    if not sep:
        return None
    key = provider.member_key(group, name)
    if key is None:
        return None
    with provider.store.read() as conn:
        owners = stored_names(conn.execute(select(groups.c.owners).where(groups.c.name == group)).scalar())
    return key, Principal(key_id, OWNER if name in owners else MEMBER, group, name)


def authorise(who: Principal, action: str, group: str | None) -> None:
    """Forbidden (403), naming the role and the action, unless ``who`` may do ``action`` on ``group``."""
    if action not in ADMIN_ACTIONS:
        raise InvalidInput(f"unknown admin action {action!r}")
    if who.role == ADMIN:
        return
    where = f" in group {group!r}" if group else ""
    if who.role == OWNER and action in OWNER_ACTIONS:
        if group == who.group:
            return
        raise Forbidden(f"role owner (of group {who.group!r}) may not {action}{where}: an owner manages its "
                        "own group only")
    if who.role == OWNER:
        raise Forbidden(f"role owner may not {action}{where}: only the provider admin may")
    raise Forbidden(f"role member ({who.name!r} is not an owner of {who.group!r}) may not {action}{where}")
