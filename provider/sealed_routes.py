"""The sealed-data routes (provider/sealed.py holds the rules); every one RFC 9421-signed::

    POST   /v1/groups/{group}/sealed {"size": n, "recipients": [names], "ttl": seconds}
                                                 -> 201 {"data_id", "group_id", "part_size", "parts"};
                                                    413 over sealed_max_blob_bytes, 409 over the group quota
    PUT    /v1/groups/{group}/sealed/{id}/parts/{n}   body: the part (application/octet-stream,
                                                      PART_SIZE bytes, the last part the rest) -> 204
    POST   /v1/groups/{group}/sealed/{id}/commit {}   -> 200 entry; 409 while parts are missing
    GET    /v1/groups/{group}/sealed                  -> 200 {"sealed": [entry]} (sent by or to the caller)
    GET    /v1/groups/{group}/sealed/{id}             -> 200 entry {"data_id", "sender", "recipients", "size",
                                                         "parts", "part_size", "created_at", "expires_at"}
    GET    /v1/groups/{group}/sealed/{id}/parts/{n}   -> 200 the part (recipients only; 403 otherwise)
    DELETE /v1/groups/{group}/sealed/{id}             -> 204 (the sender only)

A DATA-ID of another group is answered 404 like an unknown one; a removed
member's requests fail their signature check (401) like any stranger's.
Part requests have their own rate limit (``part_rate``), since one blob is
many of them, and their own body limit in the guard (PART_SIZE).
"""

from __future__ import annotations

import re

from fastapi import APIRouter, Depends, Request
from fastapi import Path as PathParam
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from provider.ijson import IJsonRoute
from provider.routes import Context, Member
from provider.schemas import SEALED_MEDIA
from provider.sealed import PART_SIZE, PART_TAIL, SealedData, parse_data_id

DATA_ID = PathParam(pattern=r"^[0-9a-f]{32}$", min_length=32, max_length=32)
PART = PathParam(ge=0, le=2**20)
PART_PATH = re.compile(r"/v1/groups/[^/]+" + PART_TAIL)
PART_BODY = PART_SIZE + 1024  # the guard's limit for a part upload; the route checks the exact length


class ReserveRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    size: int = Field(ge=1, le=2**53 - 1)
    recipients: list[str] = Field(min_length=1, max_length=1024)
    ttl: float = Field(ge=0, le=2**31)


class CommitRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")


def part_body_limit(scope: dict) -> int | None:
    """The guard's body limit for a part upload (None: the default limit applies)."""
    return PART_BODY if scope.get("method") == "PUT" and PART_PATH.fullmatch(scope.get("path", "")) else None


def sealed_router(ctx: Context, data: SealedData) -> APIRouter:
    """Part requests are charged to their own budget, ``ctx.limits.parts`` (the home provider's relay too)."""
    router, member = APIRouter(route_class=IJsonRoute), ctx.member_dependency()
    part_member = ctx.member_dependency(ctx.limits.parts)
    base = "/v1/groups/{group}/sealed"

    @router.post(base, status_code=201)
    async def reserve(body: ReserveRequest, who: Member = Depends(member)):
        return await run_in_threadpool(data.reserve, who.group, who.name, body.size, body.recipients, body.ttl)

    @router.put(base + "/{data_id}/parts/{part}", status_code=204, response_class=Response)
    async def put_part(request: Request, data_id: str = DATA_ID, part: int = PART,
                       who: Member = Depends(part_member)):
        raw = await request.body()  # the guard bounded it; the signature covered its digest
        await run_in_threadpool(data.put_part, who.group, who.name, parse_data_id(data_id), part, raw)
        return Response(status_code=204)

    @router.post(base + "/{data_id}/commit")
    async def commit(body: CommitRequest, data_id: str = DATA_ID, who: Member = Depends(member)):
        return await run_in_threadpool(data.commit, who.group, who.name, parse_data_id(data_id))

    @router.get(base)
    async def listing(who: Member = Depends(member)):
        return {"sealed": await run_in_threadpool(data.listing, who.group, who.name)}

    @router.get(base + "/{data_id}")
    async def describe(data_id: str = DATA_ID, who: Member = Depends(member)):
        return await run_in_threadpool(data.describe, who.group, who.name, parse_data_id(data_id))

    @router.get(base + "/{data_id}/parts/{part}", response_class=Response,
                responses={200: {"content": {SEALED_MEDIA: {}}, "description": "one part of the blob"}})
    async def get_part(data_id: str = DATA_ID, part: int = PART, who: Member = Depends(part_member)):
        raw = await run_in_threadpool(data.get_part, who.group, who.name, parse_data_id(data_id), part)
        return Response(raw, media_type=SEALED_MEDIA)

    @router.delete(base + "/{data_id}", status_code=204, response_class=Response)
    async def remove(data_id: str = DATA_ID, who: Member = Depends(member)):
        await run_in_threadpool(data.delete, who.group, who.name, parse_data_id(data_id))
        return Response(status_code=204)

    return router
