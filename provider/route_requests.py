"""The member's side of subnet routes: ``POST /v1/groups/{group}/routes`` (signed, like ``report``).

Body ``{"prefixes": ["192.168.5.0/24", ...]}``: the prefixes the member routes
for (its ``[network] advertise_routes``). They replace its earlier requests
and are listed by ``grouptun-provider route list`` as ``requested``; nothing is
routed until the admin approves one (provider/routes_approved.py). 204 on
success; 400 naming the bad prefix; 404 for no such member; 429 beyond the
report rate (the same limiter, a key of its own).
"""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from grouptun.core.archivemember import MAX_ROUTES
from provider.errors import RateLimited
from provider.ijson import IJsonRoute


class RoutesRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prefixes: list[str] = Field(default_factory=list, max_length=MAX_ROUTES)


def route_requests_router(ctx) -> APIRouter:
    """``ctx``: the app's provider.routes.Context."""
    router, member = APIRouter(route_class=IJsonRoute), ctx.member_dependency()

    @router.post("/v1/groups/{group}/routes", status_code=204, response_class=Response)
    async def request_routes(body: RoutesRequest, who=Depends(member)):
        if not ctx.limits.report.allow(f"{who.group}/{who.name}/routes"):
            raise RateLimited("rate limit exceeded (routes)")
        await run_in_threadpool(ctx.provider.request_routes, who.group, who.name, body.prefixes)
        return Response(status_code=204)

    return router
