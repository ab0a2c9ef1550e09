"""Routes a linked provider calls (issue 19; PROTOCOL.md 8), authenticated by :meth:`LinkAuth.dependency`.

    POST /v1/links/groups/{group}/members  {"ed25519_public", "kem_public", "endpoints"}
         header gt-member: the member's name at its home provider
         -> 200 {"group", "member_name": "NAME@LINK", "index", "addresses", "archive"}  (provider/linked.py)

Every request is RFC 9421-signed (``grouptun.control.reqsign``) with the
calling provider's Ed25519 archive key, ``keyid`` = its provider id, and the
signature covers ``gt-member`` besides the member API's components. The key
is the one this provider's ``link check`` stored for the link pinning that
id; an unknown id, an unchecked link, another key, a stale or replayed
signature (nonces per link) are 401 with the member API's fixed reasons and
audited (actor ``link-address:IP``, or ``link:NAME`` for a replay).
"""

from __future__ import annotations

import time

from cryptography.hazmat.primitives.asymmetric import ed25519
from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool

from grouptun.control.reqsign import SignatureRefused, verify_headers
from provider import linked
from provider.errors import InvalidInput, RateLimited, Unauthorized
from provider.ijson import IJsonRoute
from provider.routes import Context, signed_url
from provider.schemas import GROUP_PATH, ForwardedAnswer, ForwardedMember, b64


def link_dependency(ctx: Context):
    """The FastAPI dependency authenticating a linked provider's request: a :class:`linked.Linked`."""

    async def linked_request(request: Request) -> linked.Linked:
        body = await request.body()
        client = request.client.host if request.client else "unknown"
        found: list = []

        def resolve(key_id: str):
            row = linked.link_by_id(ctx.provider, key_id)
            if row is None:
                return None
            found.append(row)
            return ed25519.Ed25519PublicKey.from_public_bytes(linked.link_keys(row).ed25519_public)

        try:
            verified = await run_in_threadpool(verify_headers, request.method, signed_url(request), request.headers,
                                               body, resolve, time.time(), ctx.provider.started_at,
                                               linked.LINK_COVERED)
        except SignatureRefused as exc:
            await ctx.refuse_audit(f"link-address:{client}", request.url.path[:80], None, exc.reason)
            raise Unauthorized(exc.reason) from exc
        link = found[0]
        if not await ctx.nonces.fresh(f"link/{link.name}", verified.nonce, time.time()):
            await ctx.refuse_audit(f"link:{link.name}", request.url.path[:80], None, "replayed signature")
            raise Unauthorized("replayed signature")
        if not ctx.limits.member.allow(f"link/{link.name}"):
            raise RateLimited("rate limit exceeded (link)")
        member = request.headers.get(linked.MEMBER_HEADER)
        if member is None:
            raise InvalidInput(f"header {linked.MEMBER_HEADER} missing")
        return linked.Linked(link, member)

    return linked_request


def link_router(ctx: Context) -> APIRouter:
    router, who = APIRouter(route_class=IJsonRoute), link_dependency(ctx)

    @router.post("/v1/links/groups/{group}/members", response_model=ForwardedAnswer)
    async def forwarded_member(body: ForwardedMember, group: str = GROUP_PATH, caller: linked.Linked = Depends(who)):
        answer = await run_in_threadpool(
            ctx.provider._audited, f"link:{caller.link.name}", "link-enroll", group,
            lambda: linked.enroll_forwarded(ctx.provider, caller, group, b64(body.ed25519_public, "ed25519_public"),
                                            b64(body.kem_public, "kem_public"), body.endpoints))
        ctx.hub.kick()
        return answer

    return router
