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

Not yet (issue 19 items 3-4): H's own enrollment of bob for a foreign group
(the join token that makes H call :func:`forward_member`), and the
forwarding of bob's later requests.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable

from sqlalchemy import select

from grouptun.core.archive import ProviderKeys, b64e, verify_archive
from grouptun.errors import EpochRejected
from provider import members as mem
from provider import membership
from provider.errors import Forbidden, LinkError, NotFound
from provider.links import link_row, serves_group
from provider.service import add_member_row
from provider.store import add_audit, links, tokens

MEMBER_HEADER = "gt-member"  # the member a provider speaks for; covered by its RFC 9421 signature
LINK_COVERED = (MEMBER_HEADER,)
Send = Callable[[str, str, dict, bytes], tuple[int, bytes]]  # (method, url, headers, body) -> (status, body)


@dataclass(frozen=True)
class Linked:
    """A request a linked provider signed: its link row and the member (its own name) it speaks for."""

    link: object
    member: str


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
        return addresses

    addresses, opened = provider._change_and_open(group, "enroll", mutate)
    return {"group": group, "member_name": name, "index": opened.indices[name], "addresses": addresses,
            "archive": opened.archive.decode("utf-8")}


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
    headers = {"content-type": "application/json", MEMBER_HEADER: mem.check_member_name(member)}
    provider.signer.sign_request("POST", url, headers, body, LINK_COVERED)
    status, answer = send("POST", url, headers, body)
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
