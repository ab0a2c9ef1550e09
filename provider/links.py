"""Links to other trust providers (issue 19 item 1): what this provider's admin pinned of a partner.

A link names a partner provider and pins it the way a join token pins a
provider for a member: the SHA-256 of its TLS certificate (DER) and the
fingerprint of its two signing keys (``ProviderKeys.fingerprint()``, which
is also the partner's provider id, the ``provider_id`` of its archives).
Each side's admin adds the link to the other (``grouptun-provider link
self`` prints what to give the other admin), so each pins the other and
neither takes anything the other says about itself on trust.

- :func:`add_link` checks every field (name ``[a-z][a-z0-9-]{0,31}``, the
  ``@partner`` of a foreign member's name; an https URL; 64 hex digits for
  both pins, colons and upper case as ``openssl x509 -fingerprint -sha256``
  prints them accepted; ``groups`` 1..64 group names) and refuses a second
  link of the same name or to the same provider, and a link to this
  provider itself. Without ``groups`` the link serves any group; with them
  only those (the owner's groups the partner's members may join, or the
  foreign groups this provider's members may join through it).
- :func:`remove_link` drops it; :func:`list_links` is what ``link list``
  prints.

Each change is one audited transaction (``link-add``, ``link-remove``); a
refusal changes nothing. Nothing stored here is secret: the pins are
public fingerprints.
"""

from __future__ import annotations

import json
import re

from sqlalchemy import delete, insert, or_, select

from grouptun.core.jointoken import url_problem
from provider import members as mem
from provider.errors import Conflict, InvalidInput, NotFound
from provider.store import add_audit, links

LINK_NAME = re.compile(r"[a-z][a-z0-9-]{0,31}")
MAX_LINK_GROUPS = 64
_HEX64 = re.compile(r"[0-9a-f]{64}")


def check_link_name(name: str) -> str:
    if not isinstance(name, str) or not LINK_NAME.fullmatch(name):
        raise InvalidInput(f"link name {name!r} must match {LINK_NAME.pattern}")
    return name


def _pin(value: str, what: str) -> str:
    """A SHA-256 pin as 64 lowercase hex digits (``AB:CD:...`` from openssl accepted)."""
    text = value.strip().replace(":", "").lower() if isinstance(value, str) else ""
    if not _HEX64.fullmatch(text):
        raise InvalidInput(f"{what} must be a SHA-256 of 64 hex digits, got {value!r}")
    return text


def _groups(names: list[str] | None) -> list[str] | None:
    if names is None:
        return None
    unique = sorted({mem.check_group_name(n) for n in names})
    if not 1 <= len(unique) <= MAX_LINK_GROUPS:
        raise InvalidInput(f"--groups must name 1..{MAX_LINK_GROUPS} groups")
    return unique


def _shown(row) -> dict:
    return {"name": row.name, "url": row.url, "tls_fingerprint": row.tls_fingerprint, "keys_hash": row.keys_hash,
            "groups": None if row.groups is None else json.loads(row.groups), "created_at": row.created_at}


def add_link(provider, name: str, url: str, fingerprint: str, keys_hash: str, groups: list[str] | None = None) -> dict:
    check_link_name(name)
    problem = url_problem(url)
    if problem is not None:
        raise InvalidInput(f"--url: {problem}")
    url = url.rstrip("/")
    fingerprint, keys_hash = _pin(fingerprint, "--fingerprint"), _pin(keys_hash, "--keys-hash")
    limited = _groups(groups)
    if keys_hash == provider.provider_id:
        raise InvalidInput("--keys-hash is this provider's own id: a provider does not link to itself")
    now = provider.clock()
    with provider.store.write() as conn:
        clash = conn.execute(select(links.c.name, links.c.keys_hash).where(
            or_(links.c.name == name, links.c.keys_hash == keys_hash))).first()
        if clash is not None:
            what = f"a link named {name!r}" if clash.name == name else f"link {clash.name!r} to that provider"
            raise Conflict(f"there is {what} already (link remove it first)")
        conn.execute(insert(links).values(name=name, url=url, tls_fingerprint=fingerprint, keys_hash=keys_hash,
                                          groups=None if limited is None else json.dumps(limited),
                                          created_at=now))
        add_audit(conn, now, "admin", "link-add", None, link=name, url=url, provider=keys_hash, groups=limited)
        row = conn.execute(select(links).where(links.c.name == name)).one()
    return _shown(row)


def remove_link(provider, name: str) -> dict:
    check_link_name(name)
    now = provider.clock()
    with provider.store.write() as conn:
        row = conn.execute(select(links).where(links.c.name == name)).first()
        if row is None:
            raise NotFound(f"no link named {name!r}")
        conn.execute(delete(links).where(links.c.id == row.id))
        add_audit(conn, now, "admin", "link-remove", None, link=name, provider=row.keys_hash)
    return _shown(row)


def list_links(provider) -> list[dict]:
    with provider.store.read() as conn:
        return [_shown(row) for row in conn.execute(select(links).order_by(links.c.name))]

