"""The remote admin API's roles against EVERY admin route (provider/admin_routes.py, provider/admin.py).

Table-driven: each route is called by the provider admin, the owner of the group, the owner of another
group, a plain member, an unknown key, unsigned, and as a replay of the admin's accepted request; each
gets its expected status, and a refused request changes nothing (the database compared without its audit
rows), while every 403 is audited with the role and the action.
"""

from __future__ import annotations

import json
import warnings

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from grouptun.control.reqsign import sign_headers
from grouptun.core.jointoken import JoinToken
from provider import admin, exportrules, membership, policy
from provider.app import Settings, create_app
from provider.keys import Signer, StatePaths
from provider.store import audit_rows
from provider_helpers import STORE_KINDS, dump, enroll_with, fresh_store, memory_provider

warnings.filterwarnings("ignore", message=".*httpx.*", category=DeprecationWarning)
TestClient = pytest.importorskip("starlette.testclient").TestClient
SIGNER = Signer.generate()
WEB_DB = "role=web -> role=db tcp/5432 allow\ndefault deny"

# (action, method, path, body, owner may): {token} is the id of eve's pending token
ROUTES = [
    ("group create", "POST", "/v1/admin/groups", {"name": "new", "cidr": "10.78.0.0/24", "members": ["x"]}, False),
    ("group list", "GET", "/v1/admin/groups", None, False),
    ("group show", "GET", "/v1/admin/groups/lan", None, True),
    ("group set-meta", "POST", "/v1/admin/groups/lan/meta", {"owners": ["alice", "bob"]}, False),
    ("group rekey", "POST", "/v1/admin/groups/lan/rekey", None, False),
    ("invite", "POST", "/v1/admin/groups/lan/invites", {"member": "fred", "attributes": {"role": "web"}}, True),
    ("invite", "POST", "/v1/admin/groups/lan/invites", {"uses": 5, "ttl": 86400}, True),
    ("tokens list", "GET", "/v1/admin/groups/lan/tokens", None, True),
    ("tokens revoke", "POST", "/v1/admin/groups/lan/tokens/{token}/revoke", None, True),
    ("member list", "GET", "/v1/admin/groups/lan/members", None, True),
    ("member show", "GET", "/v1/admin/groups/lan/members/bob", None, True),
    ("member remove", "DELETE", "/v1/admin/groups/lan/members/tim", None, True),
    ("member extend", "POST", "/v1/admin/groups/lan/members/tim/extend", {"by": 3600}, True),
    ("member set-attr", "POST", "/v1/admin/groups/lan/members/bob/attributes", {"set": {"site": "b"}}, True),
    ("policy show", "GET", "/v1/admin/groups/lan/policy", None, True),
    ("policy set", "PUT", "/v1/admin/groups/lan/policy", {"text": "* -> role=db icmp allow; default deny"}, True),
    ("policy clear", "DELETE", "/v1/admin/groups/lan/policy", None, True),
    ("route list", "GET", "/v1/admin/groups/lan/routes", None, True),
    ("route approve", "POST", "/v1/admin/groups/lan/routes/approve", {"member": "bob", "prefix": "192.168.6.0/24"},
     True),
    ("route remove", "POST", "/v1/admin/groups/lan/routes/remove", {"member": "alice", "prefix": "192.168.5.0/24"},
     True),
    ("export-rule list", "GET", "/v1/admin/groups/lan/export-rules", None, True),
    ("export-rule set", "PUT", "/v1/admin/groups/lan/export-rules/db", {"selector": "role=db"}, True),
    ("export-rule remove", "DELETE", "/v1/admin/groups/lan/export-rules/web", None, True),
]
READS = {"group list", "group show", "tokens list", "member list", "member show", "policy show", "route list",
         "export-rule list"}


def test_the_table_names_every_admin_route():
    world = World.make()
    served = {(m.upper(), path) for path, item in world.app.openapi()["paths"].items()
              if path.startswith("/v1/admin") for m in item}
    tabled = {(m, p.replace("{token}", "{ident}").replace("/lan", "/{group}").replace("/bob", "/{member}")
               .replace("/tim", "/{member}").replace("/db", "/{label}").replace("/web", "/{label}"))
              for _, m, p, _, _ in ROUTES}
    assert served == tabled
    assert {a for a, *_ in ROUTES} == admin.ADMIN_ACTIONS


class World:
    """lan: alice (owner, role=web), bob (role=db), tim (temporary), eve's pending token, a policy, an export
    rule, a route behind alice; ops: carol (owner), dave. The provider admin's key from create_admin_key."""

    def __init__(self, provider, keys, admin_id, admin_key, asgi, app) -> None:
        self.provider, self.keys, self.asgi, self.app = provider, keys, asgi, app
        self.signers = {"admin": (admin_id, admin_key), "owner": ("owner:lan/alice", keys["alice"]),
                        "other owner": ("owner:ops/carol", keys["carol"]), "member": ("owner:lan/bob", keys["bob"]),
                        "unknown": ("admin:0123456789abcdef", ed25519.Ed25519PrivateKey.generate()),
                        "removed": ("owner:lan/zed", keys["zed"])}

    @classmethod
    def make(cls, tmp=None, store=None) -> "World":
        import tempfile
        from pathlib import Path

        provider, keys = memory_provider(("alice", "bob", "zed"), signer=SIGNER, store=store)
        secret, _ = membership.invite(provider, "lan", "tim", 3600, None, {}, 8 * 3600)
        keys["tim"] = enroll_with(provider, secret, "tim")
        provider.remove_member("lan", "zed")
        membership.invite(provider, "lan", "eve", 3600)
        membership.set_attributes(provider, "lan", "alice", {"role": "web"})
        membership.set_attributes(provider, "lan", "bob", {"role": "db"})
        membership.set_group_metadata(provider, "lan", owners=["alice"])
        policy.set_policy(provider, "lan", WEB_DB)
        exportrules.set_rule(provider, "lan", "web", "role=web")
        provider.approve_route("lan", "alice", "192.168.5.0/24")
        provider.create_group("ops", "10.79.0.0/24")
        for name in ("carol", "dave"):
            keys[name] = enroll_with(provider, provider.invite("ops", name, 3600), name)
        membership.set_group_metadata(provider, "ops", owners=["carol"])
        root = Path(tmp or tempfile.mkdtemp())
        admin_id, path = admin.create_admin_key(StatePaths(root), provider.store, provider.clock())
        admin_key = serialization.load_pem_private_key(path.read_bytes(), None)
        token = lambda s: str(JoinToken("https://127.0.0.1:9", "ab" * 32, SIGNER.public.fingerprint(), s))  # noqa: E731
        asgi, app = create_app(provider, Settings(member_rate=1000, member_burst=1000, join_token=token))
        return cls(provider, keys, admin_id, admin_key, asgi, app)

    def path(self, template: str) -> str:
        if "{token}" not in template:
            return template
        eve = [t["id"] for t in membership.list_tokens(self.provider, "lan") if t["member"] == "eve"]
        return template.replace("{token}", eve[0])

    def state(self) -> str:
        return "\n".join(line for line in dump(self.provider.store).splitlines() if not line.startswith("audit "))

    def audit(self) -> list:
        with self.provider.store.read() as conn:
            return audit_rows(conn, 0, 10**9)


def signed(who: str | None, world: World, method: str, path: str, body) -> dict:
    raw = b"" if body is None else json.dumps(body).encode()
    headers = {"content-type": "application/json"} if body is not None else {}
    if who is not None:
        key_id, key = world.signers[who]
        sign_headers(method, "http://testserver" + path, headers, raw, key_id, key)
    return {"method": method, "url": path, "headers": headers, "content": raw}


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One world for the refusals (they change nothing: each test checks that)."""
    world = World.make(tmp_path_factory.mktemp("admin"))
    with TestClient(world.asgi, client=("127.0.0.1", 4000)) as client:
        yield world, client


def _expected(who: str, owner_may: bool) -> int:
    if who in ("unknown", "unsigned", "removed"):
        return 401
    if who == "owner" and owner_may:
        return 200
    return 403


@pytest.mark.parametrize("who", ["owner", "other owner", "member", "unknown", "removed", "unsigned"])
@pytest.mark.parametrize("action, method, template, body, owner_may", ROUTES, ids=[f"{r[0]}-{r[1]}" for r in ROUTES])
def test_refusals_change_nothing_and_403s_are_audited(shared, who, action, method, template, body, owner_may):
    world, client = shared
    expected = _expected(who, owner_may)
    if expected == 200:
        pytest.skip("an accepted request: test_accepted_requests")
    path = world.path(template)
    before, audited = world.state(), len(world.audit())
    r = client.request(**signed(None if who == "unsigned" else who, world, method, path, body))
    assert r.status_code == expected, r.text
    assert world.state() == before
    if expected == 403:
        role = ("role member ('bob' is not an owner of 'lan')" if who == "member"
                else "role owner (of group 'ops')" if owner_may else "role owner may not")
        assert role in r.json()["detail"] and action in r.json()["detail"]
        new = world.audit()[audited:]
        assert [(row.actor, row.action) for row in new] == [(world.signers[who][0], "refused")]
        assert json.loads(new[0].detail)["request"] == action
    else:
        assert r.json()["detail"] in ("signature missing", "signature not valid")


@pytest.mark.parametrize("who", ["admin", "owner"])
@pytest.mark.parametrize("action, method, template, body, owner_may", ROUTES, ids=[f"{r[0]}-{r[1]}" for r in ROUTES])
def test_accepted_requests_then_their_replay_is_refused(tmp_path, who, action, method, template, body, owner_may):
    if who == "owner" and not owner_may:
        pytest.skip("refused: test_refusals_change_nothing_and_403s_are_audited")
    world = World.make(tmp_path)
    with TestClient(world.asgi, client=("127.0.0.1", 4000)) as client:
        before = world.state()
        request = signed(who, world, method, world.path(template), body)
        r = client.request(**request)
        assert r.status_code == 200, r.text
        after = world.state()
        assert (after == before) == (action in READS)
        if action not in READS:
            last = [row for row in world.audit() if row.action == "admin-request"][-1]
            assert (last.actor, json.loads(last.detail)["request"]) == (world.signers[who][0], action)
        replay = client.request(**request)
        assert (replay.status_code, replay.json()["detail"]) == (401, "replayed signature")
        assert world.state() == after


def test_answers_are_the_cli_json_shapes(shared):
    world, client = shared
    r = client.request(**signed("owner", world, "GET", "/v1/admin/groups/lan/policy", None))
    assert r.json() == policy.show_policy(world.provider, "lan")
    r = client.request(**signed("owner", world, "GET", "/v1/admin/groups/lan/members", None))
    assert r.json() == json.loads(json.dumps(world.provider.list_members("lan")))


def test_bad_input_from_an_owner_is_a_4xx_naming_the_rule_and_changes_nothing(shared):
    world, client = shared
    before = world.state()
    cases = [("PUT", "/v1/admin/groups/lan/policy", {"text": "team=x -> role=db any allow; default deny"}, 400,
              "unknown attribute key 'team'"),
             ("POST", "/v1/admin/groups/lan/invites", {"member": "fred", "attributes": {"Bad Key": "x"}}, 400, "Bad"),
             ("POST", "/v1/admin/groups/lan/invites", {"member": "fred", "surprise": 1}, 422, "surprise"),
             ("POST", "/v1/admin/groups/lan/members/nobody/extend", {"by": 3600}, 404, "nobody")]
    for method, path, body, status, named in cases:
        r = client.request(**signed("owner", world, method, path, body))
        assert r.status_code == status and named in r.text, r.text
    assert world.state() == before


def test_a_stale_signature_is_refused(shared):
    world, client = shared
    key_id, key = world.signers["admin"]
    headers: dict = {}
    sign_headers("GET", "http://testserver/v1/admin/groups", headers, b"", key_id, key,
                 created=world.provider.clock() - 120)
    r = client.get("/v1/admin/groups", headers=headers)
    assert (r.status_code, r.json()["detail"]) == (401, "stale signature")


def test_admin_routes_are_documented_only_when_docs_are_enabled(shared):
    world, _ = shared
    for docs in (False, True):
        asgi, _ = create_app(world.provider, Settings(docs=docs, join_token=str))
        with TestClient(asgi, client=("127.0.0.1", 4000)) as client:
            r = client.get("/openapi.json")
            assert r.status_code == (200 if docs else 404)
            if docs:
                assert "/v1/admin/groups/{group}/invites" in r.json()["paths"]


@pytest.mark.parametrize("kind", STORE_KINDS)
def test_roles_and_replay_on_each_store(tmp_path, request, kind):
    """On PostgreSQL the nonce cache is the replicas' shared one (limits.SharedNonces): a replay is refused
    there too, and the roles read the same rows."""
    world = World.make(tmp_path, fresh_store(kind, request))
    with TestClient(world.asgi, client=("127.0.0.1", 4000)) as client:
        request_ = signed("owner", world, "POST", "/v1/admin/groups/lan/invites", {"member": "fred"})
        assert client.request(**request_).status_code == 200
        assert client.request(**request_).json()["detail"] == "replayed signature"
        r = client.request(**signed("member", world, "POST", "/v1/admin/groups/lan/invites", {"member": "gus"}))
        assert r.status_code == 403
    world.provider.store.close()
