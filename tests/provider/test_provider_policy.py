"""Access policy at the provider (provider/policy.py, cli_policy.py): set, show, clear, the 400 naming the rule.

SQLite and PostgreSQL (STORE_KINDS)."""

from __future__ import annotations

import json

import pytest

from grouptun.core.archive import verify_archive
from grouptun.core.envelope import ProviderKeys

from provider import membership, policy
from provider.errors import InvalidInput, NotFound
from provider.keys import Signer
from provider.store import audit_rows
from provider_helpers import (STORE_KINDS, TestMember, admin, fresh_store, init_provider, memory_provider,
                              own_archive as _archive, state_but_audit as _state)

SIGNER = Signer.generate()
WEB_DB = "role=web -> role=db tcp/5432 allow\ndefault deny\n"


@pytest.fixture(params=STORE_KINDS)
def provider(request):
    provider, _ = memory_provider(signer=SIGNER, store=fresh_store(request.param, request))
    membership.set_attributes(provider, "lan", "alice", {"role": "web"})
    membership.set_attributes(provider, "lan", "bob", {"role": "db"})
    yield provider
    provider.store.close()




def test_set_publishes_a_new_archive_in_the_same_epoch_show_and_clear(provider):
    before = _archive(provider)
    assert before.policy is None
    shown = policy.set_policy(provider, "lan", WEB_DB)
    assert shown == {"group": "lan", "version": 1, "text": WEB_DB.strip(), "rules": [WEB_DB.splitlines()[0]],
                     "default": "deny", "declared": []}
    after = _archive(provider)
    assert after.version > before.version and after.epoch == before.epoch  # no new epoch
    assert after.policy.version == 1 and str(after.policy.policy) == WEB_DB.strip()
    assert policy.show_policy(provider, "lan") == shown
    same = _archive(provider).version
    assert policy.set_policy(provider, "lan", WEB_DB.replace(" -> ", "  ->  "))["version"] == 1  # same canonical text
    assert _archive(provider).version == same
    assert policy.set_policy(provider, "lan", "* -> * any allow; default deny")["version"] == 2
    cleared = policy.clear_policy(provider, "lan")
    assert cleared["version"] is None and _archive(provider).policy is None
    assert policy.set_policy(provider, "lan", WEB_DB)["version"] == 3  # versions keep increasing
    with provider.store.read() as conn:
        actions = [r.action for r in audit_rows(conn, 0, 10**9)]
    assert actions.count("policy-set") == 3 and actions.count("policy-clear") == 1


@pytest.mark.parametrize("text, fault", [
    ("role=web -> role=db tcp/5432 allow\nrole=web -> role=db tcp/99999 allow\ndefault deny",
     "line 2 ('role=web -> role=db tcp/99999 allow'): ports '99999'"),
    ("role=web -> role=db tcp/5432 allow", "no 'default allow' or 'default deny'"),
    ("# ok\nrole=web -> role=db tcp/5432 allow\nteam=x -> role=db any allow\ndefault deny",
     "line 3 ('team=x -> role=db any allow'): unknown attribute key 'team'"),
    ("role=web -> rol=db any allow; default allow",
     "line 1 ('role=web -> rol=db any allow'): unknown attribute key 'rol'"),
])
def test_a_bad_policy_is_a_400_naming_the_rule_and_changes_nothing(provider, text, fault):
    policy.set_policy(provider, "lan", WEB_DB)
    before = _state(provider)
    with pytest.raises(InvalidInput) as info:
        policy.set_policy(provider, "lan", text)
    assert info.value.http_status == 400 and fault in info.value.reason
    assert _state(provider) == before


def test_keys_declared_or_given_by_a_pending_token_are_known(provider):
    declared = policy.set_policy(provider, "lan", "declare team\nteam=x -> * any allow\ndefault deny")
    assert declared["declared"] == ["team"]
    membership.invite(provider, "lan", "carol", 3600, attributes={"site": "ber"})
    assert policy.set_policy(provider, "lan", "site=ber -> * any allow\ndefault deny")["version"] == 2


def test_unknown_group_and_clearing_no_policy(provider):
    with pytest.raises(NotFound):
        policy.set_policy(provider, "nope", WEB_DB)
    with pytest.raises(NotFound, match="no policy"):
        policy.clear_policy(provider, "lan")


def test_admin_cli_set_from_stdin_show_json_clear_and_a_refusal(tmp_path):
    env = init_provider(tmp_path)
    admin(env.state, "group", "create", "lan", "--cidr", "10.77.0.0/24")
    admin(env.state, "invite", "lan", "a", "--attr", "role=web")
    path = tmp_path / "policy.txt"
    path.write_text(WEB_DB.replace("role=db", "role=web"))
    assert json.loads(admin(env.state, "policy", "set", "lan", str(path), "--json").stdout)["version"] == 1
    shown = json.loads(admin(env.state, "policy", "show", "lan", "--json").stdout)
    assert set(shown) == {"group", "version", "text", "rules", "default", "declared"} and shown["default"] == "deny"
    assert "policy version 1" in admin(env.state, "policy", "show", "lan").stdout
    bad = admin(env.state, "policy", "set", "lan", "-", check=False, input_text="role=web -> * tcp/x allow\n")
    assert bad.returncode == 64 and "line 1 ('role=web -> * tcp/x allow')" in bad.stderr
    assert json.loads(admin(env.state, "policy", "clear", "lan", "--json").stdout)["version"] is None
    assert "no policy" in admin(env.state, "policy", "show", "lan").stdout


@pytest.mark.parametrize("kind", STORE_KINDS)
def test_a_schema_3_database_is_migrated_to_the_policy_columns(kind, request):
    from provider.tables import SCHEMA_VERSION  # noqa: PLC0415

    store = fresh_store(kind, request)
    provider, _ = memory_provider(("alice",), signer=SIGNER, store=store)
    with store.write() as conn:  # back to schema 3: without the policy columns
        for column in ("policy", "policy_version"):
            conn.exec_driver_sql(f'ALTER TABLE groups DROP COLUMN "{column}"')
        conn.exec_driver_sql("UPDATE meta SET value = '3' WHERE key = 'schema_version'")
    store.check_schema()
    with store.read() as conn:
        version = conn.exec_driver_sql("SELECT value FROM meta WHERE key = 'schema_version'").scalar()
    assert version == str(SCHEMA_VERSION)
    assert policy.show_policy(provider, "lan")["version"] is None and _archive(provider).policy is None
    assert policy.set_policy(provider, "lan", "* -> * any allow\ndefault deny")["version"] == 1
    store.close()


def test_a_policy_set_by_the_admin_cli_reaches_a_watching_member_in_the_same_epoch(provider_env):
    members = [TestMember(n) for n in ("pa", "pb")]
    for m in members:
        m.enroll(provider_env.invite(m.name))
    admin(provider_env.state, "member", "set-attr", "lan", "pa", "role=web")
    pinned = ProviderKeys.from_json(provider_env.config["provider_keys"])
    client = members[1].client()
    before = verify_archive(client.archive(), pinned)
    assert before.policy is None
    admin(provider_env.state, "policy", "set", "lan", "-", input_text="role=web -> * tcp/443 allow; default deny")
    raw = client.watch(before.version, timeout=5)  # issue 17: members see a policy change within 5 s
    assert raw is not None, "the watch did not deliver the new policy within its 5 s long-poll"
    after = verify_archive(raw, pinned)
    assert after.policy is not None and str(after.policy.policy) == "role=web -> * tcp/443 allow\ndefault deny"
    assert after.epoch.epoch == before.epoch.epoch
    bad = admin(provider_env.state, "policy", "set", "lan", "-", check=False, input_text="role=wbe -> * any allow")
    assert bad.returncode == 64 and "no 'default allow' or 'default deny'" in bad.stderr
    assert verify_archive(client.archive(), pinned).version == after.version
