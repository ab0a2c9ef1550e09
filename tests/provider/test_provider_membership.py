"""Issue 17 at the provider (provider/membership.py): AddGroup, reusable keys, temporary members on a
fake clock, signed attributes, group metadata, the 410 for removed members. SQLite and PostgreSQL."""

from __future__ import annotations

import json
import warnings

import pytest
from sqlalchemy import select

from grouptun.core.archive import verify_archive
from grouptun.core.envelope import ProviderKeys
from grouptun.control.reqsign import sign_headers
from provider import membership
from provider.app import Settings, create_app
from provider.archives import parse_own
from provider.errors import Conflict, Forbidden, InvalidInput, NotFound
from provider.keys import Signer
from provider.store import audit_rows
from provider.tables import members
from provider_helpers import (STORE_KINDS, enroll_with, fresh_store, memory_provider,
                              own_archive as _archive, state_but_audit as _state)
from test_provider_epochs import T0, FakeClock

warnings.filterwarnings("ignore", message=".*httpx.*", category=DeprecationWarning)
SIGNER = Signer.generate()


@pytest.fixture(params=STORE_KINDS)
def world(request):
    clock = FakeClock()
    provider, keys = memory_provider(signer=SIGNER, store=fresh_store(request.param, request), clock=clock)
    yield provider, keys, clock
    provider.store.close()




def _actions(provider) -> list[str]:
    with provider.store.read() as conn:
        return [r.action for r in audit_rows(conn, 0, 10**9)]


# --- AddGroup ---------------------------------------------------------------------------------------------


def test_add_group_makes_the_group_and_a_token_per_member_in_one_request(world):
    provider, _, _ = world
    issued = membership.create_group(provider, "ops", "10.88.0.0/24", ["a", "b", "c"], 3600,
                                     {"role": "web"}, None, {"org": "acme"})
    assert provider.show_group("ops")["name"] == "ops" and [t["member"] for t in issued] == ["a", "b", "c"]
    assert len({t["secret"] for t in issued}) == 3
    listed = membership.list_tokens(provider, "ops")
    assert [(t["member"], t["state"], t["attributes"]) for t in listed] == [
        (n, "active", {"role": "web"}) for n in "abc"]
    enroll_with(provider, issued[1]["secret"], "b")
    enroll_with(provider, issued[0]["secret"], "a")
    archive = parse_own(provider.store.archive("ops")[1])
    assert dict(archive.member("a").attributes) == {"role": "web"}
    assert dict(archive.metadata.owner) == {"org": "acme"}
    assert archive.metadata.provider_id == SIGNER.public.fingerprint()


@pytest.mark.parametrize("names, name, reason", [
    (["a", "a"], "ops", "twice"),
    (["a", "bad name"], "ops", "member name"),
    (["a"], "lan", "exists already"),
])
def test_add_group_refused_leaves_nothing_behind(world, names, name, reason):
    provider, _, _ = world
    before = _state(provider)
    with pytest.raises((InvalidInput, Conflict)) as info:
        membership.create_group(provider, name, "10.88.0.0/24", names, 3600)
    assert reason in info.value.reason
    assert _state(provider) == before and provider.list_groups() == ["lan"]


def test_add_group_with_a_bad_attribute_creates_nothing(world):
    provider, _, _ = world
    before = _state(provider)
    with pytest.raises(InvalidInput, match="role"):
        membership.create_group(provider, "ops", "10.88.0.0/24", ["a"], 3600, {"role": "has space"})
    assert _state(provider) == before


# --- reusable keys ----------------------------------------------------------------------------------------


def test_a_reusable_key_enrolls_up_to_its_uses_then_says_exhausted(world):
    provider, _, _ = world
    secret, ident = membership.invite(provider, "lan", None, 3600, uses=3, attributes={"role": "ci"})
    for name in ("ci-1", "ci-2", "ci-3"):
        enroll_with(provider, secret, name)
    assert {n: dict(_archive(provider).member(n).attributes) for n in ("ci-1", "ci-3")} == {
        "ci-1": {"role": "ci"}, "ci-3": {"role": "ci"}}
    before = _state(provider)
    with pytest.raises(Forbidden, match="exhausted: all 3 uses spent"):
        enroll_with(provider, secret, "ci-4")
    assert _state(provider) == before
    (key,) = [t for t in membership.list_tokens(provider, "lan") if t["reusable"]]
    assert (key["id"], key["state"], key["uses"], key["max_uses"]) == (ident, "exhausted", 3, 3)


def test_a_revoked_key_is_refused_with_its_reason_and_changes_nothing(world):
    provider, _, _ = world
    secret, ident = membership.invite(provider, "lan", None, 3600, uses=20)
    enroll_with(provider, secret, "ci-1")
    assert membership.revoke_token(provider, "lan", ident)["state"] == "revoked"
    before = _state(provider)
    with pytest.raises(Forbidden, match="revoked"):
        enroll_with(provider, secret, "ci-2")
    assert _state(provider) == before
    assert "refused" in _actions(provider) and "token-revoke" in _actions(provider)
    with pytest.raises(Conflict, match="revoked already"):
        membership.revoke_token(provider, "lan", ident)
    with pytest.raises(NotFound):
        membership.revoke_token(provider, "lan", "00" * 8)


def test_a_reusable_key_expires(world):
    provider, _, clock = world
    secret, _ = membership.invite(provider, "lan", None, 60, uses=5)
    clock.t += 61
    with pytest.raises(Forbidden, match="join token expired"):
        enroll_with(provider, secret, "late")


@pytest.mark.parametrize("kwargs, reason", [
    ({"name": "x", "uses": 2}, "any member name"),
    ({"name": None, "uses": 0}, "--uses"),
    ({"name": "x", "ttl": 10}, "--ttl"),
    ({"name": "x", "member_ttl": 1}, "--member-ttl"),
    ({"name": "x", "attributes": {"Role": "x"}}, "key 'Role'"),
    ({"name": "alice"}, "already enrolled"),
])
def test_bad_invitations_are_refused_and_change_nothing(world, kwargs, reason):
    provider, _, _ = world
    before = _state(provider)
    args = {"ttl": 3600, **kwargs}
    with pytest.raises((InvalidInput, Conflict)) as info:
        membership.invite(provider, "lan", args.pop("name"), args.pop("ttl"), **args)
    assert reason in info.value.reason and _state(provider) == before


def test_one_time_tokens_keep_their_old_answers(world):
    provider, _, _ = world
    secret = provider.invite("lan", "carol", 3600)
    with pytest.raises(Forbidden, match="name does not match the invitation"):
        enroll_with(provider, secret, "mallory")
    enroll_with(provider, secret, "carol")
    with pytest.raises(Forbidden, match="join token unknown, used or expired"):
        enroll_with(provider, secret, "carol2")


# --- temporary members on a fake clock ---------------------------------------------------------------------


def test_a_temporary_member_is_removed_by_the_timer_at_its_deadline(world):
    provider, _, clock = world
    secret, _ = membership.invite(provider, "lan", "officer", 3600, member_ttl=20)
    enroll_with(provider, secret, "officer")
    deadline = _archive(provider).member("officer").expires_at
    assert T0 + 20 <= deadline <= T0 + 21  # 20 s after it enrolled (the fake clock slept for an epoch number)
    epoch = _archive(provider).epoch.epoch
    clock.t = deadline - 0.5
    assert membership.expire_due(provider) == {}  # not yet
    assert _archive(provider).member("officer") is not None
    clock.t = deadline + 1.0  # the ticker runs every second
    assert membership.expire_due(provider) == {"lan": ["officer"]}
    archive = _archive(provider)
    assert archive.member("officer") is None and archive.epoch.epoch > epoch
    assert archive.epoch.group_size == 2
    assert membership.expire_due(provider) == {}  # once
    with provider.store.read() as conn:
        rows = [r for r in audit_rows(conn, 0, 10**9) if r.action == "member-expire"]
    assert len(rows) == 1 and json.loads(rows[0].detail)["member"] == "officer"
    key, reason = membership.removed_member(provider, "lan", "officer")
    assert "expired" in reason


def test_extend_moves_the_deadline_and_the_timer_follows(world):
    provider, _, clock = world
    secret, _ = membership.invite(provider, "lan", "temp", 3600, member_ttl=60)
    enroll_with(provider, secret, "temp")
    version = _archive(provider).version
    deadline = _archive(provider).member("temp").expires_at
    assert membership.extend(provider, "lan", "temp", 4 * 3600)["expires_at"] == deadline + 4 * 3600
    assert _archive(provider).version > version  # re-signed with the new deadline
    assert _archive(provider).member("temp").expires_at == deadline + 4 * 3600
    clock.t = deadline + 60
    assert membership.expire_due(provider) == {}
    clock.t = deadline + 4 * 3600 + 1
    assert membership.expire_due(provider) == {"lan": ["temp"]}


def test_extend_refuses_permanent_and_unknown_members(world):
    provider, _, _ = world
    before = _state(provider)
    with pytest.raises(InvalidInput, match="permanent"):
        membership.extend(provider, "lan", "alice", 3600)
    with pytest.raises(NotFound):
        membership.extend(provider, "lan", "nobody", 3600)
    assert _state(provider) == before


def test_a_member_removed_by_the_admin_is_remembered_for_its_410(world):
    provider, _, _ = world
    provider.remove_member("lan", "bob")
    key, reason = membership.removed_member(provider, "lan", "bob")
    assert "removed" in reason and membership.removed_member(provider, "lan", "alice") is None


# --- attributes and metadata ------------------------------------------------------------------------------


def test_set_attr_re_signs_the_archive_and_unset_drops(world):
    provider, _, _ = world
    epoch = _archive(provider).epoch.epoch
    membership.set_attributes(provider, "lan", "alice", {"role": "db", "site": "hel"})
    assert dict(_archive(provider).member("alice").attributes) == {"role": "db", "site": "hel"}
    assert _archive(provider).epoch.epoch == epoch  # a signature, not an epoch
    assert membership.set_attributes(provider, "lan", "alice", {}, ["site"])["attributes"] == {"role": "db"}
    listed = {m["name"]: m for m in provider.list_members("lan")}
    assert listed["alice"]["attributes"] == {"role": "db"} and listed["bob"]["attributes"] == {}


@pytest.mark.parametrize("name, changes, unset, error", [
    ("alice", {"role": ""}, [], InvalidInput),
    ("alice", {"ROLE": "x"}, [], InvalidInput),
    ("alice", {}, ["nothing"], InvalidInput),
    ("alice", {f"k{i}": "v" for i in range(17)}, [], InvalidInput),
    ("nobody", {"role": "x"}, [], NotFound),
])
def test_bad_attributes_are_refused_and_change_nothing(world, name, changes, unset, error):
    provider, _, _ = world
    before = _state(provider)
    with pytest.raises(error):
        membership.set_attributes(provider, "lan", name, changes, unset)
    assert _state(provider) == before


def test_group_metadata_is_signed_and_the_group_expiry_stops_enrollment(world):
    provider, _, clock = world
    meta = membership.set_group_metadata(provider, "lan", {"org": "acme", "contact": "ops@acme"}, T0 + 100,
                                         owners=["bob", "alice"])
    assert meta == {"provider_id": SIGNER.public.fingerprint(), "expires_at": T0 + 100,
                    "owner": {"contact": "ops@acme", "org": "acme"}, "owners": ["alice", "bob"]}
    archive = verify_archive(provider.store.archive("lan")[1], SIGNER.public)
    assert archive.metadata.expires_at == T0 + 100 and dict(archive.metadata.owner)["org"] == "acme"
    assert archive.metadata.owners == ("alice", "bob")  # the roles, signed
    before = _state(provider)
    for bad in (["alice", "alice"], ["bad name"]):
        with pytest.raises(InvalidInput):
            membership.set_group_metadata(provider, "lan", owners=bad)
    assert _state(provider) == before
    secret = provider.invite("lan", "carol", 3600)
    clock.t = T0 + 101
    with pytest.raises(Forbidden, match="expired"):
        enroll_with(provider, secret, "carol")
    with pytest.raises(Forbidden, match="expired"):
        membership.invite(provider, "lan", "dave", 3600)
    assert membership.set_group_metadata(provider, "lan", clear_expiry=True)["expires_at"] is None
    enroll_with(provider, secret, "carol")


# --- the 410 -------------------------------------------------------------------------------------------


def _signed_get(client, key, name, path):
    headers: dict = {}
    sign_headers("GET", "http://testserver" + path, headers, b"", name, key)
    return client.get(path, headers=headers)


def test_a_removed_member_gets_410_with_the_reason_others_401(world):
    TestClient = pytest.importorskip("starlette.testclient").TestClient
    provider, keys, _ = world
    provider.clock = __import__("time").time  # the signatures carry the real time
    provider.started_at = provider.clock() - 2
    provider.remove_member("lan", "bob")
    asgi, _ = create_app(provider, Settings(member_rate=1000, member_burst=1000))
    with TestClient(asgi, client=("127.0.0.1", 4000)) as client:
        gone = _signed_get(client, keys["bob"], "bob", "/v1/groups/lan/archive")
        assert gone.status_code == 410 and "removed" in gone.json()["detail"]
        from cryptography.hazmat.primitives.asymmetric import ed25519  # noqa: PLC0415

        stranger = _signed_get(client, ed25519.Ed25519PrivateKey.generate(), "bob", "/v1/groups/lan/archive")
        assert stranger.status_code == 401  # bob's name with another key: nothing learnt
        assert _signed_get(client, keys["alice"], "alice", "/v1/groups/lan/archive").status_code == 200


def test_the_archive_without_extensions_has_none_of_their_keys(world):
    """Absent = none: a group without attributes or deadlines signs member entries of the old shape."""
    provider, _, _ = world
    document = json.loads(json.loads(provider.store.archive("lan")[1])["document"])
    assert all(set(m) == {"name", "index", "addresses", "endpoints", "ed25519_public", "kem_public", "instance"}
               for m in document["members"])
    assert set(document["group_metadata"]) == {"provider_id"}
    assert ProviderKeys.from_json(SIGNER.public.to_json()).fingerprint() == document["group_metadata"]["provider_id"]


@pytest.mark.parametrize("kind", STORE_KINDS)
def test_schema_2_database_is_migrated_to_the_membership_columns(kind, request):
    from provider.tables import SCHEMA_VERSION  # noqa: PLC0415

    store = fresh_store(kind, request)
    provider, _ = memory_provider(("alice",), signer=SIGNER, store=store)
    with store.write() as conn:  # back to schema 2: without the v3 columns and table
        for table, column in (("members", "attributes"), ("members", "expires_at"), ("tokens", "max_uses"),
                              ("tokens", "uses"), ("tokens", "revoked_at"), ("tokens", "attributes"),
                              ("tokens", "member_ttl"), ("groups", "owner_fields"), ("groups", "expires_at"),
                              ("groups", "owners")):
            conn.exec_driver_sql(f'ALTER TABLE {table} DROP COLUMN "{column}"')
        conn.exec_driver_sql("DROP TABLE removed")
        conn.exec_driver_sql("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    store.check_schema()
    with store.read() as conn:
        assert conn.exec_driver_sql("SELECT value FROM meta WHERE key = 'schema_version'").scalar() == str(SCHEMA_VERSION)
        row = conn.execute(select(members).where(members.c.name == "alice")).first()
    assert row.attributes is None and row.expires_at is None
    assert [t["state"] for t in membership.list_tokens(provider, "lan")] == ["used"]
    membership.set_attributes(provider, "lan", "alice", {"role": "db"})  # the new columns work
    store.close()
