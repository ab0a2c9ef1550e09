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
  prints (``state``: ``unchecked`` until :func:`check_link` succeeded).
- :func:`check_link` fetches the partner's ``GET /v1/provider`` over TLS
  with exactly the pinned certificate, accepts its keys only when their
  fingerprint is the pinned keys hash, and stores them (``checked``); any
  failure is LinkError (exit 69) naming what did not match, audited, and
  changes nothing stored.
- :func:`issue_vouch` signs, with this provider's own keys, the voucher its
  members verify a group of the partner with (``grouptun.core.vouch``,
  PROTOCOL.md 8); only for a checked link. It expires ``vouch_ttl_days``
  (provider.json, default 30) after it was signed; members fetch a fresh
  one (``GET /v1/groups/ALIAS/vouch``, ``provider/remote.py``) before.

Each change is one audited transaction (``link-add``, ``link-remove``); a
refusal changes nothing. Nothing stored here is secret: the pins are
public fingerprints.
"""

from __future__ import annotations

import json
import re

from typing import Callable

from sqlalchemy import delete, insert, or_, select, update

from grouptun.core.envelope import ProviderKeys
from grouptun.core.jointoken import url_problem
from grouptun.core.vouch import Vouch
from grouptun.errors import EpochRejected, ProviderError
from provider import linkstate
from provider import members as mem
from provider.errors import Conflict, InvalidInput, LinkError, NotFound
from provider.retention import bounded_setting
from provider.store import add_audit
from provider.tables import link_removals, links, members

Fetch = Callable[[str, str], object]  # (url, pinned TLS fingerprint) -> the partner's /v1/provider JSON

LINK_NAME = re.compile(r"[a-z][a-z0-9-]{0,31}")
MAX_LINK_GROUPS = 64
VOUCH_TTL_DAYS = ("vouch_ttl_days", 1, 365, 30)  # provider.json: how long a voucher this provider signs is valid
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
            "groups": None if row.groups is None else json.loads(row.groups), "created_at": row.created_at,
            "state": "unchecked" if row.provider_keys is None else "checked", "checked_at": row.checked_at,
            **linkstate.shown(row)}


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
    """Drop the link; removals still queued over it (provider/linkremove.py) can no longer be delivered."""
    now = provider.clock()
    with provider.store.write() as conn:
        row = link_row(conn, name)
        shown = {**_shown(row), "pending_removals": pending_removals(conn, name)}
        conn.execute(delete(links).where(links.c.id == row.id))
        conn.execute(delete(link_removals).where(link_removals.c.link == name))
        add_audit(conn, now, "admin", "link-remove", None, link=name, provider=row.keys_hash,
                  dropped_removals=[r["member"] for r in shown["pending_removals"]])
    return shown


def list_links(provider) -> list[dict]:
    """``link list``: each link, its contact state and the removals the partner has not confirmed yet."""
    with provider.store.read() as conn:
        return [{**_shown(row), "pending_removals": pending_removals(conn, row.name)}
                for row in conn.execute(select(links).order_by(links.c.name))]


def pending_removals(conn, link: str) -> list[dict]:
    """Members removed here from a group the partner owns, not confirmed by it yet (provider/linkremove.py)."""
    rows = conn.execute(select(link_removals).where(link_removals.c.link == link).order_by(link_removals.c.id))
    return [{"group": r.alias, "member": r.name, "since": r.created_at, "attempts": r.attempts,
             "next_at": r.next_at, "last_error": r.last_error} for r in rows]



def link_row(conn, name: str):
    row = conn.execute(select(links).where(links.c.name == check_link_name(name))).first()
    if row is None:
        raise NotFound(f"no link named {name!r}")
    return row


def fetch_identity(url: str, tls_fingerprint: str) -> object:
    """The partner's ``GET /v1/provider`` over TLS with exactly the pinned certificate (LinkError if not)."""
    from grouptun.control.client import pinned_session, send_checked  # noqa: PLC0415 -- the CLI's path only

    try:
        with pinned_session(tls_fingerprint) as session:
            return send_checked(session, "GET", f"{url}/v1/provider", 10.0).json()
    except (ProviderError, ValueError) as exc:
        raise LinkError(f"{url}: {exc}") from exc


def _partner_keys(answer: object, row, pin: str) -> ProviderKeys:
    try:
        keys = ProviderKeys.from_json(answer.get("provider_keys") if isinstance(answer, dict) else None)
    except EpochRejected as exc:
        raise LinkError(f"link {row.name!r}: {row.url} answered no provider keys ({exc.detail})") from exc
    if keys.fingerprint() != pin:
        raise LinkError(f"link {row.name!r}: {row.url} holds other signing keys than --keys-hash pins "
                        f"({keys.fingerprint()[:16]}... is not {pin[:16]}...)")
    return keys


def check_link(provider, name: str, fetch: Fetch = fetch_identity, keys_hash: str | None = None) -> dict:
    """Fetch the partner's keys over the pinned TLS, accept them only under the pinned hash, store them.

    ``keys_hash`` (``link check NAME --keys-hash H``) re-pins a partner that rotated its signing keys: the
    fetched keys must then match ``H`` (which its admin hands over as at ``link add``), and replace the old
    pin; members renew their vouchers for the new keys (grouptun/control/vouchrenew.py)."""
    with provider.store.read() as conn:
        row = link_row(conn, name)
    old, pin = row.keys_hash, row.keys_hash if keys_hash is None else _pin(keys_hash, "--keys-hash")
    if pin == provider.provider_id:
        raise InvalidInput("--keys-hash is this provider's own id: a provider does not link to itself")
    try:
        answer = fetch(row.url, row.tls_fingerprint)
    except LinkError as exc:  # not reached (or not holding the pinned certificate): the link's state says so
        provider.refused("admin", "link-check", None, exc.reason)
        linkstate.failed(provider, name, exc.reason)
        raise
    try:
        keys = _partner_keys(answer, row, pin)
    except LinkError as exc:
        provider.refused("admin", "link-check", None, exc.reason)
        raise
    now = provider.clock()
    with provider.store.write() as conn:
        if pin != old and conn.execute(select(links.c.name).where(links.c.keys_hash == pin)).first() is not None:
            raise Conflict("another link pins that provider already")
        conn.execute(update(links).where(links.c.id == row.id).values(
            provider_keys=json.dumps(keys.to_json(), sort_keys=True), checked_at=now, keys_hash=pin))
        if pin != old:  # the members that came through the link name it by its id: they follow the new pin, or
            # `link remove`, forwarding and removals would no longer find them (the archive says so at its next version)
            conn.execute(update(members).where(members.c.home == old).values(home=pin))
        linkstate.record(conn, name, now)
        add_audit(conn, now, "admin", "link-check", None, link=name, provider=pin,
                  **({"repinned_from": old} if pin != old else {}))
        return _shown(link_row(conn, name))


def vouch_ttl_from_config(config: dict) -> float:
    """``provider.json``'s ``vouch_ttl_days`` (default 30) in seconds; ConfigError names the key."""
    return float(bounded_setting(config, VOUCH_TTL_DAYS, (int, float), "a number of days")) * 86400.0


def issue_vouch(provider, name: str) -> bytes:
    """The signed voucher for checked link ``name``'s keys (grouptun.core.vouch), by this provider's keys,
    valid for ``provider.vouch_ttl`` seconds (members renew it before: grouptun/control/vouchrenew.py)."""
    with provider.store.read() as conn:
        row = link_row(conn, name)
    if row.provider_keys is None:
        raise Conflict(f"link {name!r} is not checked yet: run `grouptun-provider link check {name}`")
    keys = ProviderKeys.from_json(json.loads(row.provider_keys))
    groups = None if row.groups is None else tuple(json.loads(row.groups))
    now = provider.clock()
    vouch = Vouch(provider.provider_id, keys, row.url, row.tls_fingerprint, now, groups, now + provider.vouch_ttl)
    return provider.signer.sign_vouch(vouch)


def serves_group(row, group: str) -> bool:
    """Whether link ``row`` carries members of ``group`` (no limit, or the group is named)."""
    return row.groups is None or group in json.loads(row.groups)
