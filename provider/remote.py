"""The home provider's side of its members in groups a linked provider owns (issue 19 items 3-4; PROTOCOL.md 8).

At the home provider H, for a group ``lan`` the owner O holds::

    grouptun-provider link accept owner lan [--as ALIAS]      accept O's group here, under ALIAS (default its
                                                              name; never a local group's name)
    grouptun-provider invite ALIAS bob                        a join token of H, handed to bob as usual

- :func:`accept_group` records the remote group (the link must be checked
  and serve it). Audited ``link-group-add``.
- :func:`invite` stores a one-time invitation (SHA-256 of its secret only).
- :func:`enroll` is bob's ``POST /v1/enroll`` with that token: the fields
  and proof are checked as for any enrollment, the invitation must be
  valid, then bob's public keys go to O (``linked.forward_member``), and
  only once O answered is the invitation used and bob recorded here (his
  keys, an Argon2id hash of his authenticator, his name at O,
  ``NAME@LINK``). The answer is O's, plus H's keys and the voucher
  (``links.issue_vouch``): bob verifies O's archive through it.
- :func:`handle` serves bob's later requests to ``/v1/groups/ALIAS/...``
  (``provider/app.py`` routes them here before the member API): his
  signature (keyid = his name at O) is checked against his keys here, a
  salt request's authenticator against his hash here, and the request is
  relayed to O (``linked.relay``), the answer back unchanged. Refusals are
  the member API's (401 audited, 403 wrong credential, 429); O not reached
  is 503 ``{"detail", "link": {"name", "contact": "unreachable",
  "down_since", "last_failure", ...}}`` (``provider/linkstate.py``).
- ``GET /v1/groups/ALIAS/vouch`` (signed by bob) is answered here, not
  relayed: a fresh voucher (``links.issue_vouch``), which bob's daemon
  fetches before his expires or when an archive fails the voucher check
  (O's keys rotated and ``link check`` stored the new ones).
- ``member remove ALIAS bob`` (``provider/linkremove.py``) drops his
  record here at once (nothing more is relayed for him) and tells O, or
  queues it until O confirms.

Limits: an invitation whose forward O refused stays unused; a failure after
O enrolled bob but before H recorded him leaves him enrolled at O only (O's
admin removes him, H's invites him again).
"""

from __future__ import annotations

import json
import re
import time
from typing import Callable
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric import ed25519
from fastapi import Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy import insert, select, update
from starlette.concurrency import run_in_threadpool

from grouptun.control.reqsign import SignatureRefused, verify_headers
from grouptun.errors import ProviderError
from provider import linked, links
from provider import members as mem
from provider.errors import (Conflict, Forbidden, Gone, InvalidInput, LinkError, LinkUnreachable, ProviderFault,
                             RateLimited, Unauthorized)
from provider.routes import signed_url
from provider.schemas import b64
from provider.sealed import PART_TAIL
from provider.store import add_audit
from provider.tables import groups, remote_groups, remote_invites, remote_members, remote_removed

GROUP_REQUEST = re.compile(r"/v1/groups/([a-z0-9][a-z0-9_-]{0,31})(/.*)")
SALT = re.compile(linked.SALT_TAIL)
VOUCH = "/vouch"
PART = re.compile(PART_TAIL)  # sealed-data parts: their own rate (sealed_routes.py)
KEM = re.compile(linked.KEM_TAIL)  # a member's KEM key: raw bytes, like a capsule
RELAY_TIMEOUT = 75.0  # a watch waits up to 60 s at the owner
ANSWER_TIMEOUT = 15.0  # every other request: the owner answers at once (a removal's timer must not wait 75 s)
MAX_ANSWER = 64 * 1024 * 1024  # far above the largest answer (a full archive of 5000 members is 8.8 MiB)


def https_send(row) -> linked.Send:
    """The transport to link ``row``'s provider: TLS with exactly its pinned certificate."""
    import requests  # noqa: PLC0415 -- only where links are used

    from grouptun.control.client import pinned_session  # noqa: PLC0415

    def send(method: str, url: str, headers: dict, body: bytes) -> tuple[int, bytes]:
        wait = RELAY_TIMEOUT if urlsplit(url).path.endswith("/watch") else ANSWER_TIMEOUT
        try:
            with pinned_session(row.tls_fingerprint) as session:
                answer = session.request(method, url, headers=headers, data=body, timeout=(3.0, wait), stream=True)
                content = _bounded(answer, row)
        except requests.RequestException as exc:  # unreachable, or not holding the pinned certificate
            raise LinkError(f"link {row.name!r}: {row.url} unreachable ({type(exc).__name__})") from exc
        return answer.status_code, content

    return send


def _bounded(answer, row) -> bytes:
    """The answer's body, decoded, refused past MAX_ANSWER (a linked provider is not trusted with our memory)."""
    chunks, total = [], 0
    for chunk in answer.iter_content(64 * 1024):
        total += len(chunk)
        if total > MAX_ANSWER:
            raise LinkError(f"link {row.name!r}: {row.url} answered more than {MAX_ANSWER} bytes")
        chunks.append(chunk)
    return b"".join(chunks)



def remote_group(provider, alias: str):
    with provider.store.read() as conn:
        return conn.execute(select(remote_groups).where(remote_groups.c.name == alias)).first()


def accept_group(provider, link: str, group: str, alias: str | None = None) -> dict:
    """Accept the owner's ``group`` over ``link`` under the local name ``alias`` (default: ``group``)."""
    alias = mem.check_group_name(alias or group)
    now = provider.clock()
    with provider.store.write() as conn:
        row = links.link_row(conn, link)
        if row.provider_keys is None or not links.serves_group(row, mem.check_group_name(group)):
            raise InvalidInput(f"link {link!r} must be checked and serve group {group!r}")
        if conn.execute(select(groups.c.id).where(groups.c.name == alias)).first() or \
                conn.execute(select(remote_groups.c.id).where(remote_groups.c.name == alias)).first():
            raise Conflict(f"a group named {alias!r} exists here already (--as another name)")
        conn.execute(insert(remote_groups).values(name=alias, link=link, remote_name=group, created_at=now))
        add_audit(conn, now, "admin", "link-group-add", alias, link=link, remote=group)
    return {"group": alias, "link": link, "remote_name": group}


def invite(provider, alias: str, name: str, ttl: float) -> str:
    """A one-time join token secret for ``name`` in remote group ``alias``."""
    mem.check_member_name(name)
    if mem.foreign_link(name) is not None or not 60.0 <= ttl <= 86400.0 * 30:
        raise InvalidInput("invite a local name (no @), for between 1m and 30d")
    secret, digest = mem.new_token_secret()
    now = provider.clock()
    with provider.store.write() as conn:
        g = conn.execute(select(remote_groups).where(remote_groups.c.name == alias)).one()
        conn.execute(insert(remote_invites).values(token_hash=digest, remote_group=g.id, name=name, created_at=now,
                                                   expires_at=now + ttl))
        add_audit(conn, now, "admin", "invite", alias, member=name, ttl=ttl, link=g.link)
    return secret


def _invitation(conn, digest: bytes, name: str, now: float):
    found = conn.execute(select(remote_invites, remote_groups.c.name.label("alias"), remote_groups.c.link,
                                remote_groups.c.remote_name).join(remote_groups)
                         .where(remote_invites.c.token_hash == digest)).first()
    if found is None or found.used_at is not None or found.expires_at <= now:
        raise Forbidden("join token unknown, used or expired")
    if found.name != name:
        raise Forbidden("name does not match the invitation")
    return found


def enroll(provider, secret, name, ed_public, kem_public, authenticator, endpoints, proof) -> dict | None:
    """Enrollment with a remote group's invitation (None: ``secret`` is no such invitation)."""
    digest = mem.token_hash(secret)
    with provider.store.read() as conn:
        if conn.execute(select(remote_invites.c.id).where(remote_invites.c.token_hash == digest)).first() is None:
            return None
    endpoints = mem.check_enrollment(secret, name, ed_public, kem_public, authenticator, endpoints, proof)
    with provider.store.read() as conn:
        inv = _invitation(conn, digest, name, provider.clock())
        link = links.link_row(conn, inv.link)
    answer = linked.forward_member(provider, inv.link, inv.remote_name, name, ed_public, kem_public, endpoints,
                                   provider.link_send(link))
    cred_hash = mem.hash_credential(authenticator)
    now = provider.clock()
    with provider.store.write() as conn:
        inv = _invitation(conn, digest, name, now)
        conn.execute(update(remote_invites).where(remote_invites.c.id == inv.id).values(used_at=now))
        conn.execute(insert(remote_members).values(
            remote_group=inv.remote_group, name=name, owner_name=answer["member_name"], ed25519_public=ed_public,
            kem_public=kem_public, credential_hash=cred_hash, enrolled_at=now))
        add_audit(conn, now, f"member:{name}", "enroll", inv.alias, link=inv.link, as_name=answer["member_name"])
    return {**answer, "group": inv.alias, "provider_keys": provider.signer.public.to_json(),
            "vouch": links.issue_vouch(provider, inv.link).decode()}


def _member(provider, g, key_id: str):
    with provider.store.read() as conn:
        return conn.execute(select(remote_members).where(remote_members.c.remote_group == g.id,
                                                         remote_members.c.owner_name == key_id)).first()


def _removed_key(provider, g, key_id: str, gone: list[str]):
    """The key of a member of ``g`` removed here (its newest removal's reason appended to ``gone``), or None."""
    with provider.store.read() as conn:
        row = conn.execute(select(remote_removed.c.ed25519_public, remote_removed.c.reason).where(
            remote_removed.c.remote_group == g.id, remote_removed.c.owner_name == key_id)
            .order_by(remote_removed.c.id.desc()).limit(1)).first()
    if row is None:
        return None
    gone.append(row.reason)
    return ed25519.Ed25519PublicKey.from_public_bytes(row.ed25519_public)


async def _authenticate(ctx, request: Request, g, body: bytes, rest: str):
    found: list = []
    gone: list[str] = []  # the reason, when the key that verifies is a removed member's

    def resolve(key_id: str):
        row = _member(ctx.provider, g, key_id)
        if row is None:
            return _removed_key(ctx.provider, g, key_id, gone)
        found.append(row)
        return ed25519.Ed25519PublicKey.from_public_bytes(row.ed25519_public)

    client = request.client.host if request.client else "unknown"
    try:
        verified = await run_in_threadpool(verify_headers, request.method, signed_url(request), request.headers,
                                           body, resolve, time.time(), ctx.provider.started_at)
    except SignatureRefused as exc:
        await ctx.refuse_audit(f"address:{client}", request.url.path[:80], g.name, exc.reason)
        raise Unauthorized(exc.reason) from exc
    if gone:  # only the removed member itself can sign this: telling it leaks nothing
        raise Gone(gone[0])
    if not await ctx.nonces.fresh(f"{g.name}/{verified.key_id}", verified.nonce, time.time()):
        await ctx.refuse_audit(f"member:{verified.key_id}", request.url.path[:80], g.name, "replayed signature")
        raise Unauthorized("replayed signature")
    budget = ctx.limits.parts if PART.fullmatch(rest) else ctx.limits.member
    if not budget.allow(f"{g.name}/{verified.key_id}"):
        raise RateLimited("rate limit exceeded (member)")
    return found[0]


def _credential(provider, row, body: bytes) -> None:
    """A salt request's authenticator against the member's hash here (403 wrong credential)."""
    try:
        presented = b64(json.loads(body)["authenticator"], "authenticator")
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidInput("a salt request needs {\"authenticator\": base64}") from exc
    with provider._argon_slots:  # Argon2id costs 19 MiB and ~60 ms: the member API's bound
        mem.check_credential(presented, row.credential_hash)


def fresh_vouch(provider, g, row) -> bytes:
    """A member's ``GET /v1/groups/ALIAS/vouch``: the voucher for the owner's keys as ``link check`` last stored
    them, valid for ``provider.vouch_ttl`` from now (audited ``vouch-issue``)."""
    signed = links.issue_vouch(provider, g.link)
    with provider.store.write() as conn:
        add_audit(conn, provider.clock(), f"member:{row.name}", "vouch-issue", g.name, link=g.link)
    return signed


async def handle(ctx, request: Request, g, rest: str) -> Response:
    """Serve a member's request to remote group ``g`` by relaying it to the owner (see the module docstring)."""
    body = await request.body()
    try:
        row = await _authenticate(ctx, request, g, body, rest)
        if rest == VOUCH:  # ours to answer, not the owner's: a fresh voucher for the owner's keys
            if request.method != "GET":
                raise InvalidInput("the voucher is fetched with GET")
            signed = await run_in_threadpool(fresh_vouch, ctx.provider, g, row)
            return Response(signed, media_type="application/json")
        credential = "none"
        if SALT.fullmatch(rest):
            await run_in_threadpool(_credential, ctx.provider, row, body)
            credential = "checked"
        query = request.scope.get("query_string", b"").decode("latin-1")
        path = f"/v1/groups/{g.remote_name}{rest}" + (f"?{query}" if query else "")
        with ctx.provider.store.read() as conn:
            link = links.link_row(conn, g.link)
        status, content = await run_in_threadpool(linked.relay, ctx.provider, g.link, request.method, path,
                                                  row.name, body, ctx.provider.link_send(link), credential)
    except LinkUnreachable as exc:  # the member keeps its epoch; its status shows the link's state (PROTOCOL.md 8)
        return JSONResponse({"detail": exc.reason, "link": exc.link}, status_code=exc.http_status)
    except ProviderFault as exc:
        return JSONResponse({"detail": exc.reason}, status_code=exc.http_status)
    except ProviderError as exc:
        return JSONResponse({"detail": str(exc)}, status_code=502)
    octets = (rest.endswith(("/capsule", "/salt")) or KEM.fullmatch(rest) is not None
              or (request.method == "GET" and PART.fullmatch(rest) is not None))
    media = "application/octet-stream" if octets and status == 200 else "application/json"
    return Response(content, status_code=status, media_type=None if status == 204 else media)


def middleware(ctx) -> Callable:
    """The HTTP middleware routing ``/v1/groups/ALIAS/...`` of a remote group to :func:`handle`."""

    async def relay_remote(request: Request, call_next):
        match = GROUP_REQUEST.fullmatch(request.url.path)
        g = None if match is None else await run_in_threadpool(remote_group, ctx.provider, match.group(1))
        if g is None:
            return await call_next(request)
        return await handle(ctx, request, g, match.group(2))

    return relay_remote
