"""The provider's HTTPS API (FastAPI on uvicorn + uvloop): routes only.

Member API, version 1 (the OpenAPI document at ``/openapi.json``, with ``/docs`` and ``/redoc``,
is served only with ``"api_docs": true`` in ``STATE/provider.json``; off by default)::

    POST /v1/enroll                                 join token secret + public keys + authenticator + proof
                                                    (Ed25519 signature over the other fields, see
                                                    grouptun.core.jointoken.enroll_message)
         -> 200 {"group", "member_name", "index", "addresses", "provider_keys": {"ed25519", "mldsa65"},
                 "archive": "<signed envelope (grouptun.core.envelope) of the archive, grouptun.core.archive>"}
    --- everything below is RFC 9421-signed (grouptun.control.reqsign), keyid = member name ---
    GET  /v1/groups/{group}/archive                 -> 200 signed envelope (application/json)
    GET  /v1/groups/{group}/watch?version=V&timeout=T
                                                    -> 200 envelope as soon as the version > V,
                                                       204 after T seconds (0..60) unchanged
         (archive and watch: gzip-encoded when Accept-Encoding allows it, one body per version,
          provider/encoding.py; the signed bytes inside are the same)
         (archive, watch and start take ?form=compact: the compact archive, PROTOCOL.md 2.2, what
          daemons ask for; absent or form=full: the full archive; anything else 422)
    GET  /v1/groups/{group}/members/{name}/kem      -> 200 the member's 1216-byte KEM public key
                                                       (application/octet-stream; the compact archive
                                                       signs only its SHA-256); 404 no such member
    POST /v1/groups/{group}/start {"challenge": hex(32 bytes)}
                                                    -> 200 envelope of a NEW epoch listing the challenge
                                                       and naming the member's instance (starts of
                                                       different members within START_WINDOW share one
                                                       epoch; two of one member never do)
                                                    -> 202 {"waiting": "members", "detail": ...} while the
                                                       group has < 2 members: the challenge is pending
                                                       (10 min) and the group's first epoch lists it
    GET  /v1/groups/{group}/epochs/{epoch}/capsule  -> 200 1168 bytes (application/octet-stream)
    POST /v1/groups/{group}/epochs/{epoch}/salt {"authenticator": base64(32 bytes)}
                                                    -> 200 1168 bytes; 403 "wrong credential"
         or {"credential": base64}                  a member not yet migrated (old daemons)
         or {"credential": base64, "new_authenticator": base64(32 bytes)}
                                                    migration: once the signature and the credential
                                                    check, the authenticator replaces it (a repeat
                                                    whose authenticator is already stored succeeds)
    POST /v1/groups/{group}/report {"endpoints": ["host:port"], "packets_sent": {"<epoch>": n}}
                                                    -> 204
    POST /v1/groups/{group}/rekey {"reason": str}   -> 202 {"opened": bool} (false: coalesced)
    /v1/groups/{group}/sealed...                    sealed data: provider/sealed_routes.py
    /v1/admin/...                                   the admin API (RFC 9421, keyid admin:<id> or
                                                    owner:<group>/<member>): provider/admin_routes.py
    GET  /v1/provider                               -> 200 {"provider_id", "provider_keys"} (public; PROTOCOL.md 8)
    /v1/links/...                                   a linked provider's requests, RFC 9421-signed with its own
                                                    key (keyid = its provider id): provider/link_routes.py; the
                                                    routes above also take them, with gt-member (PROTOCOL.md 8)
    /v1/groups/{alias}/...                          a group a linked provider owns (`link accept`): this
                                                    provider checks its member and relays (provider/remote.py)
    GET  /healthz                                   -> 200 {"ok": true} once the database answered a query
                                                    (the schema version); 503 {"ok": false, "detail": reason}

Refusals are 4xx with ``{"detail": reason}``: 400 a body that is not
I-JSON (RFC 7493: NaN, Infinity, 1e999999, integers beyond 2**53 - 1,
duplicate names, lone surrogates, nesting over 16 levels, not UTF-8 --
``provider/ijson.py``), 415 a body that is not JSON, 422 a field out of
its schema (``[{"type", "loc", "msg"}]``, never echoing the input), 401
signature (missing, stale, replayed, not valid -- unknown members answer
exactly like a bad signature), 410 a request correctly signed by a removed
or expired member's own key (the reason says which; ``provider/membership.py``), 403 token/credential, 404,
409, 413 body over 64 KiB, 429 rate limits (per address, per member; and
per member for start, report, rekey and salt, which cost epochs, signatures
or Argon2id work). Before any of this, the server's connection limits
(``provider/connlimits.py``) answer 431 (header too large, too many
fields), 408 (header or body not finished in time), 429 or 503
(connections per address, in total) and close.

``create_app(provider, settings)`` returns ``(asgi, app)``: ``asgi`` is what
uvicorn serves (the FastAPI ``app`` behind ``limits.Guard``: per-address
budget and body size). ``Settings(metrics=True)`` mounts the ops engineer's
Prometheus module (``provider/metrics.py``; see the marked hook below).

Layout: this module builds the app (settings, lifespan, metrics hook,
error handler); ``provider/routes.py`` holds the routes in small routers,
``provider/schemas.py`` the bodies, ``provider/hub.py`` the watch hub
(change notification), start batching and the time-threshold ticker.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass
from typing import Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response

from grouptun.errors import ConfigError
from provider.errors import ProviderFault
from provider.hub import Hub, StartBatcher, tick
from provider.limits import Guard, RateLimiter, nonces_for
from provider import links, remote
from provider.link_routes import link_router
from provider.route_requests import route_requests_router
from provider.routes import Context, Limits, archive_router, epochs_router, public_router, secrets_router
from provider.sealed import SealedData, SealedLimits
from provider.sealed_routes import part_body_limit, sealed_router
from provider.service import Provider

__all__ = ["MAX_BODY", "Settings", "create_app", "docs_from_config"]

MAX_BODY = 64 * 1024
DOCS_KEY = "api_docs"  # provider.json: serve /openapi.json, /docs and /redoc (false by default)


def docs_from_config(config: dict) -> bool:
    """``provider.json``'s ``api_docs`` (absent: false); ConfigError names the key when it is not a boolean."""
    value = config.get(DOCS_KEY, False)
    if not isinstance(value, bool):
        raise ConfigError(DOCS_KEY, f"must be true or false, not {value!r} (provider.json)")
    return value


@dataclass
class Settings:
    member_rate: float = 20.0
    member_burst: float = 60.0
    address_rate: float = 200.0
    address_burst: float = 400.0
    salt_rate: float = 2.0  # every epoch needs one salt per member; epochs come at most 4/s
    salt_burst: float = 10.0
    wrong_credential_rate: float = 0.1  # charged only when the credential is wrong
    wrong_credential_burst: float = 5.0
    rekey_rate: float = 1 / 30
    rekey_burst: float = 2.0
    start_rate: float = 1 / 10  # a start costs an epoch (HPKE per member): daemons start rarely
    start_burst: float = 3.0
    report_rate: float = 0.5  # an endpoint change re-signs the whole archive
    report_burst: float = 5.0
    refusal_audit_rate: float = 10.0
    sealed_part_rate: float = 100.0  # part uploads/downloads per member: a 1 GiB blob is 256 parts
    sealed: SealedLimits = SealedLimits()  # provider.json's sealed_* keys (provider/sealed.py)
    join_token: Callable[[str], str] | None = None  # secret -> printable token; mounts /v1/admin (admin_routes.py)
    metrics: bool = False
    docs: bool = False  # the interactive API documents tell a scanner every route and schema: opt in


def _lifespan(ctx: Context):
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        ctx.hub = hub = Hub(ctx.provider)
        ctx.starts = StartBatcher(ctx.provider, hub)
        await hub.refresh()
        tasks = [asyncio.create_task(hub.run()), asyncio.create_task(tick(ctx.provider, hub))]
        try:  # READY=1/STOPPING=1 come from provider.serving: the socket listens only after this
            yield
        finally:
            for task in tasks:
                task.cancel()

    return lifespan


def create_app(provider: Provider, settings: Settings | None = None) -> tuple[Guard, FastAPI]:
    """(ASGI app to serve -- the FastAPI app behind the size/address guard --, the FastAPI app)."""
    settings = settings or Settings()
    ctx = Context(provider, Limits.from_settings(settings, provider.store), nonces_for(provider.store))
    docs = {} if settings.docs else {"openapi_url": None, "docs_url": None, "redoc_url": None}
    app = FastAPI(title="grouptun provider", version="1", lifespan=_lifespan(ctx),
                  description="Member and admin API of the grouptun trust provider. See provider/app.py and "
                              "provider/admin_routes.py.", **docs)

    def release_watchers() -> None:  # provider.serving, at shutdown
        if ctx.hub is not None:
            ctx.hub.release()

    app.state.release_watchers = release_watchers

    # --- metrics hook ----------------------------------------------------------------
    # Optional Prometheus exporter owned by the ops engineer (provider/metrics.py), mounted
    # only with ``serve --metrics``: request middleware + GET /metrics (loopback clients),
    # epochs opened by this process, and the number of parked watchers.
    if settings.metrics:
        from provider.metrics import install_metrics  # noqa: PLC0415 -- optional module

        ctx.metrics = install_metrics(app)
        provider.on_epoch = ctx.metrics.epoch_created
        ctx.metrics.watch_links(lambda: links.list_links(provider))  # issue 19: both sides' link state

    @app.exception_handler(ProviderFault)
    async def _fault(request: Request, exc: ProviderFault):
        return JSONResponse({"detail": exc.reason}, status_code=exc.http_status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        # FastAPI's own handler echoes each error's input, which made any value JSON cannot carry
        # (a float NaN, a lone surrogate, bytes that are not UTF-8) a 500 with a traceback.
        detail = [{"type": str(e.get("type")), "loc": [p if isinstance(p, int) else str(p) for p in e.get("loc", ())],
                   "msg": str(e.get("msg"))} for e in exc.errors()[:16]]
        return Response(json.dumps({"detail": detail}).encode(), status_code=422, media_type="application/json")

    app.middleware("http")(remote.middleware(ctx))  # groups a linked provider owns: relayed (provider/remote.py)
    sealed = SealedData(provider.store, settings.sealed, provider.clock, provider.rand)
    provider.audit_pruner.also.append(sealed.prune)  # TTL expiry rides on the retention job
    for router in (public_router(ctx), archive_router(ctx), epochs_router(ctx), secrets_router(ctx),
                   sealed_router(ctx, sealed), route_requests_router(ctx),
                   link_router(ctx)):
        app.include_router(router)
    if settings.join_token is not None:
        from provider.admin_routes import admin_router  # noqa: PLC0415 -- the admin API (issue 17)

        app.include_router(admin_router(ctx, settings.join_token))
    return Guard(app, MAX_BODY, RateLimiter(settings.address_rate, settings.address_burst), part_body_limit), app
