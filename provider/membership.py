"""Membership as seed 000 describes it: AddGroup with its members, reusable keys, temporary members,
signed attributes, group metadata, and telling a removed member so (issue 17 items 3, 4, 5, 7).

- **AddGroup** (:func:`create_group`): the group and one one-time token per
  named member in ONE transaction: a bad name, a duplicate or an existing
  group leaves nothing behind.
- **Tokens** (``tables.tokens``): one-time (``max_uses`` NULL, the member name
  fixed) or reusable enrollment keys (``max_uses`` N, any member name, like
  Tailscale auth keys). Either may carry ``attributes`` and a ``member_ttl``
  that every member it enrolls gets. :func:`redeem` is the one rule for
  using one (called in the enrollment's transaction): revoked, expired,
  exhausted and name mismatch are refused with their reason (403). A
  token's public id is the first 8 bytes of its stored hash, in hex.
- **Temporary members** (``members.expires_at``): :func:`expire_due` removes
  every member whose deadline passed, in one new epoch per group, audited
  ``member-expire``; the server's ticker calls it every second
  (``provider/hub.py``), so a member goes within ~2 s of its deadline.
  :func:`extend` moves a deadline later.
- **Attributes** (``members.attributes``, JSON) and **group metadata**
  (``groups.owner_fields``, ``groups.expires_at``) are validated with
  ``grouptun.core.attributes`` and carried in the signed archive
  (``provider/archives.py``); changing them re-signs it (no new epoch).
  After the group's own expiry nobody enrolls.
- **Removed members** (``tables.removed``): every removal (admin, expiry)
  keeps the member's Ed25519 key and the reason, so a request it signs gets
  410 with that reason (``provider/routes.py``) instead of the 401 that an
  unknown key gets: only the removed member can make that request, so
  nobody else learns who was removed.

Every change is one transaction that checks first and is audited; a
refusal changes nothing (``ProviderFault`` rolls it back).
"""

from __future__ import annotations

import json
from typing import Iterable, Mapping

from cryptography.hazmat.primitives.asymmetric import ed25519
from sqlalchemy import delete, insert, select, update

from grouptun.core import attributes as attrs
from provider import members as mem
from provider.archives import resign, stored_names, stored_pairs
from provider.errors import Conflict, Forbidden, InvalidInput, NotFound
from provider.store import add_audit
from provider.tables import capsules, groups, members, removed, tokens

TOKEN_TTL = (60.0, 86400.0 * 30, "1m and 30d")       # how long a token may be valid
MEMBER_TTL = (10.0, 86400.0 * 365, "10s and 365d")    # a temporary member's lifetime, and one extension
MAX_USES = 100_000
MAX_ADD_GROUP_MEMBERS = 1000
KEY_ID_BYTES = 8


def check_attributes(value: Mapping[str, str], what: str = "attributes") -> dict[str, str]:
    """The attribute grammar's verdict as an InvalidInput (400) naming the pair at fault."""
    try:
        return attrs.check(value, what)
    except ValueError as exc:
        raise InvalidInput(str(exc)) from exc


def _bounded(value: float | None, bounds: tuple[float, float, str], what: str) -> float | None:
    if value is not None and not bounds[0] <= value <= bounds[1]:
        raise InvalidInput(f"{what} must be between {bounds[2]}")
    return value


def _stored(pairs: Mapping[str, str]) -> str | None:
    return json.dumps(dict(pairs), sort_keys=True) if pairs else None


def key_id(token_hash: bytes) -> str:
    return token_hash[:KEY_ID_BYTES].hex()


# --- tokens -------------------------------------------------------------------------------------------


def invite(provider, group: str, name: str | None, ttl: float, uses: int | None = None,
           attributes: Mapping[str, str] | None = None, member_ttl: float | None = None) -> tuple[str, str]:
    """A one-time token for ``name`` (``uses`` None) or a reusable key for ``uses`` enrollments of any name.

    Returns (secret, key id); only the secret's hash is stored.
    """
    with provider.store.write() as conn:
        return _insert_token(conn, provider, _group(conn, group), name, ttl, uses, attributes, member_ttl)


def _check_invited_link(conn, g, name: str) -> None:
    """A NAME@LINK invitation needs a link of that name serving the group (provider/linked.py)."""
    from provider.links import link_row, serves_group  # noqa: PLC0415 -- links imports members, like this module

    link = mem.foreign_link(name)
    if link is not None and not serves_group(link_row(conn, link), g.name):
        raise InvalidInput(f"link {link!r} does not serve group {g.name!r} (link add ... --groups)")


def _insert_token(conn, provider, g, name, ttl, uses, attributes, member_ttl) -> tuple[str, str]:
    if uses is None:
        _check_invited_link(conn, g, mem.check_member_name(name))
    elif name is not None:
        raise InvalidInput("a reusable key is for any member name: give no member")
    elif isinstance(uses, bool) or not 1 <= uses <= MAX_USES:
        raise InvalidInput(f"--uses must be between 1 and {MAX_USES}")
    _bounded(ttl, TOKEN_TTL, "--ttl" if uses is None else "--expires")
    _bounded(member_ttl, MEMBER_TTL, "--member-ttl")
    pairs = check_attributes(attributes or {})
    now = provider.clock()
    _refuse_expired_group(g, now)
    if name is not None and conn.execute(select(members.c.id).where(members.c.group == g.id,
                                                                    members.c.name == name)).first():
        raise Conflict(f"member {name!r} is already enrolled in {g.name!r}")
    secret, digest = mem.new_token_secret()
    conn.execute(insert(tokens).values(token_hash=digest, group=g.id, name=name or "", created_at=now,
                                       expires_at=now + ttl, max_uses=uses, uses=0, attributes=_stored(pairs),
                                       member_ttl=member_ttl))
    add_audit(conn, now, "admin", "invite", g.name, member=name, ttl=ttl, uses=uses, key=key_id(digest),
              attributes=pairs, member_ttl=member_ttl)
    return secret, key_id(digest)


def redeem(conn, tok, g, name: str, now: float) -> tuple[str | None, float | None]:
    """Use token row ``tok`` for member ``name`` (the one rule): its (stored attributes, member deadline).

    Forbidden with the reason when it cannot be used; otherwise counts the use.
    """
    if tok is None:
        raise Forbidden("join token unknown, used or expired")
    if tok.max_uses is None:  # one-time: the old answers, word for word
        if tok.used_at is not None or tok.expires_at <= now:
            raise Forbidden("join token unknown, used or expired")
        if tok.name != name:
            raise Forbidden("name does not match the invitation")
    if tok.revoked_at is not None:
        raise Forbidden("join token revoked")
    if tok.expires_at <= now:
        raise Forbidden("join token expired")
    spent = tok.uses or 0
    if tok.max_uses is not None and spent >= tok.max_uses:
        raise Forbidden(f"join token exhausted: all {tok.max_uses} uses spent")
    _refuse_expired_group(g, now)
    done = now if tok.max_uses is None or spent + 1 >= tok.max_uses else None
    conn.execute(update(tokens).where(tokens.c.id == tok.id).values(uses=spent + 1, used_at=done))
    return tok.attributes, None if tok.member_ttl is None else now + tok.member_ttl


def _token_state(t, now: float) -> str:
    if t.revoked_at is not None:
        return "revoked"
    if t.max_uses is None and t.used_at is not None:
        return "used"
    if t.max_uses is not None and (t.uses or 0) >= t.max_uses:
        return "exhausted"
    return "expired" if t.expires_at <= now else "active"


def list_tokens(provider, group: str) -> list[dict]:
    now = provider.clock()
    with provider.store.read() as conn:
        rows = list(conn.execute(select(tokens).where(tokens.c.group == _group(conn, group).id)
                                 .order_by(tokens.c.id)))
    return [{"id": key_id(t.token_hash), "member": t.name or None, "reusable": t.max_uses is not None,
             "uses": t.uses or (1 if t.used_at is not None else 0), "max_uses": t.max_uses or 1,
             "state": _token_state(t, now), "created_at": t.created_at, "expires_at": t.expires_at,
             "revoked_at": t.revoked_at, "attributes": dict(stored_pairs(t.attributes)),
             "member_ttl": t.member_ttl} for t in rows]


def revoke_token(provider, group: str, ident: str) -> dict:
    now = provider.clock()
    with provider.store.write() as conn:
        g = _group(conn, group)
        found = [t for t in conn.execute(select(tokens).where(tokens.c.group == g.id))
                 if key_id(t.token_hash) == ident]
        if not found:
            raise NotFound(f"no token {ident!r} in group {group!r} (see: tokens list {group})")
        if found[0].revoked_at is not None:
            raise Conflict(f"token {ident} is revoked already")
        conn.execute(update(tokens).where(tokens.c.id == found[0].id).values(revoked_at=now))
        add_audit(conn, now, "admin", "token-revoke", group, key=ident)
    return {"id": ident, "state": "revoked", "revoked_at": now}


# --- AddGroup -----------------------------------------------------------------------------------------


def create_group(provider, name: str, cidr: str, names: Iterable[str], token_ttl: float,
                 attributes: Mapping[str, str] | None = None, member_ttl: float | None = None,
                 owner: Mapping[str, str] | None = None, expires_at: float | None = None,
                 owners: Iterable[str] = (), **group_options) -> list[dict]:
    """AddGroup (seed 000, claim 1): the group and a one-time token per member, atomically.

    Returns the tokens, [{"member", "secret", "id"}] in the order given.
    """
    names = list(names)
    for n in names:
        mem.check_member_name(n)
    if len(set(names)) != len(names):
        raise InvalidInput("--members names a member twice")
    if len(names) > MAX_ADD_GROUP_MEMBERS:
        raise InvalidInput(f"at most {MAX_ADD_GROUP_MEMBERS} members per request")
    owner_fields = _stored(check_attributes(owner or {}, "--owner"))
    owner_names = check_owners(owners)
    if expires_at is not None and expires_at <= provider.clock():
        raise InvalidInput("--expires must be in the future")
    issued: list[dict] = []

    def with_tokens(conn, now) -> None:
        conn.execute(update(groups).where(groups.c.name == name).values(owner_fields=owner_fields,
                                                                       expires_at=expires_at, owners=owner_names))
        g = _group(conn, name)
        for n in names:
            secret, ident = _insert_token(conn, provider, g, n, token_ttl, None, attributes, member_ttl)
            issued.append({"member": n, "secret": secret, "id": ident})

    provider.create_group(name, cidr, then=with_tokens, **group_options)
    return issued


def check_owners(names: Iterable[str]) -> str | None:
    """The owners (the roles in the archive: who manages the group) as stored: a sorted JSON list."""
    names = list(names)
    for n in names:
        mem.check_member_name(n)
    if len(set(names)) != len(names):
        raise InvalidInput("--owners names an owner twice")
    return json.dumps(sorted(names)) if names else None


def set_group_metadata(provider, group: str, owner: Mapping[str, str] | None = None,
                       expires_at: float | None = None, clear_expiry: bool = False,
                       owners: Iterable[str] | None = None) -> dict:
    """Owner fields and owners (each replaced when given) and the group's expiry (set, or cleared);
    re-signs the archive. Who the owners are is signed; what they may do is the admin API's (issue 17 item 2)."""
    now = provider.clock()
    with provider.store.write() as conn:
        g = _group(conn, group)
        values = {}
        if owners is not None:
            values["owners"] = check_owners(owners)
        if owner is not None:
            values["owner_fields"] = _stored(check_attributes(owner, "--owner"))
        if clear_expiry:
            values["expires_at"] = None
        elif expires_at is not None:
            if expires_at <= now:
                raise InvalidInput("--expires must be in the future")
            values["expires_at"] = expires_at
        if not values:
            raise InvalidInput("nothing to set: give --owner, --owners, --expires or --no-expiry")
        conn.execute(update(groups).where(groups.c.id == g.id).values(**values))
        add_audit(conn, now, "admin", "group-set-meta", group, **values)
        _resign(conn, provider, group, now)
    return group_metadata(provider, group)


def group_metadata(provider, group: str) -> dict:
    with provider.store.read() as conn:
        g = _group(conn, group)
    return {"provider_id": provider.provider_id, "expires_at": g.expires_at,
            "owner": dict(stored_pairs(g.owner_fields)), "owners": list(stored_names(g.owners))}


def _refuse_expired_group(g, now: float) -> None:
    if g.expires_at is not None and g.expires_at <= now:
        raise Forbidden(f"group {g.name!r} expired")


# --- members ------------------------------------------------------------------------------------------


def member_entry(row) -> dict:
    """What ``member list/show --json`` adds for a member row."""
    return {"attributes": dict(stored_pairs(row.attributes)), "expires_at": row.expires_at}


def set_attributes(provider, group: str, name: str, changes: Mapping[str, str], unset: Iterable[str] = ()) -> dict:
    """Set (and drop) a member's attributes; the whole result must obey the grammar. Re-signs the archive."""
    unset = list(unset)
    if not changes and not unset:
        raise InvalidInput("nothing to change: give key=value pairs or --unset KEY")
    now = provider.clock()
    with provider.store.write() as conn:
        g, row = _member(conn, group, name)
        current = dict(stored_pairs(row.attributes))
        missing = [k for k in unset if k not in current]
        if missing:
            raise InvalidInput(f"member {name!r} has no attribute {missing[0]!r}")
        merged = check_attributes({**{k: v for k, v in current.items() if k not in unset}, **changes})
        conn.execute(update(members).where(members.c.id == row.id).values(attributes=_stored(merged)))
        add_audit(conn, now, "admin", "member-set-attr", group, member=name, attributes=merged)
        _resign(conn, provider, group, now)
    return {"name": name, "attributes": merged}


def extend(provider, group: str, name: str, seconds: float) -> dict:
    """Move a temporary member's deadline ``seconds`` later; re-signs the archive."""
    _bounded(seconds, MEMBER_TTL, "the extension")
    now = provider.clock()
    with provider.store.write() as conn:
        g, row = _member(conn, group, name)
        if row.expires_at is None:
            raise InvalidInput(f"member {name!r} is permanent: there is no deadline to extend")
        deadline = row.expires_at + seconds
        conn.execute(update(members).where(members.c.id == row.id).values(expires_at=deadline))
        add_audit(conn, now, "admin", "member-extend", group, member=name, expires_at=deadline, by=seconds)
        _resign(conn, provider, group, now)
    return {"name": name, "expires_at": deadline}


def bury(conn, g, name: str, now: float, reason: str) -> bool:
    """Delete member ``name`` and its capsules, keeping its key and ``reason`` for the 410; False if absent."""
    row = conn.execute(select(members).where(members.c.group == g.id, members.c.name == name)).first()
    if row is None:
        return False
    conn.execute(insert(removed).values(group=g.id, name=name, ed25519_public=row.ed25519_public,
                                        removed_at=now, reason=reason[:200]))
    conn.execute(delete(members).where(members.c.id == row.id))
    conn.execute(delete(capsules).where(capsules.c.group == g.id, capsules.c.member == name))
    return True


def removed_member(provider, group: str, name: str) -> tuple[ed25519.Ed25519PublicKey, str] | None:
    """The newest removed entry of ``name`` in ``group``: (its key, the reason), or None."""
    with provider.store.read() as conn:
        row = conn.execute(select(removed.c.ed25519_public, removed.c.reason)
                           .join(groups, groups.c.id == removed.c.group)
                           .where(groups.c.name == group, removed.c.name == name)
                           .order_by(removed.c.id.desc()).limit(1)).first()
    return None if row is None else (ed25519.Ed25519PublicKey.from_public_bytes(row.ed25519_public), row.reason)


class _Unchanged(Exception):
    """Internal: the deadline moved meanwhile (extended); rolls the expiry's transaction back."""


def expire_due(provider) -> dict[str, list[str]]:
    """Remove every member past its deadline: one new epoch per group; {group: [names]} removed."""
    now = provider.clock()
    with provider.store.read() as conn:
        due = list(conn.execute(select(groups.c.name, members.c.name.label("member"))
                                .join(groups, groups.c.id == members.c.group)
                                .where(members.c.expires_at.is_not(None), members.c.expires_at <= now)))
    done: dict[str, list[str]] = {}
    for group in sorted({r.name for r in due}):
        try:
            done[group] = provider.change_and_open(group, "expire", _expire_mutation(group))[0]
        except _Unchanged:
            continue
    return done


def _expire_mutation(group: str):
    def mutate(conn, g, now) -> list[str]:
        rows = conn.execute(select(members.c.name, members.c.expires_at).where(
            members.c.group == g.id, members.c.expires_at.is_not(None), members.c.expires_at <= now))
        gone = [(r.name, r.expires_at) for r in rows]
        if not gone:
            raise _Unchanged
        for name, deadline in gone:
            bury(conn, g, name, now, f"membership of {name!r} in {group!r} expired")
            add_audit(conn, now, "provider", "member-expire", group, member=name, expires_at=deadline,
                      late=round(now - deadline, 3))
        return [name for name, _ in gone]

    return mutate


def _resign(conn, provider, group: str, now: float) -> None:
    g = _group(conn, group)  # re-read: the caller's update is in this transaction
    if g.archive is not None:
        resign(conn, g, provider.signer, now)


def _group(conn, name: str):
    g = conn.execute(select(groups).where(groups.c.name == name)).first()
    if g is None:
        raise NotFound(f"no group {name!r}")
    return g


def _member(conn, group: str, name: str):
    g = _group(conn, group)
    row = conn.execute(select(members).where(members.c.group == g.id, members.c.name == name)).first()
    if row is None:
        raise NotFound(f"no member {name!r} in group {group!r}")
    return g, row

