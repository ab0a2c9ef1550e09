"""Members of linked providers (issue 19 item 3; PROTOCOL.md 8): both ends of forwarding a member's keys.

At the group owner's provider O:

- ``grouptun-provider invite GROUP bob@partner`` (``partner`` a link of O
  that serves GROUP) records the invitation: a one-time token named
  ``bob@partner`` whose secret nobody needs (it is never handed out: bob
  never talks to O). A local enrollment of a NAME@LINK name is refused.
- :func:`enroll_forwarded` takes bob's public keys from his home provider H
  (``POST /v1/links/groups/GROUP/members``, RFC 9421-signed with H's
  Ed25519 key, keyid = H's provider id, covering ``gt-member: bob``; checked
  by ``provider/link_routes.py`` against the keys O's ``link check``
  stored). It redeems the invitation, enrolls ``bob@partner`` with ``home``
  = H's id and no credential of its own (``members.credential_hash`` is
  ``LINK_MARKER``, which never matches: the credential is H's to check), and
  opens the epoch that lists him. Audited ``link-enroll`` with the actor
  ``link:NAME``.

At bob's home provider H:

- :func:`forward_member` signs and sends bob's public keys to O over the
  link (``send`` is the transport: the pinned HTTPS session in production,
  the owner's in-memory app in tests) and checks O's answer before it is
  believed: the archive verifies against O's checked keys and lists bob with
  ``home`` = H. Audited ``link-forward``.

- :func:`relay` forwards one of bob's later requests (start, archive,
  watch, report, capsule, sealed data; a salt to the link's salt route with
  ``gt-credential: checked`` and an empty body) re-signed with H's key, and
  returns O's answer unchanged (capsules and salts are sealed to bob's key).
  Audited ``link-relay``. O takes these through ``Context.forwarded_member``
  (``provider/routes.py``), audited ``link-request``.

H's own side of bob (its join token, its record of him, the routes that
check his signature and call :func:`forward_member` and :func:`relay`) is
``provider/remote.py``; removing him at H, ``provider/linkremove.py``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Callable

from sqlalchemy import delete, select

from grouptun.core.archive import verify_archive
from grouptun.core.envelope import ProviderKeys, b64e
from grouptun.errors import EpochRejected
from provider import members as mem
from provider import membership
from provider import links as link_records
from provider import linkstate
from provider.errors import Forbidden, InvalidInput, LinkError, LinkUnreachable, NotFound
from provider.links import link_row, serves_group
from provider.sealed import PART_TAIL
from provider.service import add_member_row
from provider.store import add_audit
from provider.tables import groups, links, members, remote_groups, tokens

MEMBER_HEADER = "gt-member"  # the member a provider speaks for; covered by its RFC 9421 signature
CREDENTIAL_HEADER = "gt-credential"  # "checked": the home checked the member's credential for this request
CREDENTIAL_VALUES = ("checked", "none")
LINK_COVERED = (MEMBER_HEADER, CREDENTIAL_HEADER)
GROUP_PREFIX = r"/v1/groups/([a-z0-9][a-z0-9_-]{0,31})"
SALT_TAIL = r"/epochs/([0-9]{1,10})/salt"  # below GROUP_PREFIX, as PART_TAIL
# kem: a member's key (checked by the member against the compact archive); the name's characters are those of a
# member name (members.py), so no segment can be '.', '..', or carry '/', '?', '#' or '%'
KEM_TAIL = r"/members/[A-Za-z0-9][A-Za-z0-9._@-]{0,95}/kem"
_SALT = re.compile(GROUP_PREFIX + SALT_TAIL)
_FORWARDED = re.compile(GROUP_PREFIX + r"(/archive|/watch|/start|/report|/epochs/[0-9]{1,10}/capsule"
                        r"|/sealed|/sealed/[0-9a-f]{32}|/sealed/[0-9a-f]{32}/commit|" + PART_TAIL + "|" + KEM_TAIL + ")")
_PART = re.compile(GROUP_PREFIX + PART_TAIL)  # a sealed-data part: octet-stream, not JSON
JSON, OCTETS = "application/json", "application/octet-stream"
Send = Callable[[str, str, dict, bytes], tuple[int, bytes]]  # (method, url, headers, body) -> (status, body)


@dataclass(frozen=True)
class Linked:
    """A request a linked provider signed: its link row and the member (its own name) it speaks for."""

    link: object
    member: str
    credential: str = "none"  # CREDENTIAL_HEADER's value


def link_by_id(provider, provider_id: str):
    """The checked link whose pinned provider id is ``provider_id`` (None: no such link, or not checked)."""
    with provider.store.read() as conn:
        row = conn.execute(select(links).where(links.c.keys_hash == provider_id)).first()
    return row if row is not None and row.provider_keys is not None else None


def link_keys(row) -> ProviderKeys:
    return ProviderKeys.from_json(json.loads(row.provider_keys))


def _invitation(conn, g, name: str):
    return conn.execute(select(tokens).where(tokens.c.group == g.id, tokens.c.name == name,
                                             tokens.c.max_uses.is_(None), tokens.c.used_at.is_(None))
                        .order_by(tokens.c.id.desc())).first()


def enroll_forwarded(provider, who: Linked, group: str, ed_public: bytes, kem_public: bytes,
                     endpoints: list[str]) -> dict:
    """Owner side: enroll ``who.member@LINK`` with the keys its home provider forwarded; opens an epoch."""
    name = mem.check_member_name(f"{mem.check_member_name(who.member)}@{who.link.name}")
    if mem.foreign_link(who.member) is not None:
        raise Forbidden(f"a linked provider speaks only for its own members, not {who.member!r}")
    if not serves_group(who.link, group):
        raise Forbidden(f"link {who.link.name!r} does not serve group {group!r}")
    mem.check_public_keys(ed_public, kem_public)
    checked = mem.check_endpoints(list(endpoints))

    def mutate(conn, g, now):
        tok = _invitation(conn, g, name)
        if tok is None:
            raise Forbidden(f"{name!r} is not invited to {group!r} (grouptun-provider invite {group} {name})")
        attributes, expires_at = membership.redeem(conn, tok, g, name, now)
        addresses = add_member_row(conn, g, now, name=name, ed25519_public=ed_public, kem_public=kem_public,
                                   credential_hash=mem.LINK_MARKER, endpoints=json.dumps(checked),
                                   attributes=attributes, expires_at=expires_at, home=who.link.keys_hash)
        add_audit(conn, now, f"link:{who.link.name}", "link-enroll", g.name, member=name, addresses=addresses)
        linkstate.record(conn, who.link.name, now)
        return addresses

    addresses, opened = provider._change_and_open(group, "enroll", mutate)
    return {"group": group, "member_name": name, "index": opened.indices[name], "addresses": addresses,
            "archive": opened.archive.decode("utf-8")}


def is_forwarded_member(provider, group: str, name: str, link) -> bool:
    """Whether ``name`` (NAME@LINK) is a member of ``group`` that came through ``link`` (its home)."""
    with provider.store.read() as conn:
        home = conn.execute(select(members.c.home).join(groups, groups.c.id == members.c.group).where(
            groups.c.name == group, members.c.name == name)).scalar()
    return home is not None and home == link.keys_hash


def _signed(provider, method: str, url: str, member: str, body: bytes, credential: str, media: str = JSON) -> dict:
    """The headers of a request this provider signs for its ``member`` (RFC 9421, keyid: its provider id)."""
    if credential not in CREDENTIAL_VALUES:
        raise ValueError(f"credential must be one of {CREDENTIAL_VALUES}")
    headers = {MEMBER_HEADER: mem.check_member_name(member), CREDENTIAL_HEADER: credential}
    if body:
        headers["content-type"] = media
    provider.signer.sign_request(method, url, headers, body, LINK_COVERED)
    return headers


def exchange(provider, row, send: Send, method: str, url: str, member: str, body: bytes,
             credential: str = "none", media: str = JSON) -> tuple[int, bytes]:
    """One signed link request to link ``row``'s provider for ``member``: its (status, body). Not reaching it is
    recorded on the link (provider/linkstate.py) and raised as LinkUnreachable carrying the link's state; any
    answer counts as reached (the caller records that in the transaction that audits it)."""
    headers = _signed(provider, method, url, member, body, credential, media)
    try:
        return send(method, url, headers, body)
    except LinkUnreachable:
        raise
    except LinkError as exc:
        contact = linkstate.failed(provider, row.name, exc.reason)
        raise LinkUnreachable(f"link {row.name!r} to the owner's provider is {linkstate.describe(contact)}",
                              contact) from exc


def relay(provider, link_name: str, method: str, path: str, member: str, body: bytes, send: Send,
          credential: str = "none") -> tuple[int, bytes]:
    """Home side: forward a request of ``member`` (the caller checked its signature, and with ``credential``
    "checked" its credential) to the owner over link ``link_name``, re-signed with this provider's key; the
    owner's (status, body), relayed as they are (capsules and salts are sealed to the member's key).

    ``path`` is the member API's (start, archive, watch, report, capsule, salt, sealed data, a member's KEM
    key); a salt goes to the link's salt route with an empty body: the member's authenticator stays here. Sealed
    data is relayed as it is (blobs are sealed to their recipients' keys: apps/sealed.py)."""
    with provider.store.read() as conn:
        row = link_row(conn, link_name)
    if row.provider_keys is None:
        raise NotFound(f"link {link_name!r} is not checked yet: run `grouptun-provider link check {link_name}`")
    route, query = path.partition("?")[0], path.partition("?")[2]
    salt = _SALT.fullmatch(route)
    if salt is not None:
        path, body = f"/v1/links/groups/{salt.group(1)}/epochs/{salt.group(2)}/salt", b"{}"
    elif _FORWARDED.fullmatch(route) is None or len(query) > 64:
        raise InvalidInput(f"{route!r} is not a request a provider forwards")
    url = row.url + path
    media = OCTETS if _PART.fullmatch(route) else JSON
    status, answer = exchange(provider, row, send, method, url, member, body, credential, media)
    now = provider.clock()
    with provider.store.write() as conn:
        add_audit(conn, now, f"link:{link_name}", "link-relay", route.split("/")[3], member=member,
                  request=route.split("/", 4)[4], status=status)
        linkstate.record(conn, link_name, now)
    return status, answer


def _refuse(provider, link: str, group: str, reason: str) -> LinkError:
    provider.refused(f"link:{link}", "link-forward", group, reason)
    return LinkError(reason)


def forward_member(provider, link_name: str, group: str, member: str, ed_public: bytes, kem_public: bytes,
                   endpoints: list[str], send: Send) -> dict:
    """Home side: send ``member``'s public keys to the owner over link ``link_name``; the owner's checked answer
    (``member_name`` is the owner's name for it, NAME@LINK as the owner calls this provider)."""
    with provider.store.read() as conn:
        row = link_row(conn, link_name)
    if row.provider_keys is None:
        raise NotFound(f"link {link_name!r} is not checked yet: run `grouptun-provider link check {link_name}`")
    body = json.dumps({"ed25519_public": b64e(ed_public), "kem_public": b64e(kem_public),
                       "endpoints": list(endpoints)}).encode()
    url = f"{row.url}/v1/links/groups/{mem.check_group_name(group)}/members"
    status, answer = exchange(provider, row, send, "POST", url, member, body)
    with provider.store.write() as conn:
        linkstate.record(conn, link_name, provider.clock())
    if status != 200:
        raise _refuse(provider, link_name, group, f"{row.url} refused the forwarded member ({status}): "
                      f"{answer[:200].decode('utf-8', 'replace')}")
    try:
        shown = json.loads(answer)
        archive = verify_archive(shown["archive"].encode(), link_keys(row))
    except (ValueError, KeyError, TypeError, AttributeError, EpochRejected) as exc:
        raise _refuse(provider, link_name, group, f"{row.url} answered no archive its keys signed") from exc
    entry = archive.member(shown.get("member_name", ""))
    if entry is None or entry.home != provider.provider_id or entry.ed25519_public != ed_public:
        raise _refuse(provider, link_name, group, f"{row.url}'s archive does not list {member!r} with its keys")
    with provider.store.write() as conn:
        add_audit(conn, provider.clock(), f"link:{link_name}", "link-forward", group, member=member,
                  as_name=entry.name, epoch=None if archive.epoch is None else archive.epoch.epoch)
    return shown


def remove_link(provider, name: str) -> dict:
    """``link remove``: the link, then every member that came through it (a new epoch per group without them,
    audited ``link-exclude``) and the partner's groups accepted over it (their members here with them)."""
    shown = link_records.remove_link(provider, name)
    with provider.store.read() as conn:
        found = conn.execute(select(groups.c.name, members.c.name.label("member")).join(
            groups, groups.c.id == members.c.group).where(members.c.home == shown["keys_hash"])).all()
    excluded: dict[str, list[str]] = {}
    for group, member in found:
        excluded.setdefault(group, []).append(member)
    for group, names in sorted(excluded.items()):
        def mutate(conn, g, now, names=names):
            for member in names:
                membership.bury(conn, g, member, now, f"{member!r} came through link {name!r}, which was removed")
            add_audit(conn, now, "admin", "link-exclude", g.name, link=name, members=names)

        provider._change_and_open(group, "remove", mutate)
    with provider.store.write() as conn:
        conn.execute(delete(remote_groups).where(remote_groups.c.link == name))
    return {**shown, "excluded": {g: sorted(n) for g, n in excluded.items()}}
