"""The provider's HTTPS API (FastAPI on uvicorn + uvloop): routes only.

Member API, version 1 (the OpenAPI document is served at ``/openapi.json``)::

    POST /v1/enroll                                 join token secret + public keys + credential
         -> 200 {"group", "member_name", "index", "addresses", "provider_keys": {"ed25519", "mldsa65"},
                 "archive": "<signed envelope, grouptun.core.archive>"}
    --- everything below is RFC 9421-signed (grouptun.reqsign), keyid = member name ---
    GET  /v1/groups/{group}/archive                 -> 200 signed envelope (application/json)
    GET  /v1/groups/{group}/watch?version=V&timeout=T
                                                    -> 200 envelope as soon as the version > V,
                                                       204 after T seconds (0..60) unchanged
    POST /v1/groups/{group}/start {"challenge": hex(32 bytes)}
                                                    -> 200 envelope of a NEW epoch listing the challenge
                                                       (starts within START_WINDOW share one epoch)
    GET  /v1/groups/{group}/epochs/{epoch}/capsule  -> 200 1168 bytes (application/octet-stream)
    POST /v1/groups/{group}/epochs/{epoch}/salt {"credential": base64}
                                                    -> 200 1168 bytes; 403 "wrong credential"
    POST /v1/groups/{group}/report {"endpoints": ["host:port"], "packets_sent": {"<epoch>": n}}
                                                    -> 204
    POST /v1/groups/{group}/rekey {"reason": str}   -> 202 {"opened": bool} (false: coalesced)
    GET  /healthz                                   -> 200 {"ok": true}

Refusals are 4xx with ``{"detail": reason}``: 400/422 malformed, 401
signature (missing, stale, replayed, not valid -- unknown and removed
members answer exactly like a bad signature), 403 token/credential, 404,
409, 413 body over 64 KiB, 429 rate limits (per address, per member; and
per member for start, report, rekey and salt, which cost epochs, signatures
or Argon2id work).

``create_app(provider, settings)`` returns ``(asgi, app)``: ``asgi`` is what
uvicorn serves (the FastAPI ``app`` behind ``limits.Guard``: per-address
budget and body size). ``Settings(metrics=True)`` mounts the ops engineer's
Prometheus module (``provider/metrics.py``; see the marked hook below).

Change notification: a poller reads every group's version from the DB
every ``POLL_INTERVAL`` (so admin CLI changes reach watchers within ~0.2 s)
and at once after this process's own writes; watchers wait on one asyncio
Event per group (no thread per watcher).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import time
from dataclasses import dataclass, field

from fastapi import Depends, FastAPI, Path, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from grouptun.reqsign import NonceCache, SignatureRefused, verify_headers
from grouptun.sdnotify import Notifier
from provider.errors import Forbidden, InvalidInput, ProviderFault, RateLimited, Unauthorized
from provider.limits import Guard, RateLimiter
from provider.service import Provider

log = logging.getLogger("grouptun.provider")

MAX_BODY = 64 * 1024
POLL_INTERVAL = 0.2
START_WINDOW = 0.2
TICK_INTERVAL = 1.0
MAX_CHALLENGES_PER_EPOCH = 256
GROUP_PATH = Path(pattern=r"^[a-z0-9][a-z0-9_-]{0,31}$", max_length=32)
ARCHIVE_MEDIA = "application/json"
SEALED_MEDIA = "application/octet-stream"
B64 = r"^[A-Za-z0-9+/]*={0,2}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EnrollRequest(_Strict):
    secret: str = Field(min_length=43, max_length=43, pattern=r"^[A-Za-z0-9_-]+$")
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    ed25519_public: str = Field(min_length=44, max_length=44, pattern=B64)
    kem_public: str = Field(min_length=1624, max_length=1624, pattern=B64)
    credential: str = Field(min_length=12, max_length=1368, pattern=B64)
    endpoints: list[str] = Field(default_factory=list, max_length=8)


class ProviderKeysModel(BaseModel):
    ed25519: str
    mldsa65: str


class EnrollAnswer(BaseModel):
    group: str
    member_name: str
    index: int
    addresses: list[str]
    provider_keys: ProviderKeysModel
    archive: str


class StartRequest(_Strict):
    challenge: str = Field(pattern=r"^[0-9a-f]{64}$")


class SaltRequest(_Strict):
    credential: str = Field(min_length=12, max_length=1368, pattern=B64)


class ReportRequest(_Strict):
    endpoints: list[str] = Field(default_factory=list, max_length=8)
    packets_sent: dict[str, int] = Field(default_factory=dict, max_length=4)


class RekeyRequest(_Strict):
    reason: str = Field(default="member", max_length=64, pattern=r"^[A-Za-z0-9:_. -]*$")


class RekeyAnswer(BaseModel):
    opened: bool


def _b64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInput(f"{what}: not base64") from exc


@dataclass
class _GroupState:
    version: int = 0
    archive: bytes | None = None
    event: asyncio.Event = field(default_factory=asyncio.Event)


class Hub:
    """Per-group archive cache and change events, fed by polling the DB."""

    def __init__(self, provider: Provider) -> None:
        self.provider = provider
        self.groups: dict[str, _GroupState] = {}
        self._kick = asyncio.Event()

    def kick(self) -> None:
        self._kick.set()

    async def refresh(self) -> None:
        versions = await run_in_threadpool(self.provider.store.group_versions)
        for name, version in versions.items():
            state = self.groups.setdefault(name, _GroupState())
            if state.version != version:
                state.version, state.archive = await run_in_threadpool(self.provider.store.archive, name)
                state.event.set()
                state.event = asyncio.Event()

    async def run(self) -> None:
        while True:
            self._kick.clear()
            try:
                await self.refresh()
            except Exception:  # noqa: BLE001 -- keep notifying; the DB may be briefly locked
                log.exception("change poll failed")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._kick.wait(), POLL_INTERVAL)

    async def wait_change(self, group: str, version: int, timeout: float) -> bytes | None:
        deadline = time.monotonic() + timeout
        while True:
            state = self.groups.setdefault(group, _GroupState())
            # Only a newer version answers: a member that saw a version this database does
            # not have (restored from an older backup) waits for the next change.
            if state.version > version and state.archive is not None:
                return state.archive
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(state.event.wait(), remaining)


class StartBatcher:
    """Starts within START_WINDOW of the first one share one new epoch."""

    def __init__(self, provider: Provider, hub: Hub) -> None:
        self.provider, self.hub = provider, hub
        self.pending: dict[str, tuple[list[bytes], asyncio.Future]] = {}

    async def start(self, group: str, challenge: bytes) -> bytes:
        batch = self.pending.get(group)
        if batch is None or len(batch[0]) >= MAX_CHALLENGES_PER_EPOCH:
            batch = ([], asyncio.get_running_loop().create_future())
            self.pending[group] = batch
            asyncio.get_running_loop().call_later(START_WINDOW, lambda: asyncio.ensure_future(self._run(group, batch)))
        if challenge not in batch[0]:
            batch[0].append(challenge)
        return await asyncio.shield(batch[1])

    async def _run(self, group: str, batch) -> None:
        if self.pending.get(group) is batch:
            del self.pending[group]
        challenges, future = batch
        try:
            opened = await run_in_threadpool(self.provider.open_epoch, group, "start", "members", tuple(challenges))
            future.set_result(opened.archive)
        except Exception as exc:  # noqa: BLE001 -- handed to every waiter
            future.set_exception(exc)
            future.add_done_callback(lambda f: f.exception())  # waiters may all be gone
        self.hub.kick()


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
    metrics: bool = False


@dataclass
class Member:
    group: str
    name: str


def create_app(provider: Provider, settings: Settings | None = None) -> tuple[Guard, FastAPI]:
    """(ASGI app to serve -- the FastAPI app behind the size/address guard --, the FastAPI app)."""
    settings = settings or Settings()
    nonces = NonceCache()
    member_limits = RateLimiter(settings.member_rate, settings.member_burst)
    salt_limits = RateLimiter(settings.salt_rate, settings.salt_burst)
    wrong_credential = RateLimiter(settings.wrong_credential_rate, settings.wrong_credential_burst)
    rekey_limits = RateLimiter(settings.rekey_rate, settings.rekey_burst)
    start_limits = RateLimiter(settings.start_rate, settings.start_burst)
    report_limits = RateLimiter(settings.report_rate, settings.report_burst)
    audit_budget = RateLimiter(settings.refusal_audit_rate, settings.refusal_audit_rate * 2)
    holder: dict = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        hub = Hub(provider)
        holder["hub"], holder["starts"] = hub, StartBatcher(provider, hub)
        await hub.refresh()
        tasks = [asyncio.create_task(hub.run()), asyncio.create_task(_tick(provider, hub))]
        notifier = Notifier.from_env()  # systemd Type=notify; a no-op without NOTIFY_SOCKET
        notifier.ready("serving")
        try:
            yield
        finally:
            notifier.stopping()
            for task in tasks:
                task.cancel()

    app = FastAPI(title="grouptun provider", version="1", lifespan=lifespan,
                  description="Member API of the grouptun trust provider. See provider/app.py.")

    # --- metrics hook ----------------------------------------------------------------
    # Optional Prometheus exporter owned by the ops engineer (provider/metrics.py), mounted
    # only with ``serve --metrics``: request middleware + GET /metrics (loopback clients),
    # epochs opened by this process, and the number of parked watchers.
    metrics = None
    if settings.metrics:
        from provider.metrics import install_metrics  # noqa: PLC0415 -- optional module

        metrics = install_metrics(app)
        provider.on_epoch = metrics.epoch_created

    def watching(group: str):
        return metrics.watching(group) if metrics is not None else contextlib.nullcontext()

    @app.exception_handler(ProviderFault)
    async def _fault(request: Request, exc: ProviderFault):
        return JSONResponse({"detail": exc.reason}, status_code=exc.http_status)

    async def refuse_audit(actor: str, action: str, group: str | None, reason: str) -> None:
        if audit_budget.allow("all"):
            await run_in_threadpool(provider.refused, actor, action, group, reason)

    async def member(request: Request, group: str = GROUP_PATH) -> Member:
        body = await request.body()
        raw_path = request.scope.get("raw_path") or request.url.path.encode()
        query = request.scope.get("query_string") or b""
        url = "https://provider" + raw_path.decode("latin-1") + ("?" + query.decode("latin-1") if query else "")
        client = request.client.host if request.client else "unknown"
        try:
            verified = await run_in_threadpool(
                verify_headers, request.method, url, request.headers, body,
                lambda key_id: provider.member_key(group, key_id), time.time(), provider.started_at)
        except SignatureRefused as exc:
            await refuse_audit(f"address:{client}", request.url.path[:80], group, exc.reason)
            raise Unauthorized(exc.reason) from exc
        if not nonces.check_and_add(f"{group}/{verified.key_id}", verified.nonce, time.time()):
            await refuse_audit(f"member:{verified.key_id}", request.url.path[:80], group, "replayed signature")
            raise Unauthorized("replayed signature")
        if not member_limits.allow(f"{group}/{verified.key_id}"):
            raise RateLimited("rate limit exceeded (member)")
        return Member(group, verified.key_id)

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"ok": True}

    @app.post("/v1/enroll", response_model=EnrollAnswer)
    async def enroll(body: EnrollRequest, request: Request):
        client = request.client.host if request.client else "unknown"
        answer = await run_in_threadpool(
            provider.enroll, body.secret, body.name, _b64(body.ed25519_public, "ed25519_public"),
            _b64(body.kem_public, "kem_public"), _b64(body.credential, "credential"), body.endpoints, client)
        holder["hub"].kick()
        return answer

    archive_responses = {200: {"content": {ARCHIVE_MEDIA: {}}, "description": "signed archive envelope"},
                         404: {"description": "no such group, or no epoch yet"}}

    @app.get("/v1/groups/{group}/archive", response_class=Response, responses=archive_responses)
    async def archive(who: Member = Depends(member)):
        version, raw = await run_in_threadpool(provider.store.archive, who.group)
        if raw is None:
            raise _no_archive(who.group)
        return Response(raw, media_type=ARCHIVE_MEDIA)

    @app.get("/v1/groups/{group}/watch", response_class=Response,
             responses={**archive_responses, 204: {"description": "unchanged until the timeout"}})
    async def watch(version: int = Query(ge=0, le=2**62), timeout: float = Query(25.0, ge=0, le=60),
                    who: Member = Depends(member)):
        with watching(who.group):
            raw = await holder["hub"].wait_change(who.group, version, timeout)
        return Response(status_code=204) if raw is None else Response(raw, media_type=ARCHIVE_MEDIA)

    @app.post("/v1/groups/{group}/start", response_class=Response, responses=archive_responses)
    async def start(body: StartRequest, who: Member = Depends(member)):
        if not start_limits.allow(f"{who.group}/{who.name}"):
            raise RateLimited("rate limit exceeded (start)")
        raw = await holder["starts"].start(who.group, bytes.fromhex(body.challenge))
        if raw is None:
            raise _no_archive(who.group)
        return Response(raw, media_type=ARCHIVE_MEDIA)

    sealed_responses = {200: {"content": {SEALED_MEDIA: {}}, "description": "1168 bytes"}}

    @app.get("/v1/groups/{group}/epochs/{epoch}/capsule", response_class=Response, responses=sealed_responses)
    async def capsule(epoch: int = Path(ge=0, le=2**32 - 1), who: Member = Depends(member)):
        raw = await run_in_threadpool(provider.capsule, who.group, who.name, epoch)
        return Response(raw, media_type=SEALED_MEDIA)

    @app.post("/v1/groups/{group}/epochs/{epoch}/salt", response_class=Response, responses=sealed_responses)
    async def salt(body: SaltRequest, epoch: int = Path(ge=0, le=2**32 - 1), who: Member = Depends(member)):
        key = f"{who.group}/{who.name}"
        if not salt_limits.allow(key):
            raise RateLimited("rate limit exceeded (salt)")
        if not wrong_credential.peek(key):
            raise RateLimited("too many wrong credentials; wait")
        try:
            raw = await run_in_threadpool(provider.salt, who.group, who.name, epoch,
                                          _b64(body.credential, "credential"))
        except Forbidden:
            wrong_credential.allow(key)
            raise
        return Response(raw, media_type=SEALED_MEDIA)

    @app.post("/v1/groups/{group}/report", status_code=204, response_class=Response)
    async def report(body: ReportRequest, who: Member = Depends(member)):
        if not report_limits.allow(f"{who.group}/{who.name}"):
            raise RateLimited("rate limit exceeded (report)")
        packets = {}
        for key, value in body.packets_sent.items():
            if not key.isdigit() or len(key) > 10 or not 0 <= value < 2**63:
                raise InvalidInput("packets_sent: keys are epoch numbers, values counts >= 0")
            packets[int(key)] = value
        await run_in_threadpool(provider.report, who.group, who.name, body.endpoints, packets)
        holder["hub"].kick()
        return Response(status_code=204)

    @app.post("/v1/groups/{group}/rekey", status_code=202, response_model=RekeyAnswer)
    async def rekey(body: RekeyRequest, who: Member = Depends(member)):
        if not rekey_limits.allow(f"{who.group}/{who.name}"):
            raise RateLimited("rate limit exceeded (rekey)")
        opened = await run_in_threadpool(provider.member_rekey, who.group, who.name, body.reason)
        holder["hub"].kick()
        return {"opened": opened}

    return Guard(app, MAX_BODY, RateLimiter(settings.address_rate, settings.address_burst)), app


def _no_archive(group: str) -> ProviderFault:
    from provider.errors import NotFound

    return NotFound(f"group {group!r} has no epoch yet")


async def _tick(provider: Provider, hub: Hub) -> None:
    """Open epochs whose time threshold passed (members also ask; whoever is first wins)."""
    while True:
        await asyncio.sleep(TICK_INTERVAL)
        try:
            for group in await run_in_threadpool(provider.due_for_time_rekey):
                await run_in_threadpool(provider.open_epoch, group, "time", "provider")
                hub.kick()
        except ProviderFault as exc:
            log.warning("time rekey: %s", exc.reason)
        except Exception:  # noqa: BLE001 -- the ticker must survive a locked DB
            log.exception("time rekey failed")
