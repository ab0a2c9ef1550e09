"""A linked provider's member joins the owner's group (provider/linked.py, link_routes.py): the home provider
forwards its keys, re-signed with its own key over the link, and the owner enrolls it with its home. Both sides
are in-memory providers (provider_helpers.memory_provider); the transport is the owner's app in a TestClient."""

from __future__ import annotations

import json
import time
import os

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from grouptun.control.reqsign import sign_headers
from grouptun.core.archive import sign_archive
from grouptun.core.envelope import b64e
from grouptun.core.capsule import KemPrivateKey
from grouptun.core.vouch import verify_foreign_archive
from provider import linked, links, membership
from provider import members as mem
from provider.app import Settings, create_app
from provider.archives import parse_own
from provider.errors import Forbidden, InvalidInput, LinkError, NotFound
from provider.keys import Signer
from provider.store import audit_rows
from provider_helpers import memory_provider

TestClient = pytest.importorskip("starlette.testclient").TestClient
OWNER_SIGNER, HOME_SIGNER = Signer.generate(), Signer.generate()
TLS = "ab" * 32


def _identity(signer) -> dict:
    return {"provider_id": signer.public.fingerprint(), "provider_keys": signer.public.to_json()}


def _keys() -> tuple[bytes, bytes]:
    raw = serialization.Encoding.Raw, serialization.PublicFormat.Raw
    ed = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(*raw)
    return ed, KemPrivateKey.from_random(os.urandom(96)).public_bytes()


@pytest.fixture
def sides():
    """(owner, home, send, sent): linked both ways and checked; ``send`` posts into the owner's app and
    records each (method, url, headers, body) in ``sent``."""
    owner, _ = memory_provider(signer=OWNER_SIGNER)
    home, _ = memory_provider(("carol", "dave"), signer=HOME_SIGNER)
    links.add_link(owner, "partner", "https://home.example", TLS, HOME_SIGNER.public.fingerprint(), ["lan"])
    links.check_link(owner, "partner", lambda url, tls: _identity(HOME_SIGNER))
    links.add_link(home, "owner", "https://owner.example", TLS, OWNER_SIGNER.public.fingerprint())
    links.check_link(home, "owner", lambda url, tls: _identity(OWNER_SIGNER))
    asgi, _ = create_app(owner, Settings())
    sent = []
    with TestClient(asgi, client=("127.0.0.1", 4000)) as client:
        def send(method, url, headers, body):
            sent.append((method, url, dict(headers), body))
            answer = client.request(method, url, headers=headers, content=body)
            return answer.status_code, answer.content

        yield owner, home, send, sent
    owner.store.close()
    home.store.close()


def _headers() -> dict:
    return {"content-type": "application/json", linked.MEMBER_HEADER: "carol", linked.CREDENTIAL_HEADER: "none"}


def _refusals(provider) -> list[tuple[str, dict]]:
    with provider.store.read() as conn:
        return [(r.actor, json.loads(r.detail)) for r in audit_rows(conn, 0, 10**9) if r.action == "refused"]


def _actions(provider) -> list[str]:
    with provider.store.read() as conn:
        return [r.action for r in audit_rows(conn, 0, 10**9)]


def test_the_home_forwards_its_member_and_the_owner_enrolls_it_with_its_home(sides):
    owner, home, send, _ = sides
    before = parse_own(owner.store.archive("lan")[1])
    membership.invite(owner, "lan", "carol@partner", 3600)
    ed, kem = _keys()
    answer = linked.forward_member(home, "owner", "lan", "carol", ed, kem, ["192.0.2.7:51820"], send)
    assert answer["member_name"] == "carol@partner" and answer["addresses"] == ["10.77.0.3/24"]
    after = parse_own(owner.store.archive("lan")[1])
    assert after.epoch.epoch > before.epoch.epoch and after.epoch.group_size == 3
    entry = after.member("carol@partner")
    assert (entry.home, entry.ed25519_public, entry.kem_public) == (HOME_SIGNER.public.fingerprint(), ed, kem)
    assert after.member("alice").home is None  # the owner's own members carry no home
    # carol verifies the owner's archive through the voucher her own provider signs (PROTOCOL.md 8)
    vouch = links.issue_vouch(home, "owner")
    accepted = verify_foreign_archive(answer["archive"].encode(), HOME_SIGNER.public, vouch, "carol@partner",
                                      now=time.time())
    assert accepted.version == after.version
    assert "link-enroll" in _actions(owner) and "link-forward" in _actions(home)
    with owner.store.read() as conn:  # the owner holds no credential for her: the home checks it
        stored = conn.exec_driver_sql("SELECT credential_hash FROM members WHERE name = 'carol@partner'").scalar()
    assert stored == mem.LINK_MARKER and not mem.credential_matches(b"credential", stored)


def test_a_forged_link_key_is_401_and_audited_at_the_owner(sides):
    owner, _, send, _ = sides
    membership.invite(owner, "lan", "carol@partner", 3600)
    ed, kem = _keys()
    body = json.dumps({"ed25519_public": b64e(ed), "kem_public": b64e(kem), "endpoints": []}).encode()
    url = "https://owner.example/v1/links/groups/lan/members"
    headers = _headers()
    forger = ed25519.Ed25519PrivateKey.generate()  # claims the home's id, signs with another key
    sign_headers("POST", url, headers, body, HOME_SIGNER.public.fingerprint(), forger, extra=linked.LINK_COVERED)
    status, answer = send("POST", url, headers, body)
    assert (status, json.loads(answer)["detail"]) == (401, "signature not valid")
    uncovered = _headers()  # signed below without covering the link headers
    HOME_SIGNER.sign_request("POST", url, uncovered, body, ())
    assert send("POST", url, uncovered, body)[0] == 401
    honest = _headers()
    HOME_SIGNER.sign_request("POST", url, honest, body, linked.LINK_COVERED)
    renamed = dict(honest, **{linked.MEMBER_HEADER: "dave"})  # a relay changing whom it speaks for
    assert send("POST", url, renamed, body)[0] == 401
    refused = _refusals(owner)
    assert len(refused) == 3 and all(actor.startswith("link-address:") for actor, _ in refused)
    assert parse_own(owner.store.archive("lan")[1]).member("carol@partner") is None


def test_a_replayed_forward_is_401_and_audited(sides):
    owner, home, send, sent = sides
    membership.invite(owner, "lan", "carol@partner", 3600)
    linked.forward_member(home, "owner", "lan", "carol", *_keys(), [], send)
    membership.invite(owner, "lan", "dave@partner", 3600)
    method, url, headers, body = sent[-1]
    status, answer = send(method, url, headers, body)
    assert (status, json.loads(answer)["detail"]) == (401, "replayed signature")
    assert ("link:partner", {"request": "/v1/links/groups/lan/members", "reason": "replayed signature"}) in \
        _refusals(owner)


def test_the_owner_refuses_what_it_did_not_invite_or_the_link_does_not_serve(sides):
    owner, home, send, _ = sides
    version = owner.store.archive("lan")[0]
    with pytest.raises(LinkError, match=r"refused the forwarded member \(403\).*not invited"):
        linked.forward_member(home, "owner", "lan", "carol", *_keys(), [], send)
    owner.create_group("ops", "10.78.0.0/24")
    with pytest.raises(LinkError, match="does not serve group 'ops'"):
        linked.forward_member(home, "owner", "ops", "carol", *_keys(), [], send)
    assert owner.store.archive("lan")[0] == version
    assert [reason for actor, reason in _refusals(home) if actor == "link:owner"][0]["request"] == "link-forward"
    with pytest.raises(InvalidInput, match="link 'partner' does not serve group 'ops'"):
        membership.invite(owner, "ops", "carol@partner", 3600)
    with pytest.raises(NotFound, match="no link named 'nolink'"):
        membership.invite(owner, "lan", "carol@nolink", 3600)
    with pytest.raises(Forbidden, match="enrolls at its own provider"):
        mem.check_enrollment("x" * 43, "carol@partner", *_keys(), b"credential", [], bytes(64))


def test_the_home_believes_no_answer_its_link_keys_did_not_sign(sides):
    owner, home, _, _ = sides
    ed, kem = _keys()
    forged = parse_own(owner.store.archive("lan")[1])
    impostor = Signer.generate()
    fake = json.dumps({"member_name": "carol@partner", "archive": sign_archive(
        forged, impostor._ed, impostor._ml).decode()}).encode()
    with pytest.raises(LinkError, match="answered no archive its keys signed"):
        linked.forward_member(home, "owner", "lan", "carol", ed, kem, [], lambda *request: (200, fake))
    honest = json.dumps({"member_name": "alice", "archive": owner.store.archive("lan")[1].decode()}).encode()
    with pytest.raises(LinkError, match="does not list 'carol' with its keys"):
        linked.forward_member(home, "owner", "lan", "carol", ed, kem, [], lambda *request: (200, honest))
    assert "link-forward" not in _actions(home)


def test_removing_the_link_excludes_its_members_in_a_new_epoch(sides):
    owner, home, send, _ = sides
    membership.invite(owner, "lan", "carol@partner", 3600)
    linked.forward_member(home, "owner", "lan", "carol", *_keys(), [], send)
    before = parse_own(owner.store.archive("lan")[1])
    assert before.member("carol@partner") is not None
    removed = linked.remove_link(owner, "partner")
    assert removed["excluded"] == {"lan": ["carol@partner"]}
    after = parse_own(owner.store.archive("lan")[1])
    assert after.epoch.epoch > before.epoch.epoch and after.member("carol@partner") is None
    assert sorted(m.name for m in after.members) == ["alice", "bob"]
    assert "link-exclude" in _actions(owner) and links.list_links(owner) == []
    from provider import remote  # noqa: PLC0415

    remote.accept_group(home, "owner", "lan", alias="acme")
    linked.remove_link(home, "owner")  # at the partner: the accepted groups go with the link
    assert remote.remote_group(home, "acme") is None
