"""Removing a linked provider's member at its home (provider/linkremove.py; PROTOCOL.md 8): the home stops relaying
for it at once and tells the owner, which opens an epoch without it; an unreachable owner is told later (queued in
the database, retried with backoff), and every link's contact state is on record (provider/linkstate.py). Both
providers in memory, the home's link transport into the owner's app (test_provider_remote's fixture)."""

from __future__ import annotations

import json
import time

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from grouptun.control.reqsign import sign_headers
from grouptun.control.client import ProviderClient
from grouptun.errors import ProviderRefused
from provider import admin_ops, linked, linkremove, links, linkstate
from provider.errors import LinkError, NotFound
from provider.store import audit_rows
from provider.tables import link_removals
from provider_helpers import (STORE_KINDS, TestMember, admin, database_url_for, fresh_store, init_provider,
                              memory_provider, migrate_from, own_archive)
from test_provider_linked import HOME_SIGNER, _refusals, sides  # noqa: F401 -- the two linked providers
from test_provider_remote import erin  # noqa: F401 -- erin@partner, enrolled through her home


def _audit(provider, action: str) -> list[dict]:
    with provider.store.read() as conn:
        return [json.loads(r.detail) for r in audit_rows(conn, 0, 10**9) if r.action == action]


def _link(provider, name: str = "owner"):
    with provider.store.read() as conn:
        return links.link_row(conn, name)


def _unreachable(*_request):
    raise LinkError("link 'owner': https://owner.example unreachable (ConnectionError)")


def test_removal_at_the_home_stops_the_relay_and_the_owner_opens_an_epoch_without_her(erin):  # noqa: F811
    owner, home, member = erin
    before = own_archive(owner)
    assert before.member("erin@partner") is not None and member.request("GET", "/archive").status_code == 200
    done = admin_ops.member_remove(home, "acme", "erin")
    after = own_archive(owner)
    assert (done["pending"], done["epoch"]) == (False, after.epoch.epoch) and after.epoch.epoch > before.epoch.epoch
    assert after.member("erin@partner") is None and sorted(m.name for m in after.members) == ["alice", "bob"]
    gone = member.request("GET", "/archive")  # nothing relayed for her any more, and she is told why (410)
    assert gone.status_code == 410 and "removed from 'acme' by its home provider's admin" in gone.json()["detail"]
    assert _audit(owner, "link-member-remove") == [{"member": "erin@partner"}]
    assert [a["member"] for a in _audit(home, "member-remove")] == ["erin"]
    assert _audit(home, "link-remove-confirmed")[0]["status"] == 200
    shown = links.list_links(home)[0]
    assert (shown["pending_removals"], shown["contact"]) == ([], "up")
    assert linkstate.describe(shown).startswith("up (last contact ") and shown["last_ok_at"] is not None
    assert links.list_links(owner)[0]["contact"] == "up"  # the owner answered the home's requests
    with pytest.raises(NotFound, match="no member 'erin' in group 'acme'"):
        admin_ops.member_remove(home, "acme", "erin")


def test_an_unreachable_owner_is_told_once_it_is_back_and_the_member_is_cut_off_meanwhile(erin):  # noqa: F811
    owner, home, member = erin
    working = home.link_send
    home.link_send = lambda row: _unreachable
    version = owner.store.archive("lan")[0]
    done = admin_ops.member_remove(home, "acme", "erin")
    assert (done["pending"], done["epoch"]) == (True, None)
    assert member.request("GET", "/archive").status_code == 410  # cut off here at once, owner or not
    shown = links.list_links(home)[0]
    assert shown["contact"] == "unreachable" and "unreachable (ConnectionError)" in shown["last_failure"]
    assert linkstate.describe(shown).startswith("unreachable since ") and shown["down_since"] is not None
    pending = shown["pending_removals"]
    assert [(p["group"], p["member"], p["attempts"]) for p in pending] == [("acme", "erin", 1)]
    assert pending[0]["next_at"] - home.clock() > 1.0  # backed off, not hammering the owner
    assert owner.store.archive("lan")[0] == version  # the owner heard nothing yet
    assert linkremove.retry_due(home) == 0  # not due yet
    real_clock = home.clock
    home.clock = lambda: real_clock() + 3.0
    assert linkremove.retry_due(home) == 0  # due, still unreachable: a second attempt, a longer wait
    with home.store.read() as conn:
        row = conn.execute(link_removals.select()).one()
    assert row.attempts == 2 and row.next_at - home.clock() > 3.0
    home.link_send = working
    home.clock = lambda: real_clock() + 10.0
    linkremove.retry_due(home)  # (the home app's own timer, running beside the test, may be the one to deliver)
    _wait_for(lambda: own_archive(owner).member("erin@partner") is None)
    assert owner.store.archive("lan")[0] > version
    assert links.list_links(home)[0]["pending_removals"] == [] and links.list_links(home)[0]["contact"] == "up"
    failed = [a["attempts"] for a in _audit(home, "link-remove-failed")]
    assert failed == list(range(1, len(failed) + 1)) and len(failed) >= 2
    assert _audit(home, "link-remove-confirmed") == [
        {"as_name": "erin@partner", "attempts": len(failed) + 1, "member": "erin", "status": 200}]


def test_the_owner_takes_a_removal_only_from_the_link_the_member_came_through(erin):  # noqa: F811
    owner, home, _ = erin
    with owner.store.write() as conn:  # erin@partner as though another provider had forwarded her
        conn.exec_driver_sql("UPDATE members SET home = 'ee' WHERE name = 'erin@partner'")
    url = "https://owner.example/v1/links/groups/lan/members/remove"
    send = home.link_send(None)
    status, answer = linked.exchange(home, _link(home), send, "POST", url, "erin", b"{}")
    assert (status, json.loads(answer)["detail"]) == (403, "'erin@partner' did not come through link 'partner'")
    forged = {linked.MEMBER_HEADER: "erin", linked.CREDENTIAL_HEADER: "none", "content-type": "application/json"}
    sign_headers("POST", url, forged, b"{}", HOME_SIGNER.public.fingerprint(), ed25519.Ed25519PrivateKey.generate(),
                 extra=linked.LINK_COVERED)
    assert send("POST", url, forged, b"{}")[0] == 401
    assert own_archive(owner).member("erin@partner") is not None  # refused: nothing changed
    reasons = [detail["reason"] for _, detail in _refusals(owner)]
    assert "'erin@partner' did not come through link 'partner'" in reasons and "signature not valid" in reasons
    status, answer = linked.exchange(home, _link(home), send, "POST", url, "nobody", b"{}")
    assert status == 404  # the home takes a 404 as done: nothing is left to remove at the owner


def test_a_removal_the_owner_refuses_for_good_is_not_retried_and_says_so(erin):  # noqa: F811
    owner, home, _ = erin
    with owner.store.write() as conn:  # the owner holds erin@partner as another provider's: it will always say 403
        conn.exec_driver_sql("UPDATE members SET home = 'ee' WHERE name = 'erin@partner'")
    done = admin_ops.member_remove(home, "acme", "erin")
    assert done["pending"] is False and "answered 403" in done["refused"]
    with home.store.read() as conn:
        assert conn.execute(link_removals.select()).first() is None  # nothing left for the timer to resend
    assert [a["status"] for a in _audit(home, "link-remove-refused")] == [403]
    assert _audit(home, "link-remove-failed") == []


def test_the_timer_claims_a_due_removal_before_sending_it(erin):  # noqa: F811
    """An attempt under way owns its row (IN_FLIGHT): a second timer tick, or a replica's, finds nothing due."""
    owner, home, _ = erin
    working, seen = home.link_send, []
    home.link_send = lambda row: _unreachable
    admin_ops.member_remove(home, "acme", "erin")  # pending: the inline attempt failed
    real_clock = home.clock
    home.clock = lambda: real_clock() + 3.0

    def counting(row):
        send = working(row)

        def once(*args):
            with home.store.read() as conn:
                seen.append(conn.execute(link_removals.select()).one().next_at - home.clock())
            return send(*args)
        return once
    home.link_send = counting
    linkremove.retry_due(home)  # (or the home app's own timer, beside the test: whichever claims it first)
    _wait_for(lambda: own_archive(owner).member("erin@partner") is None)
    time.sleep(0.5)  # a second sender, had there been one, would have been counted by now
    assert len(seen) == 1 and seen[0] > linkremove.IN_FLIGHT - 1.0  # sent once, and claimed while sending


def test_removing_the_link_drops_removals_that_can_no_longer_be_delivered(erin):  # noqa: F811
    owner, home, _ = erin
    home.link_send = lambda row: _unreachable
    admin_ops.member_remove(home, "acme", "erin")
    removed = links.remove_link(home, "owner")
    assert [p["member"] for p in removed["pending_removals"]] == ["erin"]
    with home.store.read() as conn:
        assert conn.execute(link_removals.select()).first() is None
    assert _audit(home, "link-remove")[0]["dropped_removals"] == ["erin"]


def test_a_relay_to_an_unreachable_owner_is_503_naming_the_links_state(erin):  # noqa: F811
    owner, home, member = erin
    home.link_send = lambda row: _unreachable
    refused = member.request("GET", "/archive")
    assert refused.status_code == 503
    body = refused.json()
    assert body["link"]["contact"] == "unreachable" and body["link"]["name"] == "owner"
    assert "unreachable since" in body["detail"] and "ConnectionError" in body["detail"]
    first = body["link"]["down_since"]
    assert member.request("GET", "/archive").json()["link"]["down_since"] == first  # since the first failure


@pytest.mark.parametrize("kind", STORE_KINDS)
def test_a_database_before_link_state_is_migrated(kind, request):
    from provider.tables import LINK_STATE_COLUMNS, MIGRATIONS, SCHEMA_VERSION, _link_state  # noqa: PLC0415

    step = next(version for version, fn in MIGRATIONS.items() if fn is _link_state)
    store = fresh_store(kind, request)
    provider, _ = memory_provider(("alice",), store=store)
    links.add_link(provider, "partner", "https://p.example", "ab" * 32, HOME_SIGNER.public.fingerprint())
    with store.write() as conn:  # back to the schema before the step
        conn.exec_driver_sql('DROP TABLE "link_removals"')
        for column in LINK_STATE_COLUMNS:
            conn.exec_driver_sql(f'ALTER TABLE links DROP COLUMN "{column}"')
        conn.exec_driver_sql(f"UPDATE meta SET value = '{step}' WHERE key = 'schema_version'")
    store.check_schema()
    with store.read() as conn:
        assert conn.exec_driver_sql("SELECT value FROM meta WHERE key = 'schema_version'").scalar() == \
            str(SCHEMA_VERSION)
    shown = links.list_links(provider)[0]
    assert (shown["contact"], shown["last_ok_at"], shown["pending_removals"]) == ("unchecked", None, [])
    store.close()


def _link_args(env) -> list[str]:
    mine = json.loads(admin(env.state, "link", "self", "--json").stdout)
    return ["--url", mine["url"], "--fingerprint", mine["tls_fingerprint"], "--keys-hash", mine["keys_hash"]]


def _client(member) -> ProviderClient:
    """The member's signed requests to its home, as its daemon makes them (keyid: its name at the owner)."""
    return ProviderClient(member.token.provider_urls, member.token.tls_fingerprint, member.result.group,
                          member.result.member_name, member.ed, session_factory=member.sessions)


def _at_owner(owner) -> list[str]:
    return sorted(name for (name,) in owner.rows("SELECT name FROM members"))


def _wait_for(check, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("not within the deadline")
        time.sleep(0.2)


@pytest.mark.parametrize("kind", STORE_KINDS)
def test_two_real_providers_over_https_a_removal_reaches_the_owner_even_after_an_outage(kind, request, tmp_path):
    owner = init_provider(tmp_path / "owner", database_url_for(kind, request))
    partner = init_provider(tmp_path / "partner", database_url_for(kind, request))
    admin(owner.state, "group", "create", "lan", "--cidr", "10.77.0.0/24")
    admin(owner.state, "link", "add", "partner", *_link_args(partner), "--groups", "lan")
    admin(partner.state, "link", "add", "owner", *_link_args(owner))
    owner.server.start()
    partner.server.start()
    try:
        admin(owner.state, "link", "check", "partner")
        admin(partner.state, "link", "check", "owner")
        admin(partner.state, "link", "accept", "owner", "lan", "--as", "acme")
        TestMember("alice").enroll(owner.invite("alice"))
        members = {}
        for name in ("erin", "frank"):
            owner.invite(f"{name}@partner")
            members[name] = TestMember(name)
            members[name].enroll(admin(partner.state, "invite", "acme", name).stdout.strip())
        assert _at_owner(owner) == ["alice", "erin@partner", "frank@partner"]
        assert _client(members["erin"]).archive()  # relayed, before the removal
        done = json.loads(admin(partner.state, "member", "remove", "acme", "erin", "--json").stdout)
        assert done["pending"] is False
        (asked,), = partner.rows("SELECT ts FROM audit WHERE action = 'member-remove'")
        (removed,), = owner.rows("SELECT ts FROM audit WHERE action = 'link-member-remove'")
        print(f"removal at the home to the owner's new epoch: {removed - asked:.3f} s ({kind})")
        assert removed - asked < 5.0  # issue 19 item 6: the owner's new epoch within 5 s of the removal
        assert _at_owner(owner) == ["alice", "frank@partner"] and done["epoch"] is not None
        with pytest.raises(ProviderRefused) as refused:  # the home relays nothing more for her
            _client(members["erin"]).archive()
        assert refused.value.status == 410  # her daemon stops as a removed member's (exit 67)
        owner.server.stop()
        shown = admin(partner.state, "member", "remove", "acme", "frank").stdout
        assert "has not confirmed yet" in shown
        listed = json.loads(admin(partner.state, "link", "list", "--json").stdout)[0]
        assert listed["contact"] == "unreachable" and [p["member"] for p in listed["pending_removals"]] == ["frank"]
        assert "removal pending: frank from acme" in admin(partner.state, "link", "list").stdout
        partner.server.stop()  # a restart of the home loses nothing: the removal is in its database
        owner.server.start()
        partner.server.start()
        _wait_for(lambda: _at_owner(owner) == ["alice"])  # the home's timer delivered it
        listed = json.loads(admin(partner.state, "link", "list", "--json").stdout)[0]
        assert (listed["contact"], listed["pending_removals"]) == ("up", [])
        assert "link-member-remove" in admin(owner.state, "audit").stdout
        assert "link-remove-confirmed" in admin(partner.state, "audit").stdout
    finally:
        owner.server.stop()
        partner.server.stop()


def test_the_metrics_show_each_links_state_and_pending_removals(erin):  # noqa: F811
    from prometheus_client.parser import text_string_to_metric_families  # noqa: PLC0415
    from starlette.testclient import TestClient  # noqa: PLC0415

    from provider.app import Settings, create_app  # noqa: PLC0415

    owner, home, _ = erin
    asgi, _ = create_app(home, Settings(metrics=True))

    def scrape() -> dict:
        with TestClient(asgi, client=("127.0.0.1", 4002)) as client:
            text = client.get("/metrics").text
        return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in text_string_to_metric_families(text)
                for s in f.samples if s.name.startswith("grouptun_provider_link")}

    up = scrape()
    assert up[("grouptun_provider_link_state", (("link", "owner"), ("state", "up")))] == 1.0
    assert up[("grouptun_provider_link_pending_removals", (("link", "owner"),))] == 0.0
    home.link_send = lambda row: _unreachable
    admin_ops.member_remove(home, "acme", "erin")
    down = scrape()
    assert down[("grouptun_provider_link_state", (("link", "owner"), ("state", "unreachable")))] == 1.0
    assert down[("grouptun_provider_link_state", (("link", "owner"), ("state", "up")))] == 0.0
    assert down[("grouptun_provider_link_pending_removals", (("link", "owner"),))] == 1.0


@pytest.mark.parametrize("kind", STORE_KINDS)
def test_a_database_before_remote_tombstones_is_migrated(kind, request):
    from provider.tables import MIGRATIONS, SCHEMA_VERSION, _remote_removed_table  # noqa: PLC0415

    step = next(version for version, fn in MIGRATIONS.items() if fn is _remote_removed_table)
    store = fresh_store(kind, request)
    memory_provider(("alice",), store=store)
    assert migrate_from(store, step, 'DROP TABLE "remote_removed"') == str(SCHEMA_VERSION)
    with store.read() as conn:
        assert conn.exec_driver_sql('SELECT count(*) FROM "remote_removed"').scalar() == 0
    store.close()
