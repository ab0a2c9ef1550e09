"""The admin CLI's membership commands and their --json shapes (README "Admin --json shapes")."""

from __future__ import annotations

import json

import pytest

from provider_helpers import admin, init_provider


@pytest.fixture(scope="module")
def state(tmp_path_factory):
    env = init_provider(tmp_path_factory.mktemp("cli"))
    return env.state


def _json(state, *args):
    return json.loads(admin(state, *args, "--json").stdout)


def test_add_group_invite_tokens_and_members_print_their_documented_shapes(state):
    made = _json(state, "group", "create", "ops", "--cidr", "10.90.0.0/24", "--members", "a,b",
                 "--attr", "role=web", "--owner", "org=acme", "--expires", "30d", "--owners", "a")
    assert set(made) == {"group", "tokens"} and made["group"]["name"] == "ops"
    assert set(made["group"]["metadata"]) == {"provider_id", "expires_at", "owner", "owners"}
    assert made["group"]["metadata"]["owners"] == ["a"]
    assert made["group"]["metadata"]["owner"] == {"org": "acme"}
    assert [(t["member"], t["token"][:8]) for t in made["tokens"]] == [("a", "gtjoin1-"), ("b", "gtjoin1-")]
    key = _json(state, "invite", "ops", "--reusable", "--uses", "20", "--expires", "24h", "--attr", "role=ci",
                "--member-ttl", "8h")
    assert set(key) == {"token", "id", "group", "member", "reusable", "max_uses", "expires_at", "attributes",
                        "member_ttl"}
    assert (key["member"], key["reusable"], key["max_uses"], key["member_ttl"]) == (None, True, 20, 28800.0)
    listed = _json(state, "tokens", "list", "ops")
    assert [t["id"] for t in listed][-1] == key["id"] and listed[-1]["state"] == "active"
    assert set(listed[0]) == {"id", "member", "reusable", "uses", "max_uses", "state", "created_at", "expires_at",
                              "revoked_at", "attributes", "member_ttl"}
    assert _json(state, "tokens", "revoke", "ops", key["id"])["state"] == "revoked"
    assert _json(state, "tokens", "list", "ops")[-1]["state"] == "revoked"
    assert _json(state, "member", "list", "ops") == []
    meta = _json(state, "group", "set-meta", "ops", "--no-expiry", "--owner", "org=other", "--owners", "b,a")
    assert meta["expires_at"] is None and meta["owner"] == {"org": "other"} and meta["owners"] == ["a", "b"]
    assert _json(state, "group", "set-meta", "ops", "--owners", "")["owners"] == []


@pytest.mark.parametrize("args, code, reason", [
    (("invite", "lan", "--reusable"), 64, "--uses"),
    (("invite", "lan", "x", "--attr", "role"), 64, "not key=value"),
    (("member", "set-attr", "lan", "nobody", "role=x"), 66, "no member"),
    (("member", "extend", "lan", "nobody", "4h"), 66, "no member"),
    (("tokens", "revoke", "lan", "0000000000000000"), 66, "no token"),
    (("group", "create", "g2", "--cidr", "10.91.0.0/24", "--members", "a,,a"), 64, "twice"),
])
def test_bad_admin_input_exits_with_a_reason_and_changes_nothing(state, args, code, reason):
    admin(state, "group", "create", "lan", "--cidr", "10.77.0.0/24", check=False)
    before = admin(state, "tokens", "list", "lan", "--json").stdout
    proc = admin(state, *args, check=False)
    assert proc.returncode == code and reason in proc.stderr
    assert admin(state, "tokens", "list", "lan", "--json").stdout == before
    assert "g2" not in admin(state, "group", "list").stdout


def test_a_corrupt_database_is_one_line_naming_it_and_exits_74(tmp_path):
    state = init_provider(tmp_path).state
    db = state / "provider.db"
    db.write_bytes(b"not a database, " * 256)  # what a torn copy or a wrong file looks like to SQLite
    proc = admin(state, "group", "list", check=False)
    assert proc.returncode == 74, proc.stderr
    assert "database error" in proc.stderr and "not a database" in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert db.read_bytes() == b"not a database, " * 256  # nothing was written to it
