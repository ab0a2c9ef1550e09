"""Routes only a linked provider calls (issue 19; PROTOCOL.md 8), authenticated by ``Context.link_caller``.

    POST /v1/links/groups/{group}/members  {"ed25519_public", "kem_public", "endpoints"}
         -> 200 {"group", "member_name": "NAME@LINK", "index", "addresses", "archive"}  (provider/linked.py)
    POST /v1/links/groups/{group}/members/remove  {}
         -> 200 {"group", "removed": "NAME@LINK", "epoch", "version"}: the member of gt-member, which came
            through the calling link, removed in a new epoch (provider/linkremove.py); 404 no such member,
            403 one that came through another link
    POST /v1/links/groups/{group}/epochs/{epoch}/salt  {}
         -> 200 the sealed salt (1168 bytes) of the member NAME@LINK, only with gt-credential: checked
            (403 otherwise): the home provider checked the member's credential, this provider has none

Every request is RFC 9421-signed (``grouptun.control.reqsign``) with the
calling provider's Ed25519 signing key, ``keyid`` = its provider id, and the
signature also covers ``gt-member`` (the member's name at the caller) and
``gt-credential`` (``checked`` or ``none``). The member API's other routes
(start, archive, watch, capsule, report) take the same forwarded requests
(``Context.member_dependency``). The key is the one this provider's ``link
check`` stored for the link pinning that id; an unknown id, an unchecked
link, another key, a stale or replayed signature (nonces per link) are 401
with the member API's fixed reasons and audited (actor ``link-address:IP``,
or ``link:NAME`` for a replay).
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi import Path as PathParam
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from provider import linked, linkremove
from provider.errors import Forbidden, RateLimited
from provider.ijson import IJsonRoute
from provider.routes import SEALED_RESPONSES, Context, Member
from provider.schemas import (GROUP_PATH, SEALED_MEDIA, ForwardedAnswer, ForwardedMember, ForwardedRemoval,
                              RemovalAnswer, b64)
from provider.tables import capsules


def link_router(ctx: Context) -> APIRouter:
    router = APIRouter(route_class=IJsonRoute)

    async def caller(request: Request) -> linked.Linked:
        return await ctx.link_caller(request, await request.body())

    async def member(request: Request, group: str = GROUP_PATH) -> Member:
        return await ctx.forwarded_member(request, group, await request.body(), ctx.limits.member)

    @router.post("/v1/links/groups/{group}/members", response_model=ForwardedAnswer)
    async def forwarded_member(body: ForwardedMember, group: str = GROUP_PATH, who: linked.Linked = Depends(caller)):
        answer = await run_in_threadpool(
            ctx.provider._audited, f"link:{who.link.name}", "link-enroll", group,
            lambda: linked.enroll_forwarded(ctx.provider, who, group, b64(body.ed25519_public, "ed25519_public"),
                                            b64(body.kem_public, "kem_public"), body.endpoints))
        ctx.hub.kick()
        return answer

    @router.post("/v1/links/groups/{group}/members/remove", response_model=RemovalAnswer)
    async def forwarded_removal(body: ForwardedRemoval, group: str = GROUP_PATH,
                                who: linked.Linked = Depends(caller)):
        answer = await run_in_threadpool(
            ctx.provider._audited, f"link:{who.link.name}", "link-member-remove", group,
            lambda: linkremove.remove_forwarded(ctx.provider, who, group))
        ctx.hub.kick()
        return answer

    @router.post("/v1/links/groups/{group}/epochs/{epoch}/salt", response_class=Response, responses=SEALED_RESPONSES)
    async def forwarded_salt(epoch: int = PathParam(ge=0, le=2**32 - 1), who: Member = Depends(member)):
        if who.via.credential != "checked":  # refused and audited, as a wrong credential is on the member route
            reason = "the home provider did not vouch for the credential check (gt-credential: checked)"
            await ctx.refuse_audit(f"link:{who.via.link.name}", "salt", who.group, reason)
            raise Forbidden(reason)
        if not await ctx.limits.salt.allow(f"{who.group}/{who.name}"):
            raise RateLimited("rate limit exceeded (salt)")
        raw = await run_in_threadpool(ctx.provider.capsule, who.group, who.name, epoch, capsules.c.sealed_salt)
        return Response(raw, media_type=SEALED_MEDIA)

    return router
