"""Subnet routes at the provider: approve, list, remove (provider/routes_approved.py), on both stores.

An approval is stored, audited and signed into the next epoch's archive (the member entry's
``routes``); bad or overlapping prefixes are refused and change nothing.
"""

from __future__ import annotations

import json

import pytest
from sqlalchemy import text

from grouptun.errors import ProviderRefused
from provider.errors import Conflict, InvalidInput, NotFound
from provider.tables import MIGRATIONS, _add_subnet_routes
from provider_helpers import STORE_KINDS, TestMember, admin, fresh_store, init_provider
from test_provider_epochs import Fixture


@pytest.fixture(params=STORE_KINDS)
def fx(request) -> Fixture:
    fixture = Fixture(fresh_store(request.param, request))
    for name in ("alice", "bob"):
        fixture.enroll(name)
    yield fixture
    fixture.store.close()


def test_approved_route_opens_an_epoch_whose_archive_lists_it(fx):
    before = fx.archive()
    assert all(m.routes == () for m in before.members)
    prefix, opened = fx.provider.approve_route("lan", "bob", "192.168.5.0/24")
    after = fx.archive()
    assert prefix == "192.168.5.0/24" and opened.epoch == after.epoch.epoch > before.epoch.epoch
    assert after.member("bob").routes == ("192.168.5.0/24",) and after.member("alice").routes == ()
    fx.provider.approve_route("lan", "bob", "fd99:5::/64")
    assert fx.archive().member("bob").routes == ("192.168.5.0/24", "fd99:5::/64")
    assert [(r["member"], r["prefix"]) for r in fx.provider.list_routes("lan")] == [
        ("bob", "192.168.5.0/24"), ("bob", "fd99:5::/64")]
    assert [row.action for row in fx.audit()].count("route-approve") == 2
    with pytest.raises(Conflict, match="already"):
        fx.provider.approve_route("lan", "bob", "fd99:5::/64")
    fx.provider.remove_route("lan", "bob", "192.168.5.0/24")
    assert fx.archive().member("bob").routes == ("fd99:5::/64",)
    with pytest.raises(NotFound):
        fx.provider.remove_route("lan", "bob", "192.168.5.0/24")


@pytest.mark.parametrize("prefix, error", [
    ("192.168.5.1/24", InvalidInput),   # host bits
    ("banana", InvalidInput),
    ("0.0.0.0/0", InvalidInput),        # the default route
    ("10.77.0.0/16", InvalidInput),     # holds the overlay network 10.77.0.0/29
    ("fd77::/48", InvalidInput),
    ("192.168.0.0/16", Conflict),       # overlaps alice's approved 192.168.7.0/24
    ("192.168.7.128/25", Conflict),     # inside it
])
def test_bad_prefixes_are_refused_and_change_nothing(fx, prefix, error):
    fx.provider.approve_route("lan", "alice", "192.168.7.0/24")
    version = fx.archive().version
    with pytest.raises(error):
        fx.provider.approve_route("lan", "bob", prefix)
    assert fx.archive().version == version
    assert [r["prefix"] for r in fx.provider.list_routes("lan")] == ["192.168.7.0/24"]


def test_unknown_member_and_removed_member_lose_their_routes(fx):
    with pytest.raises(NotFound):
        fx.provider.approve_route("lan", "mallory", "192.168.5.0/24")
    fx.provider.approve_route("lan", "bob", "192.168.5.0/24")
    fx.enroll("carol")
    fx.provider.remove_member("lan", "bob")
    assert fx.provider.list_routes("lan") == []
    assert all(m.routes == () for m in fx.archive().members)


@pytest.mark.parametrize("kind", STORE_KINDS)
def test_older_schema_gets_the_routes_table(kind, request):
    store = fresh_store(kind, request)
    with store.write() as conn:
        conn.exec_driver_sql("DROP TABLE subnet_routes")
        step = next(v for v, f in MIGRATIONS.items() if f is _add_subnet_routes)  # its place in the chain
        conn.exec_driver_sql(f"UPDATE meta SET value = '{step}' WHERE key = 'schema_version'")
    store.check_schema()
    with store.read() as conn:
        assert conn.execute(text("SELECT count(*) FROM subnet_routes")).scalar() == 0
    store.close()


def test_cli_route_approve_list_remove_json(tmp_path):
    env = init_provider(tmp_path / "p", None)
    admin(env.state, "group", "create", "lan", "--cidr", "10.77.0.0/24")
    refused = admin(env.state, "route", "approve", "lan", "bob", "192.168.5.0/24", check=False)
    assert refused.returncode != 0 and "no member 'bob'" in refused.stderr
    bad = admin(env.state, "route", "approve", "lan", "bob", "192.168.5.1/24", check=False)
    assert bad.returncode == InvalidInput.exit_code and "192.168.5.1/24" in bad.stderr
    assert json.loads(admin(env.state, "route", "list", "lan", "--json").stdout) == []


def test_member_request_is_listed_until_the_admin_approves_it(fx):
    version = fx.archive().version
    assert fx.provider.request_routes("lan", "bob", ["192.168.5.0/24", "fd99:5::/64"]) == [
        "192.168.5.0/24", "fd99:5::/64"]
    assert fx.archive().version == version and fx.archive().member("bob").routes == ()  # nothing routed yet
    assert [(r["prefix"], r["state"]) for r in fx.provider.list_routes("lan")] == [
        ("192.168.5.0/24", "requested"), ("fd99:5::/64", "requested")]
    fx.provider.approve_route("lan", "bob", "192.168.5.0/24")
    assert fx.archive().member("bob").routes == ("192.168.5.0/24",)
    fx.provider.request_routes("lan", "bob", ["192.168.5.0/24"])  # a restart sends it again: stays approved
    assert [(r["prefix"], r["state"]) for r in fx.provider.list_routes("lan")] == [("192.168.5.0/24", "approved")]
    with pytest.raises(InvalidInput):
        fx.provider.request_routes("lan", "bob", ["10.77.0.0/29"])  # the overlay network
    with pytest.raises(NotFound):
        fx.provider.request_routes("lan", "mallory", ["192.168.9.0/24"])


def test_member_requests_routes_over_https(provider_env):
    member = TestMember("gw")
    member.enroll(provider_env.invite("gw"), endpoints=("127.0.0.1:40009",))
    member.client().request_routes(["192.168.50.0/24"])
    listed = json.loads(admin(provider_env.state, "route", "list", "lan", "--json").stdout)
    assert [(r["member"], r["prefix"], r["state"]) for r in listed] == [("gw", "192.168.50.0/24", "requested")]
    with pytest.raises(ProviderRefused, match="192.168.50.1/24"):
        member.client().request_routes(["192.168.50.1/24"])
