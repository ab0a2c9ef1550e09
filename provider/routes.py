"""The member API's routes, in small routers over one :class:`Context` (see ``provider/app.py``).

``create_app`` builds one Context per app (limiters, nonce cache, hub and
start batcher once the lifespan started) and includes the routers below;
every ``/v1/groups/...`` route depends on :meth:`Context.member`, the
RFC 9421 check of the request (``grouptun.control.reqsign``). Every router's
routes parse their body as I-JSON first (``provider/ijson.py``).
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric import ed25519
from fastapi import APIRouter, Depends, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse, Response
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool

from grouptun.control.reqsign import SignatureRefused, Verified, verify_headers
from provider import linked, membership
from provider import members as mem
from provider.encoding import ChunkedResponse, accepts_gzip
from provider.errors import (Forbidden, Gone, InvalidInput, NotFound, RateLimited, SchemaError, StateDirError,
                             Unauthorized)
from provider.ijson import IJsonRoute
from provider.limits import LocalBuckets, MemoryNonces, RateLimiter, SharedBuckets, SharedNonces, buckets_for
from provider.schemas import (ARCHIVE_MEDIA, GROUP_PATH, SEALED_MEDIA, EnrollAnswer, EnrollRequest, RekeyAnswer,
                              RekeyRequest, ReportRequest, SaltRequest, StartRequest, b64)
from provider.service import Provider

ARCHIVE_RESPONSES = {200: {"content": {ARCHIVE_MEDIA: {}}, "description": "signed archive envelope"},
                     404: {"description": "no such group, or no epoch yet"}}
SEALED_RESPONSES = {200: {"content": {SEALED_MEDIA: {}}, "description": "1168 bytes"}}
# ?form=compact: the compact archive (PROTOCOL.md 2.2), what member daemons ask for; absent: the full one, so
# older clients get what they always got. Anything else is a 422 (the query is part of the signed URL).
FORM = Query("full", pattern="^(full|compact)$")
VARY = {"Vary": "Accept-Encoding"}  # caches between members and the provider must not mix the two forms
log = logging.getLogger("provider.routes")
WAITING = {"waiting": "members", "detail": "the group has fewer than 2 members; the start challenge is "
           "pending and the group's first epoch will list it"}


def signed_url(request: Request) -> str:
    """The URL a request's signature covers: the raw path and query as sent (the host is not covered)."""
    raw_path = request.scope.get("raw_path") or request.url.path.encode()
    query = request.scope.get("query_string") or b""
    return "https://provider" + raw_path.decode("latin-1") + ("?" + query.decode("latin-1") if query else "")


@dataclass
class Member:
    group: str
    name: str
    via: linked.Linked | None = None  # the linked provider that forwarded the request (None: the member itself)


@dataclass
class Limits:
    """Per-key token buckets, one per kind of request (rates from ``app.Settings``). The costly kinds are
    shared by all replicas on PostgreSQL (``limits.SharedBuckets``); the request rate per member and the
    refusal-audit budget protect each process and stay its own."""

    member: RateLimiter
    salt: LocalBuckets | SharedBuckets
    wrong_credential: LocalBuckets | SharedBuckets
    rekey: LocalBuckets | SharedBuckets
    start: LocalBuckets | SharedBuckets
    report: LocalBuckets | SharedBuckets
    audit: RateLimiter
    parts: RateLimiter  # sealed-data part requests per member (a blob is many); the home's relay charges it too

    @classmethod
    def from_settings(cls, s, store) -> "Limits":
        def shared(name: str, rate: float, burst: float):
            return buckets_for(store, name, rate, burst)

        return cls(RateLimiter(s.member_rate, s.member_burst), shared("salt", s.salt_rate, s.salt_burst),
                   shared("wrong-credential", s.wrong_credential_rate, s.wrong_credential_burst),
                   shared("rekey", s.rekey_rate, s.rekey_burst), shared("start", s.start_rate, s.start_burst),
                   shared("report", s.report_rate, s.report_burst),
                   RateLimiter(s.refusal_audit_rate, s.refusal_audit_rate * 2),
                   RateLimiter(s.sealed_part_rate, s.sealed_part_rate * 2))


@dataclass
class Context:
    provider: Provider
    limits: Limits
    nonces: MemoryNonces | SharedNonces = field(default_factory=MemoryNonces)
    hub: object = None      # provider.hub.Hub, set by the lifespan
    starts: object = None   # provider.hub.StartBatcher, set by the lifespan
    metrics: object = None  # provider.metrics exporter when mounted

    def watching(self, group: str):
        return self.metrics.watching(group) if self.metrics is not None else contextlib.nullcontext()

    async def refuse_audit(self, actor: str, action: str, group: str | None, reason: str) -> None:
        if self.limits.audit.allow("all"):
            await run_in_threadpool(self.provider.refused, actor, action, group, reason)

    def _member_or_removed_key(self, group: str, key_id: str, gone: list[str]):
        if mem.foreign_link(key_id) is not None:  # a linked provider's member speaks only through its home
            return None
        key = self.provider.member_key(group, key_id)
        if key is None:
            found = membership.removed_member(self.provider, group, key_id)
            if found is not None:
                key, reason = found
                gone.append(reason)
        return key

    async def verified(self, request: Request, group: str | None, resolve) -> Verified:
        """The RFC 9421 check of ``request`` (``resolve(key_id)``: its public key or None); 401, audited, if not."""
        body = await request.body()
        client = request.client.host if request.client else "unknown"
        try:
            return await run_in_threadpool(verify_headers, request.method, signed_url(request), request.headers,
                                           body, resolve, time.time(), self.provider.started_at)
        except SignatureRefused as exc:
            await self.refuse_audit(f"address:{client}", request.url.path[:80], group, exc.reason)
            raise Unauthorized(exc.reason) from exc

    async def fresh(self, request: Request, group: str | None, scope: str, verified: Verified, actor: str) -> None:
        """401 "replayed signature" (audited as ``actor``) unless the nonce is new in ``scope`` (the cache
        is shared by the replicas on PostgreSQL)."""
        if not await self.nonces.fresh(scope, verified.nonce, time.time()):
            await self.refuse_audit(actor, request.url.path[:80], group, "replayed signature")
            raise Unauthorized("replayed signature")

    async def link_caller(self, request: Request, body: bytes) -> linked.Linked:
        """A linked provider's request (RFC 9421 with its key, keyid = its provider id, covering
        linked.LINK_COVERED), checked against the keys its link's ``link check`` stored; 401 audited."""
        client = request.client.host if request.client else "unknown"
        found: list = []

        def resolve(key_id: str):
            row = linked.link_by_id(self.provider, key_id)
            if row is None:
                return None
            found.append(row)
            return ed25519.Ed25519PublicKey.from_public_bytes(linked.link_keys(row).ed25519_public)

        try:
            verified = await run_in_threadpool(verify_headers, request.method, signed_url(request), request.headers,
                                               body, resolve, time.time(), self.provider.started_at,
                                               linked.LINK_COVERED)
        except SignatureRefused as exc:
            await self.refuse_audit(f"link-address:{client}", request.url.path[:80], None, exc.reason)
            raise Unauthorized(exc.reason) from exc
        link = found[0]
        await self.fresh(request, None, f"link/{link.name}", verified, f"link:{link.name}")
        credential = request.headers[linked.CREDENTIAL_HEADER]
        if credential not in linked.CREDENTIAL_VALUES:
            raise InvalidInput(f"header {linked.CREDENTIAL_HEADER} must be one of {linked.CREDENTIAL_VALUES}")
        return linked.Linked(link, request.headers[linked.MEMBER_HEADER], credential)

    async def forwarded_member(self, request: Request, group: str, body: bytes, budget) -> Member:
        """A member request its home provider forwarded: the member NAME@LINK, known here through that link."""
        caller = await self.link_caller(request, body)
        name = f"{caller.member}@{caller.link.name}"
        if not await run_in_threadpool(linked.is_forwarded_member, self.provider, group, name, caller.link):
            await self.refuse_audit(f"link:{caller.link.name}", request.url.path[:80], group,
                                    f"no member {name!r} through this link")
            raise Unauthorized("signature not valid")  # as for an unknown member
        if not budget.allow(f"{group}/{name}"):
            raise RateLimited("rate limit exceeded (member)")
        await run_in_threadpool(self.provider.audit_link_request, caller.link.name, group, name,
                                request.url.path[:80])
        return Member(group, name, caller)

    def member_dependency(self, limiter: RateLimiter | None = None):
        """The FastAPI dependency that authenticates a member request (signature, nonce, rate).

        ``limiter``: the per-member budget to charge (default ``limits.member``)."""
        budget = limiter or self.limits.member

        async def member(request: Request, group: str = GROUP_PATH) -> Member:
            if linked.MEMBER_HEADER in request.headers:  # a linked provider speaking for its member
                return await self.forwarded_member(request, group, await request.body(), budget)
            gone: list[str] = []  # the reason, when the key that verifies is a removed member's
            verified = await self.verified(request, group,
                                           lambda key_id: self._member_or_removed_key(group, key_id, gone))
            if gone:  # only the removed member itself can sign this: telling it leaks nothing
                raise Gone(gone[0])
            await self.fresh(request, group, f"{group}/{verified.key_id}", verified, f"member:{verified.key_id}")
            if not budget.allow(f"{group}/{verified.key_id}"):
                raise RateLimited("rate limit exceeded (member)")
            return Member(group, verified.key_id)

        return member


def public_router(ctx: Context) -> APIRouter:
    """Unsigned routes: health, the provider's public identity, and enrollment (the join token authenticates)."""
    router = APIRouter(route_class=IJsonRoute)

    @router.get("/healthz", responses={503: {"description": "the database did not answer"}})
    async def healthz():
        try:  # one indexed row: cheap, and it needs the database to answer and to be ours
            await run_in_threadpool(ctx.provider.store.check_schema)
        except (StateDirError, SQLAlchemyError) as exc:
            log.warning("healthz: %s", exc)
            # the schema's reason is safe to show; a driver's message may name hosts and paths
            detail = exc.reason if isinstance(exc, SchemaError) else "database unavailable (see the provider's log)"
            return JSONResponse({"ok": False, "detail": detail}, status_code=503)
        return {"ok": True}

    @router.get("/v1/provider")
    async def identity():
        """This provider's id and public signing keys: what a linked provider's ``link check`` fetches over the
        TLS it pinned and compares with the keys hash it pinned (PROTOCOL.md 8). Public, like the enroll answer."""
        keys = await run_in_threadpool(lambda: ctx.provider.signer.public)
        return {"provider_id": keys.fingerprint(), "provider_keys": keys.to_json()}

    @router.post("/v1/enroll", response_model=EnrollAnswer, response_model_exclude_none=True)
    async def enroll(body: EnrollRequest, request: Request):
        client = request.client.host if request.client else "unknown"
        answer = await run_in_threadpool(
            ctx.provider.enroll, body.secret, body.name, b64(body.ed25519_public, "ed25519_public"),
            b64(body.kem_public, "kem_public"), b64(body.authenticator, "authenticator"), body.endpoints,
            b64(body.proof, "proof"), client)
        ctx.hub.kick()
        return answer

    return router


def archive_router(ctx: Context) -> APIRouter:
    """The current archive, and the long-poll for the next one."""
    router, member = APIRouter(route_class=IJsonRoute), ctx.member_dependency()

    async def answer(request: Request, group: str, compact: bool, version: int, raw: bytes) -> Response:
        """The archive, gzip-encoded when the client accepts it (one body per version and form:
        provider/encoding.py)."""
        if not accepts_gzip(request.headers.get("accept-encoding")):
            return ChunkedResponse(raw, media_type=ARCHIVE_MEDIA, headers=VARY)
        key = (group, compact)
        body = ctx.hub.gzip.cached(key, version) or await run_in_threadpool(ctx.hub.gzip.body, key, version, raw)
        return ChunkedResponse(body, media_type=ARCHIVE_MEDIA, headers={**VARY, "Content-Encoding": "gzip"})

    @router.get("/v1/groups/{group}/archive", response_class=Response, responses=ARCHIVE_RESPONSES)
    async def archive(request: Request, form: str = FORM, who: Member = Depends(member)):
        # The version alone first: when the hub holds that version, its bytes are the archive (one
        # database history never signs two archives under one version), and the multi-MiB blob is
        # not read again for every member of a big group after a rekey (scripts/bench-provider).
        compact = form == "compact"
        version = await run_in_threadpool(ctx.provider.store.archive_version, who.group)
        held = ctx.hub.current(who.group, compact)
        if held is not None and held[0] == version:
            version, raw = held
        else:
            version, raw = await run_in_threadpool(ctx.provider.store.archive, who.group, compact)
        if raw is None:
            raise NotFound(f"group {who.group!r} has no epoch yet")
        return await answer(request, who.group, compact, version, raw)

    @router.get("/v1/groups/{group}/members/{name}/kem", response_class=Response,
                responses={200: {"content": {SEALED_MEDIA: {}}, "description": "1216 bytes"}})
    async def kem(name: str = PathParam(min_length=1, max_length=64), who: Member = Depends(member)):
        """A member's KEM public key, for sealing to it (the compact archive signs only its digest)."""
        return Response(await run_in_threadpool(ctx.provider.kem_public, who.group, name), media_type=SEALED_MEDIA)

    @router.get("/v1/groups/{group}/watch", response_class=Response,
                responses={**ARCHIVE_RESPONSES, 204: {"description": "unchanged until the timeout"}})
    async def watch(request: Request, version: int = Query(ge=0, le=2**62),
                    timeout: float = Query(25.0, ge=0, le=60), form: str = FORM, who: Member = Depends(member)):
        compact = form == "compact"
        with ctx.watching(who.group):
            changed = await ctx.hub.wait_change(who.group, version, timeout, compact)
        return (Response(status_code=204) if changed is None
                else await answer(request, who.group, compact, *changed))

    return router


def secrets_router(ctx: Context) -> APIRouter:
    """A member's capsule and (authenticator-gated) sealed salt of one epoch."""
    router, member = APIRouter(route_class=IJsonRoute), ctx.member_dependency()

    @router.get("/v1/groups/{group}/epochs/{epoch}/capsule", response_class=Response, responses=SEALED_RESPONSES)
    async def capsule(epoch: int = PathParam(ge=0, le=2**32 - 1), who: Member = Depends(member)):
        raw = await run_in_threadpool(ctx.provider.capsule, who.group, who.name, epoch)
        return Response(raw, media_type=SEALED_MEDIA)

    @router.post("/v1/groups/{group}/epochs/{epoch}/salt", response_class=Response, responses=SEALED_RESPONSES)
    async def salt(body: SaltRequest, epoch: int = PathParam(ge=0, le=2**32 - 1), who: Member = Depends(member)):
        key = f"{who.group}/{who.name}"
        if not await ctx.limits.salt.allow(key):
            raise RateLimited("rate limit exceeded (salt)")
        if not await ctx.limits.wrong_credential.peek(key):
            raise RateLimited("too many wrong credentials; wait")
        presented = (b64(body.authenticator, "authenticator") if body.authenticator is not None
                     else b64(body.credential, "credential"))
        registering = None if body.new_authenticator is None else b64(body.new_authenticator, "new_authenticator")
        try:
            raw = await run_in_threadpool(ctx.provider.salt, who.group, who.name, epoch, presented, registering)
        except Forbidden:
            await ctx.limits.wrong_credential.allow(key)
            raise
        return Response(raw, media_type=SEALED_MEDIA)

    return router


def epochs_router(ctx: Context) -> APIRouter:
    """Requests that may open epochs: start, report (packet threshold), rekey."""
    router, member = APIRouter(route_class=IJsonRoute), ctx.member_dependency()

    @router.post("/v1/groups/{group}/start", response_class=Response,
                 responses={**ARCHIVE_RESPONSES, 202: {"description": "waiting for a second member"}})
    async def start(body: StartRequest, form: str = FORM, who: Member = Depends(member)):
        if not await ctx.limits.start.allow(f"{who.group}/{who.name}"):
            raise RateLimited("rate limit exceeded (start)")
        opened = await ctx.starts.start(who.group, who.name, bytes.fromhex(body.challenge))
        raw = None if opened is None else opened.form(form == "compact")
        if raw is None:
            ctx.hub.kick()
            return JSONResponse(WAITING, status_code=202)
        return Response(raw, media_type=ARCHIVE_MEDIA)

    @router.post("/v1/groups/{group}/report", status_code=204, response_class=Response)
    async def report(body: ReportRequest, who: Member = Depends(member)):
        if not await ctx.limits.report.allow(f"{who.group}/{who.name}"):
            raise RateLimited("rate limit exceeded (report)")
        packets = {}
        for key, value in body.packets_sent.items():
            if not key.isdigit() or len(key) > 10 or not 0 <= value < 2**63:
                raise InvalidInput("packets_sent: keys are epoch numbers, values counts >= 0")
            packets[int(key)] = value
        await run_in_threadpool(ctx.provider.report, who.group, who.name, body.endpoints, packets)
        ctx.hub.kick()
        return Response(status_code=204)

    @router.post("/v1/groups/{group}/rekey", status_code=202, response_model=RekeyAnswer)
    async def rekey(body: RekeyRequest, who: Member = Depends(member)):
        if not await ctx.limits.rekey.allow(f"{who.group}/{who.name}"):
            raise RateLimited("rate limit exceeded (rekey)")
        opened = await run_in_threadpool(ctx.provider.member_rekey, who.group, who.name, body.reason)
        ctx.hub.kick()
        return {"opened": opened}

    return router
