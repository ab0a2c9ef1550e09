"""Audit retention (provider/retention.py) with a fake clock and an in-memory store."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import insert

from grouptun.errors import ConfigError
from provider.cli import main
from provider.retention import DAYS, AuditPruner, AuditRetention
from provider.store import Store, audit_rows
from provider.tables import audit
from provider_helpers import STORE_KINDS, fresh_store
from test_provider_epochs import T0, FakeClock


@pytest.fixture(params=STORE_KINDS)
def store(request):
    store = fresh_store(request.param, request)
    yield store
    store.close()


def _rows(store: Store, stamps) -> None:
    with store.write() as conn:
        conn.execute(insert(audit), [{"ts": t, "actor": "admin", "action": "invite", "group_name": "lan",
                                      "detail": "{}"} for t in stamps])


def _audit(store: Store) -> list:
    with store.read() as conn:
        return audit_rows(conn, 0, 10**9)


# --- the config keys --------------------------------------------------------------------------------


def test_defaults_and_valid_values():
    assert AuditRetention.from_config({}) == AuditRetention(90.0, 1_000_000)
    assert AuditRetention.from_config({"audit_keep_days": 7.5, "audit_keep_rows": 5000}) == AuditRetention(7.5, 5000)
    assert AuditRetention.from_config(AuditRetention(30, 2000).to_config()) == AuditRetention(30.0, 2000)


@pytest.mark.parametrize("config, key", [
    ({"audit_keep_days": "90"}, "audit_keep_days"),
    ({"audit_keep_days": True}, "audit_keep_days"),
    ({"audit_keep_days": 0}, "audit_keep_days"),
    ({"audit_keep_days": 40000}, "audit_keep_days"),
    ({"audit_keep_days": float("nan")}, "audit_keep_days"),
    ({"audit_keep_rows": 10.5}, "audit_keep_rows"),
    ({"audit_keep_rows": 999}, "audit_keep_rows"),
    ({"audit_keep_rows": None}, "audit_keep_rows"),
])
def test_bad_values_name_the_key(config, key):
    with pytest.raises(ConfigError) as info:
        AuditRetention.from_config(config)
    assert info.value.key == key and key in str(info.value)


# --- pruning ----------------------------------------------------------------------------------------


def test_old_rows_go_recent_rows_stay_and_the_run_is_noted(store):
    clock = FakeClock()
    _rows(store, [T0 - 100 * DAYS + k for k in range(30)] + [T0 - 10 * DAYS + k for k in range(20)])
    pruner = AuditPruner(store, AuditRetention(keep_days=90), clock)
    assert pruner.maybe_prune() == 30
    rows = _audit(store)
    assert [r.ts for r in rows[:-1]] == [T0 - 10 * DAYS + k for k in range(20)]
    note = rows[-1]
    assert (note.action, note.actor) == ("audit-pruned", "provider")
    assert json.loads(note.detail)["rows"] == 30 and json.loads(note.detail)["bound"] == "age"


def test_runs_at_most_once_per_interval(store):
    clock = FakeClock()
    pruner = AuditPruner(store, AuditRetention(keep_days=1), clock, interval=3600)
    assert pruner.maybe_prune() == 0  # nothing to do, and the next run is an interval away
    _rows(store, [T0 - 2 * DAYS])
    clock.t += 3599
    assert pruner.maybe_prune() == 0 and len(_audit(store)) == 1  # not due yet
    clock.t += 1
    assert pruner.maybe_prune() == 1


def test_row_cap_keeps_the_newest_and_a_run_is_bounded(store):
    clock = FakeClock()
    _rows(store, [T0 - 1000 + k * 0.5 for k in range(1500)])  # all young: only the count bound applies
    pruner = AuditPruner(store, AuditRetention(keep_rows=1000), clock, batch=100, max_batches=2)
    assert pruner.maybe_prune() == 200  # bounded: 2 transactions of 100
    assert len(_audit(store)) == 1300 + 1
    assert pruner.maybe_prune() == 200  # unfinished, so due again at once (same clock)
    assert pruner.maybe_prune() == 100 + 2  # the rest, and the two notes beyond the cap
    rows = _audit(store)
    assert len(rows) == 1000 + 1
    assert rows[0].ts == T0 - 1000 + 502 * 0.5  # the newest 1000 minus two: the notes count against the cap
    clock.t += 10
    assert pruner.maybe_prune() == 0  # done: not due before the interval


def test_provider_owns_a_pruner_on_its_clock(store):
    from provider.service import Provider  # noqa: PLC0415

    clock = FakeClock()
    provider = Provider(store, lambda: None, clock=clock, audit_retention=AuditRetention(keep_days=1))
    provider.refused("address:192.0.2.1", "/v1/x", None, "bad signature")
    clock.t += 2 * DAYS
    assert provider.audit_pruner.maybe_prune() == 1


# --- the CLI: init writes the keys, a bad value stops every command ---------------------------------


def test_init_writes_the_defaults_and_a_bad_value_is_refused_by_name(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("GROUPTUN_PROVIDER_PASSPHRASE", raising=False)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    state = tmp_path / "state"
    assert main(["init", "--state", str(state), "--url", "https://127.0.0.1:9443"]) == 0
    config = json.loads((state / "provider.json").read_text())
    assert (config["audit_keep_days"], config["audit_keep_rows"]) == (90.0, 1_000_000)
    assert main(["group", "list", "--state", str(state)]) == 0
    config["audit_keep_rows"] = "lots"
    (state / "provider.json").write_text(json.dumps(config))
    capsys.readouterr()
    assert main(["group", "list", "--state", str(state)]) == ConfigError.exit_code
    assert "audit_keep_rows" in capsys.readouterr().err
