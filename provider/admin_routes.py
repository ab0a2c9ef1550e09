"""The remote admin API: ``/v1/admin/...``, RFC 9421-signed like member requests (issue 17 items 1 and 2).

Every route depends on :meth:`AdminRoutes.dependency`, which in this order
authenticates (``Context.verified``: the same verifier, clock skew and
start-time floor as member requests; keyid ``admin:<id>`` or
``owner:<group>/<member>``, ``provider/admin.py``), refuses a replay
(``Context.fresh``: the same nonce cache, shared by the replicas on
PostgreSQL), charges the per-key request budget and authorises
(``admin.authorise``: 403 naming the role and the action, audited
``refused``). Only then does FastAPI validate the body, and the route call
the one function of ``provider/admin_ops.py`` (or ``membership``,
``policy``, ``exportrules``) that the local CLI calls too; its answer is
that command's ``--json`` shape. A change is audited ``admin-request``
with the signer's keyid (the change's own audit row follows it).

Routes (``{g}`` the group; durations in seconds)::

    POST   /v1/admin/groups                         group create      (admin)   GroupCreateBody
    GET    /v1/admin/groups                         group list        (admin)   -> {"groups": [...]}
    GET    /v1/admin/groups/{g}                     group show
    POST   /v1/admin/groups/{g}/meta                group set-meta    (admin)   MetaBody
    POST   /v1/admin/groups/{g}/rekey               group rekey       (admin)
    POST   /v1/admin/groups/{g}/invites             invite                      InviteBody
    GET    /v1/admin/groups/{g}/tokens              tokens list
    POST   /v1/admin/groups/{g}/tokens/{id}/revoke  tokens revoke
    GET    /v1/admin/groups/{g}/members             member list
    GET    /v1/admin/groups/{g}/members/{m}         member show
    DELETE /v1/admin/groups/{g}/members/{m}         member remove
    POST   /v1/admin/groups/{g}/members/{m}/extend  member extend               {"by": seconds}
    POST   /v1/admin/groups/{g}/members/{m}/attributes  member set-attr         {"set": {k: v}, "unset": [k]}
    GET|PUT|DELETE /v1/admin/groups/{g}/policy      policy show|set|clear       PUT {"text": policy}
    GET    /v1/admin/groups/{g}/routes              route list
    POST   /v1/admin/groups/{g}/routes/{approve|remove}  route approve|remove   {"member", "prefix"}
    GET    /v1/admin/groups/{g}/export-rules        export-rule list
    PUT|DELETE /v1/admin/groups/{g}/export-rules/{label}  export-rule set|remove   PUT {"selector"}

Routes marked (admin) are the provider admin's; the others also an owner's
of ``{g}``. Refusals: 401 (signature missing, stale, not valid, unknown
key, replayed), 403 (role), 429 (budget), then 400/404/409/422 as the CLI.
"""

from __future__ import annotations

from typing import Callable

from fastapi import APIRouter, Depends, Request
from fastapi import Path as PathParam
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from provider import admin, admin_ops, exportrules, membership, policy
from provider.errors import Forbidden, RateLimited
from provider.ijson import IJsonRoute
from provider.schemas import GROUP_PATH
from provider.store import add_audit

MEMBER_PATH = PathParam(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", max_length=64)
Pairs = dict[str, str]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GroupCreateBody(_Body):
    name: str = Field(max_length=32)
    cidr: str = Field(max_length=64)
    cidr6: str | None = Field(None, max_length=64)
    suite: str = Field("aes-256-gcm", max_length=32)
    rekey_after: float = 600.0
    rekey_packets: int = 2**27
    switch_delay: float = 2.0
    grace: float = 30.0
    members: list[str] = Field(default_factory=list, max_length=membership.MAX_ADD_GROUP_MEMBERS)
    token_ttl: float = 3600.0
    attributes: Pairs = Field(default_factory=dict)
    member_ttl: float | None = None
    owner: Pairs = Field(default_factory=dict)
    expires_in: float | None = None
    owners: list[str] = Field(default_factory=list, max_length=64)


class MetaBody(_Body):
    owner: Pairs | None = None
    expires_in: float | None = None
    no_expiry: bool = False
    owners: list[str] | None = Field(None, max_length=64)


class InviteBody(_Body):
    member: str | None = Field(None, max_length=64)
    ttl: float = 3600.0
    uses: int | None = None
    attributes: Pairs = Field(default_factory=dict)
    member_ttl: float | None = None


class ExtendBody(_Body):
    by: float


class AttributesBody(_Body):
    set: Pairs = Field(default_factory=dict)
    unset: list[str] = Field(default_factory=list, max_length=64)


class PolicyBody(_Body):
    text: str = Field(max_length=60_000)


class RouteBody(_Body):
    member: str = Field(max_length=64)
    prefix: str = Field(max_length=64)


class SelectorBody(_Body):
    selector: str = Field(max_length=1024)


class AdminRoutes:
    """The dependency and the call wrapper over the app's ``routes.Context``; ``join_token(secret)`` makes the
    printable token that ``invite`` and ``group create`` answer with."""

    def __init__(self, ctx, join_token: Callable[[str], str]) -> None:
        self.ctx, self.join_token = ctx, join_token

    def dependency(self, action: str, grouped: bool = True):
        """The FastAPI dependency of one action: the signer's Principal once authenticated and authorised."""
        async def check(request: Request, group: str | None) -> admin.Principal:
            found: list[admin.Principal] = []

            def resolve(key_id: str):
                hit = admin.resolve(self.ctx.provider, key_id)
                if hit is None:
                    return None
                found.append(hit[1])
                return hit[0]

            verified = await self.ctx.verified(request, group, resolve)
            who = found[-1]
            await self.ctx.fresh(request, group, f"admin/{who.key_id}", verified, who.key_id)
            if not self.ctx.limits.member.allow(f"admin/{who.key_id}"):
                raise RateLimited("rate limit exceeded (admin key)")
            try:
                admin.authorise(who, action, group)
            except Forbidden as exc:  # authenticated and per-key rate-limited: every 403 is audited
                await run_in_threadpool(self.ctx.provider.refused, who.key_id, action, group, exc.reason)
                raise
            return who

        if not grouped:
            async def ungrouped(request: Request) -> admin.Principal:
                return await check(request, None)

            return ungrouped

        async def in_group(request: Request, group: str = GROUP_PATH) -> admin.Principal:
            return await check(request, group)

        return in_group

    async def change(self, who: admin.Principal, action: str, group: str | None, fn, *args, **kwargs):
        """Run ``fn`` (a state change) in the thread pool; audited with the signer, watchers woken."""
        result = await run_in_threadpool(fn, *args, **kwargs)
        await run_in_threadpool(self._audit, who, action, group)
        if self.ctx.hub is not None:
            self.ctx.hub.kick()
        return result

    def _audit(self, who: admin.Principal, action: str, group: str | None) -> None:
        provider = self.ctx.provider
        with provider.store.write() as conn:
            add_audit(conn, provider.clock(), who.key_id, "admin-request", group, request=action, role=who.role)


def admin_router(ctx, join_token: Callable[[str], str]) -> APIRouter:
    api = AdminRoutes(ctx, join_token)
    router = APIRouter(route_class=IJsonRoute, prefix="/v1/admin")
    provider = ctx.provider
    _group_routes(router, api, provider)
    _member_routes(router, api, provider)
    _rule_routes(router, api, provider)
    return router


def _group_routes(router: APIRouter, api: AdminRoutes, provider) -> None:
    @router.post("/groups")
    async def group_create(body: GroupCreateBody, who=Depends(api.dependency("group create", grouped=False))):
        return await api.change(
            who, "group create", body.name, admin_ops.group_create, provider, api.join_token, body.name, body.cidr,
            body.members, body.token_ttl, body.attributes, body.member_ttl, body.owner, body.expires_in,
            body.owners, cidr6=body.cidr6, suite=body.suite, rekey_after_seconds=body.rekey_after,
            rekey_after_packets=body.rekey_packets, switch_delay=body.switch_delay, grace=body.grace)

    @router.get("/groups")
    async def group_list(who=Depends(api.dependency("group list", grouped=False))):
        return {"groups": await run_in_threadpool(provider.list_groups)}

    @router.get("/groups/{group}")
    async def group_show(group: str = GROUP_PATH, who=Depends(api.dependency("group show"))):
        return await run_in_threadpool(admin_ops.group_show, provider, group)

    @router.post("/groups/{group}/meta")
    async def group_set_meta(body: MetaBody, group: str = GROUP_PATH, who=Depends(api.dependency("group set-meta"))):
        return await api.change(who, "group set-meta", group, admin_ops.group_set_meta, provider, group, body.owner,
                                body.expires_in, body.no_expiry, body.owners)

    @router.post("/groups/{group}/rekey")
    async def group_rekey(group: str = GROUP_PATH, who=Depends(api.dependency("group rekey"))):
        return await api.change(who, "group rekey", group, admin_ops.group_rekey, provider, group, who.key_id)

    @router.post("/groups/{group}/invites")
    async def invite(body: InviteBody, group: str = GROUP_PATH, who=Depends(api.dependency("invite"))):
        return await api.change(who, "invite", group, admin_ops.invite, provider, api.join_token, group, body.member,
                                body.ttl, body.uses, body.attributes, body.member_ttl)

    @router.get("/groups/{group}/tokens")
    async def tokens_list(group: str = GROUP_PATH, who=Depends(api.dependency("tokens list"))):
        return await run_in_threadpool(membership.list_tokens, provider, group)

    @router.post("/groups/{group}/tokens/{ident}/revoke")
    async def tokens_revoke(group: str = GROUP_PATH, ident: str = PathParam(pattern=r"^[0-9a-f]{16}$"),
                            who=Depends(api.dependency("tokens revoke"))):
        return await api.change(who, "tokens revoke", group, membership.revoke_token, provider, group, ident)


def _member_routes(router: APIRouter, api: AdminRoutes, provider) -> None:
    @router.get("/groups/{group}/members")
    async def member_list(group: str = GROUP_PATH, who=Depends(api.dependency("member list"))):
        return await run_in_threadpool(provider.list_members, group)

    @router.get("/groups/{group}/members/{member}")
    async def member_show(group: str = GROUP_PATH, member: str = MEMBER_PATH,
                          who=Depends(api.dependency("member show"))):
        return await run_in_threadpool(admin_ops.member_show, provider, group, member)

    @router.delete("/groups/{group}/members/{member}")
    async def member_remove(group: str = GROUP_PATH, member: str = MEMBER_PATH,
                            who=Depends(api.dependency("member remove"))):
        return await api.change(who, "member remove", group, admin_ops.member_remove, provider, group, member)

    @router.post("/groups/{group}/members/{member}/extend")
    async def member_extend(body: ExtendBody, group: str = GROUP_PATH, member: str = MEMBER_PATH,
                            who=Depends(api.dependency("member extend"))):
        return await api.change(who, "member extend", group, membership.extend, provider, group, member, body.by)

    @router.post("/groups/{group}/members/{member}/attributes")
    async def member_set_attr(body: AttributesBody, group: str = GROUP_PATH, member: str = MEMBER_PATH,
                              who=Depends(api.dependency("member set-attr"))):
        return await api.change(who, "member set-attr", group, membership.set_attributes, provider, group, member,
                                body.set, body.unset)


def _rule_routes(router: APIRouter, api: AdminRoutes, provider) -> None:
    @router.get("/groups/{group}/policy")
    async def policy_show(group: str = GROUP_PATH, who=Depends(api.dependency("policy show"))):
        return await run_in_threadpool(policy.show_policy, provider, group)

    @router.put("/groups/{group}/policy")
    async def policy_set(body: PolicyBody, group: str = GROUP_PATH, who=Depends(api.dependency("policy set"))):
        return await api.change(who, "policy set", group, policy.set_policy, provider, group, body.text)

    @router.delete("/groups/{group}/policy")
    async def policy_clear(group: str = GROUP_PATH, who=Depends(api.dependency("policy clear"))):
        return await api.change(who, "policy clear", group, policy.clear_policy, provider, group)

    @router.get("/groups/{group}/routes")
    async def route_list(group: str = GROUP_PATH, who=Depends(api.dependency("route list"))):
        return await run_in_threadpool(provider.list_routes, group)

    for action in ("approve", "remove"):
        _route_change(router, api, provider, action)

    @router.get("/groups/{group}/export-rules")
    async def export_rule_list(group: str = GROUP_PATH, who=Depends(api.dependency("export-rule list"))):
        return await run_in_threadpool(exportrules.list_rules, provider, group)

    @router.put("/groups/{group}/export-rules/{label}")
    async def export_rule_set(body: SelectorBody, group: str = GROUP_PATH, label: str = PathParam(max_length=64),
                              who=Depends(api.dependency("export-rule set"))):
        return await api.change(who, "export-rule set", group, exportrules.set_rule, provider, group, label,
                                body.selector)

    @router.delete("/groups/{group}/export-rules/{label}")
    async def export_rule_remove(group: str = GROUP_PATH, label: str = PathParam(max_length=64),
                                 who=Depends(api.dependency("export-rule remove"))):
        return await api.change(who, "export-rule remove", group, exportrules.remove_rule, provider, group, label)


def _route_change(router: APIRouter, api: AdminRoutes, provider, action: str) -> None:
    name = f"route {action}"

    @router.post(f"/groups/{{group}}/routes/{action}", name=name.replace(" ", "_"))
    async def route_change(body: RouteBody, group: str = GROUP_PATH, who=Depends(api.dependency(name))):
        return await api.change(who, name, group, admin_ops.route_change, provider, action, group, body.member,
                                body.prefix)
