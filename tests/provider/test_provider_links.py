"""Links to other trust providers (provider/links.py, cli_links.py): add, list, remove, every refusal naming its
field and changing nothing, the migration, and the CLI both admins run. SQLite and PostgreSQL (STORE_KINDS)."""

from __future__ import annotations

import json
import time

import pytest
from sqlalchemy import select, update

from grouptun.core.vouch import verify_vouch
from provider import links
from provider.errors import Conflict, InvalidInput, LinkError, NotFound
from provider.keys import Signer
from provider.store import audit_rows
from provider.tables import members
from provider_helpers import STORE_KINDS, admin, dump, fresh_store, init_provider, memory_provider, migrate_from

SIGNER = Signer.generate()
PARTNER_SIGNER = Signer.generate()
PARTNER = PARTNER_SIGNER.public.fingerprint()
TLS = "ab" * 32


@pytest.fixture(params=STORE_KINDS)
def provider(request):
    provider, _ = memory_provider(signer=SIGNER, store=fresh_store(request.param, request))
    yield provider
    provider.store.close()


def _actions(provider) -> list[str]:
    with provider.store.read() as conn:
        return [r.action for r in audit_rows(conn, 0, 10**9)]


def test_add_list_remove_are_audited(provider):
    shown = links.add_link(provider, "partner", "https://partner.example:8443/", TLS.upper(), PARTNER,
                           ["lan", "ops", "lan"])
    assert {k: shown[k] for k in ("name", "url", "tls_fingerprint", "keys_hash", "groups")} == {
        "name": "partner", "url": "https://partner.example:8443", "tls_fingerprint": TLS, "keys_hash": PARTNER,
        "groups": ["lan", "ops"]}
    colons = ":".join(TLS[i:i + 2].upper() for i in range(0, 64, 2))  # openssl x509 -fingerprint -sha256
    other = Signer.generate().public.fingerprint()
    assert links.add_link(provider, "authority", "https://10.1.0.1", colons, other)["tls_fingerprint"] == TLS
    assert [(l["name"], l["groups"]) for l in links.list_links(provider)] == [("authority", None),
                                                                            ("partner", ["lan", "ops"])]
    assert links.remove_link(provider, "partner")["keys_hash"] == PARTNER
    assert [l["name"] for l in links.list_links(provider)] == ["authority"]
    assert _actions(provider).count("link-add") == 2 and _actions(provider).count("link-remove") == 1


@pytest.mark.parametrize("field, args, reason", [
    ("name", ("Partner", "https://p.example", TLS, PARTNER), "link name 'Partner' must match"),
    ("name", ("p@x", "https://p.example", TLS, PARTNER), "link name 'p@x' must match"),
    ("url", ("partner", "http://p.example", TLS, PARTNER), "--url: provider URL must be https"),
    ("fingerprint", ("partner", "https://p.example", "ab" * 31, PARTNER), "--fingerprint must be a SHA-256"),
    ("keys", ("partner", "https://p.example", TLS, "zz" * 32), "--keys-hash must be a SHA-256"),
    ("self", ("partner", "https://p.example", TLS, SIGNER.public.fingerprint()), "does not link to itself"),
])
def test_a_bad_field_is_refused_by_name_and_changes_nothing(provider, field, args, reason):
    before = dump(provider.store)
    with pytest.raises(InvalidInput, match=reason):
        links.add_link(provider, *args)
    assert dump(provider.store) == before


def test_bad_groups_duplicates_and_unknown_links_are_refused(provider):
    with pytest.raises(InvalidInput, match="group name 'Bad Group' must match"):
        links.add_link(provider, "partner", "https://p.example", TLS, PARTNER, ["lan", "Bad Group"])
    with pytest.raises(InvalidInput, match="--groups must name 1..64 groups"):
        links.add_link(provider, "partner", "https://p.example", TLS, PARTNER, [f"g{i}" for i in range(65)])
    links.add_link(provider, "partner", "https://p.example", TLS, PARTNER)
    before = dump(provider.store)
    with pytest.raises(Conflict, match="a link named 'partner' already"):
        links.add_link(provider, "partner", "https://q.example", TLS, Signer.generate().public.fingerprint())
    with pytest.raises(Conflict, match="link 'partner' to that provider already"):
        links.add_link(provider, "again", "https://p.example", TLS, PARTNER)
    with pytest.raises(NotFound, match="no link named 'nobody'"):
        links.remove_link(provider, "nobody")
    assert dump(provider.store) == before


@pytest.mark.parametrize("kind", STORE_KINDS)
def test_a_database_before_links_is_migrated(kind, request):
    from provider.tables import MIGRATIONS, SCHEMA_VERSION, _add_links  # noqa: PLC0415

    step = next(version for version, fn in MIGRATIONS.items() if fn is _add_links)
    store = fresh_store(kind, request)
    provider, _ = memory_provider(("alice",), signer=SIGNER, store=store)
    # back to the schema before the step: without the table and the column
    assert migrate_from(store, step, 'DROP TABLE "links"', 'ALTER TABLE members DROP COLUMN "home"') == \
        str(SCHEMA_VERSION)
    assert links.list_links(provider) == []
    assert links.add_link(provider, "partner", "https://p.example", TLS, PARTNER)["name"] == "partner"
    with store.read() as conn:
        assert conn.exec_driver_sql("SELECT home FROM members").fetchall() == [(None,)]
    store.close()


def test_both_admins_link_each_other_with_what_link_self_prints(tmp_path):
    owner, partner = init_provider(tmp_path / "owner"), init_provider(tmp_path / "partner")
    mine, theirs = (json.loads(admin(env.state, "link", "self", "--json").stdout) for env in (owner, partner))
    assert mine["url"] == owner.url and mine["keys_hash"] != theirs["keys_hash"]
    line = admin(partner.state, "link", "self").stdout.splitlines()[-1]  # the line the partner hands over
    assert line == (f"grouptun-provider link add NAME --url {partner.url} --fingerprint "
                    f"{theirs['tls_fingerprint']} --keys-hash {theirs['keys_hash']}")
    added = json.loads(admin(owner.state, "link", "add", "partner", *line.split()[4:], "--groups", "lan",
                             "--json").stdout)
    assert (added["keys_hash"], added["groups"]) == (theirs["keys_hash"], ["lan"])
    admin(partner.state, "link", "add", "owner", "--url", mine["url"], "--fingerprint", mine["tls_fingerprint"],
          "--keys-hash", mine["keys_hash"])
    assert [l["name"] for l in json.loads(admin(partner.state, "link", "list", "--json").stdout)] == ["owner"]
    assert "partner" in admin(owner.state, "link", "list").stdout
    refused = admin(owner.state, "link", "add", "partner", "--url", partner.url, "--fingerprint", "00",
                    "--keys-hash", theirs["keys_hash"], check=False)
    assert refused.returncode == 64 and "--fingerprint must be a SHA-256" in refused.stderr
    assert admin(owner.state, "link", "remove", "partner", check=False).returncode == 0
    assert admin(owner.state, "link", "remove", "partner", check=False).returncode == 66
    assert "no links" in admin(owner.state, "link", "list").stdout
    assert "link-add" in admin(owner.state, "audit").stdout


def _partner_answer(signer=PARTNER_SIGNER) -> dict:  # the partner's GET /v1/provider, as routes.py answers it
    return {"provider_id": signer.public.fingerprint(), "provider_keys": signer.public.to_json()}


def test_check_accepts_only_the_pinned_keys_and_vouch_signs_them(provider):
    links.add_link(provider, "partner", "https://p.example", TLS, PARTNER, ["lan"])
    with pytest.raises(Conflict, match="not checked yet"):
        links.issue_vouch(provider, "partner")
    asked = []
    before = dump(provider.store)
    for answer, reason in ((_partner_answer(Signer.generate()), "holds other signing keys than --keys-hash pins"),
                           ({"provider_keys": {"ed25519": "AAAA"}}, "answered no provider keys"),
                           ([], "answered no provider keys")):
        with pytest.raises(LinkError, match=reason):
            links.check_link(provider, "partner", lambda url, tls: asked.append((url, tls)) or answer)
        assert "\n".join(l for l in dump(provider.store).splitlines() if not l.startswith("audit ")) == \
            "\n".join(l for l in before.splitlines() if not l.startswith("audit "))
    assert asked[0] == ("https://p.example", TLS)  # asked at the pinned URL with the pinned certificate
    assert _actions(provider).count("refused") == 3
    checked = links.check_link(provider, "partner", lambda url, tls: _partner_answer())
    assert checked["state"] == "checked" and links.list_links(provider)[0]["state"] == "checked"
    vouch = verify_vouch(links.issue_vouch(provider, "partner"), SIGNER.public, now=time.time())
    assert (vouch.home, vouch.provider, vouch.url, vouch.tls, vouch.groups) == (
        SIGNER.public.fingerprint(), PARTNER, "https://p.example", TLS, ("lan",))
    assert "link-check" in _actions(provider)
    with pytest.raises(NotFound, match="no link named 'nobody'"):
        links.check_link(provider, "nobody", lambda url, tls: _partner_answer())


def test_link_check_over_the_pinned_tls_of_a_real_partner(tmp_path):
    owner, partner = init_provider(tmp_path / "owner"), init_provider(tmp_path / "partner")
    theirs = json.loads(admin(partner.state, "link", "self", "--json").stdout)
    admin(owner.state, "link", "add", "partner", "--url", partner.url, "--fingerprint", "00" * 32,
          "--keys-hash", theirs["keys_hash"])
    admin(owner.state, "link", "add", "liar", "--url", partner.url, "--fingerprint", theirs["tls_fingerprint"],
          "--keys-hash", Signer.generate().public.fingerprint())
    partner.server.start()
    try:
        wrong_tls = admin(owner.state, "link", "check", "partner", check=False)
        assert wrong_tls.returncode == 69 and "pinned fingerprint" in wrong_tls.stderr
        wrong_keys = admin(owner.state, "link", "check", "liar", check=False)
        assert wrong_keys.returncode == 69 and "other signing keys than --keys-hash pins" in wrong_keys.stderr
        admin(owner.state, "link", "remove", "partner")
        admin(owner.state, "link", "add", "partner", "--url", partner.url, "--fingerprint",
              theirs["tls_fingerprint"], "--keys-hash", theirs["keys_hash"])
        assert json.loads(admin(owner.state, "link", "check", "partner", "--json").stdout)["state"] == "checked"
    finally:
        partner.server.stop()
    from provider.keys import StatePaths  # noqa: PLC0415

    own = Signer.load(StatePaths(owner.state)).public
    vouch = verify_vouch(admin(owner.state, "link", "vouch", "partner").stdout.strip().encode(), own,
                         now=time.time())
    assert vouch.provider == theirs["keys_hash"] and vouch.url == partner.url
    assert admin(owner.state, "link", "vouch", "liar", check=False).returncode == 75  # never checked
    # the partner's group, taken in here under another name, and a join token of this provider for it
    assert "accepted here as plan" in admin(owner.state, "link", "accept", "partner", "lan", "--as", "plan").stdout
    assert admin(owner.state, "invite", "plan", "bob").stdout.startswith("gtjoin1-")
    unchecked = admin(owner.state, "link", "accept", "liar", "lan", check=False)
    assert unchecked.returncode == 64 and "must be checked" in unchecked.stderr


def test_a_partner_that_rotated_its_keys_is_re_pinned_and_vouched_for_with_the_new_ones(provider):
    links.add_link(provider, "partner", "https://p.example", TLS, PARTNER)
    links.check_link(provider, "partner", lambda url, tls: _partner_answer())
    with provider.store.write() as conn:  # bob came through the link: his row names the partner's id
        conn.execute(update(members).where(members.c.name == "bob").values(home=PARTNER))
    rotated = Signer.generate()
    with pytest.raises(LinkError, match="other signing keys than --keys-hash pins"):  # the old pin holds
        links.check_link(provider, "partner", lambda url, tls: _partner_answer(rotated))
    new = rotated.public.fingerprint()
    with pytest.raises(LinkError, match="other signing keys"):  # a re-pin to keys the partner does not hold
        links.check_link(provider, "partner", lambda url, tls: _partner_answer(), keys_hash=new)
    shown = links.check_link(provider, "partner", lambda url, tls: _partner_answer(rotated), keys_hash=new.upper())
    assert (shown["keys_hash"], shown["state"], shown["contact"]) == (new, "checked", "up")
    assert verify_vouch(links.issue_vouch(provider, "partner"), SIGNER.public, now=time.time()).provider == new
    with provider.store.read() as conn:
        detail = [json.loads(r.detail) for r in audit_rows(conn, 0, 10**9) if r.action == "link-check"][-1]
    assert detail == {"link": "partner", "provider": new, "repinned_from": PARTNER}
    with provider.store.read() as conn:  # so `link remove`, forwarding and removals still find him
        homes = dict(conn.execute(select(members.c.name, members.c.home)).all())
    assert homes == {"alice": None, "bob": new}


def test_vouchers_expire_after_the_configured_days():
    from grouptun.errors import ConfigError  # noqa: PLC0415

    provider, _ = memory_provider(signer=SIGNER)
    links.add_link(provider, "partner", "https://p.example", TLS, PARTNER)
    links.check_link(provider, "partner", lambda url, tls: _partner_answer())
    provider.vouch_ttl = links.vouch_ttl_from_config({"vouch_ttl_days": 2})
    vouch = verify_vouch(links.issue_vouch(provider, "partner"), SIGNER.public, now=time.time())
    assert vouch.expires_at - vouch.issued_at == 2 * 86400.0
    assert links.vouch_ttl_from_config({}) == 30 * 86400.0
    for bad in (0, 366, "7", True):
        with pytest.raises(ConfigError, match="vouch_ttl_days"):
            links.vouch_ttl_from_config({"vouch_ttl_days": bad})
    provider.store.close()
