"""Export rules at the provider (provider/exportrules.py, cli_exportrules.py): set, list, remove, the 400 naming
the rule, the archive re-signed in the same epoch. SQLite and PostgreSQL (STORE_KINDS)."""

from __future__ import annotations

import json

import pytest

from provider import exportrules, membership
from provider.errors import InvalidInput, NotFound
from provider.keys import Signer
from provider.store import audit_rows
from provider_helpers import (STORE_KINDS, admin, fresh_store, init_provider, memory_provider,
                              own_archive as _archive, state_but_audit as _state)

SIGNER = Signer.generate()


@pytest.fixture(params=STORE_KINDS)
def provider(request):
    provider, _ = memory_provider(signer=SIGNER, store=fresh_store(request.param, request))
    membership.set_attributes(provider, "lan", "alice", {"role": "db", "site": "hel"})
    membership.set_attributes(provider, "lan", "bob", {"role": "web"})
    yield provider
    provider.store.close()




def test_set_list_remove_re_sign_the_archive_in_the_same_epoch(provider):
    before = _archive(provider)
    assert before.export_rules is None
    assert exportrules.set_rule(provider, "lan", "db-admin", "site=hel,role=db") == {
        "group": "lan", "label": "db-admin", "selector": "role=db,site=hel"}  # canonical: pairs sorted
    after = _archive(provider)
    assert after.version > before.version and after.epoch == before.epoch  # no new epoch
    assert after.export_rules.to_json() == {"db-admin": "role=db,site=hel"}
    assert after.export_rules.refusal("db-admin", dict(after.member("alice").attributes)) is None
    assert after.export_rules.refusal("db-admin", dict(after.member("bob").attributes)) is not None
    same = after.version
    exportrules.set_rule(provider, "lan", "db-admin", "role=db,site=hel")  # the same rule again: nothing
    assert _archive(provider).version == same
    exportrules.set_rule(provider, "lan", "web", "*")
    assert exportrules.list_rules(provider, "lan") == {"group": "lan", "rules": [
        {"label": "db-admin", "selector": "role=db,site=hel"}, {"label": "web", "selector": "*"}]}
    assert exportrules.remove_rule(provider, "lan", "db-admin")["selector"] is None
    assert _archive(provider).export_rules.to_json() == {"web": "*"}
    exportrules.remove_rule(provider, "lan", "web")
    assert _archive(provider).export_rules is None and exportrules.list_rules(provider, "lan")["rules"] == []
    with provider.store.read() as conn:
        actions = [r.action for r in audit_rows(conn, 0, 10**9)]
    assert actions.count("export-rule-set") == 2 and actions.count("export-rule-remove") == 2


@pytest.mark.parametrize("label, selector, fault", [
    ("db-admin", "team=x", "'db-admin' ('team=x'): unknown attribute key 'team': no member or join token has it"),
    ("db-admin", "role=db,rol=db", "unknown attribute key 'rol'"),
    ("db-admin", "role", "export rule 'db-admin' ('role'): selector: 'role' is not key=value"),
    ("db-admin", "", "an empty selector"),
    ("db admin", "role=db", "export rule 'db admin': the label must be 1..64 characters"),
    ("web", "Role=db", "key 'Role' must match"),
])
def test_a_bad_rule_is_a_400_naming_it_and_changes_nothing(provider, label, selector, fault):
    exportrules.set_rule(provider, "lan", "web", "role=web")
    before = _state(provider)
    with pytest.raises(InvalidInput) as info:
        exportrules.set_rule(provider, "lan", label, selector)
    assert info.value.http_status == 400 and fault in info.value.reason
    assert _state(provider) == before


def test_a_key_a_pending_token_gives_is_known_unknown_group_and_label(provider):
    membership.invite(provider, "lan", "carol", 3600, attributes={"team": "ops"})
    assert exportrules.set_rule(provider, "lan", "ops", "team=ops")["selector"] == "team=ops"
    with pytest.raises(NotFound):
        exportrules.set_rule(provider, "nope", "ops", "*")
    with pytest.raises(NotFound, match="no export rule for label 'backup'"):
        exportrules.remove_rule(provider, "lan", "backup")


def test_admin_cli_set_list_json_remove_and_a_refusal_exits_64(tmp_path):
    env = init_provider(tmp_path)
    admin(env.state, "group", "create", "lan", "--cidr", "10.77.0.0/24")
    admin(env.state, "invite", "lan", "a", "--attr", "role=db")
    shown = json.loads(admin(env.state, "export-rule", "set", "lan", "db-admin", "role=db", "--json").stdout)
    assert shown == {"group": "lan", "label": "db-admin", "selector": "role=db"}
    assert json.loads(admin(env.state, "export-rule", "list", "lan", "--json").stdout)["rules"] == [
        {"label": "db-admin", "selector": "role=db"}]
    assert "db-admin" in admin(env.state, "export-rule", "list", "lan").stdout
    bad = admin(env.state, "export-rule", "set", "lan", "db-admin", "rank=1", check=False)
    assert bad.returncode == 64 and "'db-admin' ('rank=1'): unknown attribute key 'rank'" in bad.stderr
    assert "open to every member" in admin(env.state, "export-rule", "remove", "lan", "db-admin").stdout
    assert "no export rules" in admin(env.state, "export-rule", "list", "lan").stdout
    missing = admin(env.state, "export-rule", "remove", "lan", "db-admin", check=False)
    assert missing.returncode != 0 and "no export rule for label 'db-admin'" in missing.stderr


@pytest.mark.parametrize("kind", STORE_KINDS)
def test_a_database_before_export_rules_is_migrated(kind, request):
    from provider.tables import MIGRATIONS, SCHEMA_VERSION, _export_rules_column  # noqa: PLC0415

    step = next(version for version, fn in MIGRATIONS.items() if fn is _export_rules_column)
    store = fresh_store(kind, request)
    provider, _ = memory_provider(("alice",), signer=SIGNER, store=store)
    with store.write() as conn:  # back to the schema before the step: without the column
        conn.exec_driver_sql('ALTER TABLE groups DROP COLUMN "export_rules"')
        conn.exec_driver_sql(f"UPDATE meta SET value = '{step}' WHERE key = 'schema_version'")
    store.check_schema()
    with store.read() as conn:
        version = conn.exec_driver_sql("SELECT value FROM meta WHERE key = 'schema_version'").scalar()
    assert version == str(SCHEMA_VERSION)
    assert exportrules.list_rules(provider, "lan")["rules"] == [] and _archive(provider).export_rules is None
    membership.set_attributes(provider, "lan", "alice", {"role": "db"})
    assert exportrules.set_rule(provider, "lan", "db", "role=db")["selector"] == "role=db"
    store.close()
