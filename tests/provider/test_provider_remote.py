"""The home provider's side (provider/remote.py): its member joins a group the owner holds with a token of its own
provider, and then speaks only to it; the home checks the member's signature and credential and relays. Both
providers in memory, each app in a TestClient (the owner's is the home's link transport)."""

from __future__ import annotations

import base64
import json
import time
import os

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from grouptun.control.reqsign import sign_headers
from grouptun.core import keys as keys_mod
from grouptun.core.jointoken import enroll_message
from grouptun.core.capsule import KemPrivateKey, capsule_info, open_sealed, salt_info
from grouptun.core.vouch import verify_foreign_archive, verify_vouch
from provider import membership, remote
from provider.app import Settings, create_app
from provider.errors import Conflict, Forbidden, InvalidInput
from provider.store import audit_rows
from provider_helpers import dump
from test_provider_linked import HOME_SIGNER, OWNER_SIGNER, _refusals, sides  # noqa: F401 -- the two linked providers

TestClient = pytest.importorskip("starlette.testclient").TestClient
CREDENTIAL = b"authenticator-of-erin-32-bytes!!"


class Erin:
    """A daemon of the home provider: its keys, its enrollment answer, its signed requests to the home."""

    def __init__(self, home, client) -> None:
        self.home, self.client = home, client
        self.kem, self.signing = KemPrivateKey.from_random(os.urandom(96)), ed25519.Ed25519PrivateKey.generate()
        self.ed = self.signing.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    def enroll(self, secret: str) -> dict:
        kem = self.kem.public_bytes()
        proof = self.signing.sign(enroll_message(secret, "erin", self.ed, kem, CREDENTIAL, []))
        self.answer = self.home.enroll(secret, "erin", self.ed, kem, CREDENTIAL, [], proof)
        return self.answer

    def request(self, method: str, path: str, body: bytes = b"", key_id: str = "erin@partner"):
        url = f"https://home.example/v1/groups/acme{path}"
        headers = {"content-type": "application/json"} if body else {}
        sign_headers(method, url, headers, body, key_id, self.signing)
        return self.client.request(method, url, headers=headers, content=body)


@pytest.fixture
def erin(sides):  # noqa: F811
    owner, home, send, _ = sides
    home.link_send = lambda row: send  # the home's link transport: into the owner's app
    remote.accept_group(home, "owner", "lan", alias="acme")
    membership.invite(owner, "lan", "erin@partner", 3600)
    asgi, _ = create_app(home, Settings())
    with TestClient(asgi, client=("127.0.0.1", 4001)) as client:
        member = Erin(home, client)
        member.secret = remote.invite(home, "acme", "erin", 3600)
        member.enroll(member.secret)
        yield owner, home, member


def test_the_member_joins_and_gets_its_epoch_through_its_home_only(erin):
    owner, home, member = erin
    answer = member.answer
    assert (answer["group"], answer["member_name"]) == ("acme", "erin@partner")
    assert answer["provider_keys"] == HOME_SIGNER.public.to_json()  # the keys its join token pinned
    archive = verify_foreign_archive(answer["archive"].encode(), HOME_SIGNER.public, answer["vouch"].encode(),
                                     "erin@partner", now=time.time())
    assert archive.member("erin@partner").ed25519_public == member.ed
    challenge = os.urandom(32)
    assert member.request("POST", "/start", json.dumps({"challenge": challenge.hex()}).encode()).status_code == 200
    got = member.request("GET", "/archive")
    assert got.status_code == 200
    archive = verify_foreign_archive(got.content, HOME_SIGNER.public, answer["vouch"].encode(), "erin@partner",
                                     now=time.time())
    assert challenge in archive.epoch.challenges
    epoch, group_id = archive.epoch.epoch, archive.group_id
    capsule = member.request("GET", f"/epochs/{epoch}/capsule")
    salt_body = json.dumps({"authenticator": base64.b64encode(CREDENTIAL).decode()}).encode()
    sealed_salt = member.request("POST", f"/epochs/{epoch}/salt", salt_body)
    assert (capsule.status_code, sealed_salt.status_code) == (200, 200)
    assert capsule.headers["content-type"] == "application/octet-stream"
    ss = open_sealed(member.kem, capsule_info(group_id, epoch, "erin@partner"), capsule.content)
    salt = open_sealed(member.kem, salt_info(group_id, epoch, "erin@partner"), sealed_salt.content)
    assert keys_mod.EpochKeys(archive.epoch.suite, group_id, epoch, ss, salt).key_check() == archive.epoch.key_check
    relay_state = dump(home.store)
    assert bytes(ss).hex() not in relay_state and bytes(salt).hex() not in relay_state
    assert CREDENTIAL.hex() not in relay_state and CREDENTIAL.hex() not in dump(owner.store)


def test_the_home_checks_signature_credential_and_invitation(erin):
    owner, home, member = erin
    epoch = json.loads(json.loads(owner.store.archive("lan")[1])["document"])["epoch"]["epoch"]
    wrong = json.dumps({"authenticator": base64.b64encode(b"x" * 32).decode()}).encode()
    refused = member.request("POST", f"/epochs/{epoch}/salt", wrong)
    assert (refused.status_code, refused.json()["detail"]) == (403, "wrong credential")
    assert member.request("GET", "/archive", key_id="mallory@partner").status_code == 401
    assert any(detail["reason"] == "signature not valid" for _, detail in _refusals(home))
    with pytest.raises(Forbidden, match="join token unknown, used or expired"):  # the token was used
        member.enroll(member.secret)
    other = remote.invite(home, "acme", "frank", 3600)
    before = dump(home.store)
    with pytest.raises(Forbidden, match="name does not match the invitation"):
        member.enroll(other)
    assert dump(home.store).count("remote_members") == before.count("remote_members")


def test_accepting_and_inviting_refuse_what_does_not_fit(erin):
    owner, home, _ = erin
    with pytest.raises(Conflict, match="a group named 'lan' exists here already"):
        remote.accept_group(home, "owner", "lan")  # the home's own group is called lan
    with pytest.raises(Conflict, match="group 'acme' exists already"):
        home.create_group("acme", "10.79.0.0/24")
    with pytest.raises(InvalidInput, match="invite a local name"):
        remote.invite(home, "acme", "erin@owner", 3600)
    with owner.store.read() as conn:
        assert "link-enroll" in [r.action for r in audit_rows(conn, 0, 10**9)]


def test_the_member_gets_a_fresh_voucher_from_its_home_not_from_the_owner(erin):
    owner, home, member = erin
    home.vouch_ttl = 3600.0
    got = member.request("GET", "/vouch")
    assert got.status_code == 200
    vouch = verify_vouch(got.content, HOME_SIGNER.public, now=time.time())
    assert vouch.expires_at - vouch.issued_at == 3600.0 and vouch.provider == OWNER_SIGNER.public.fingerprint()
    assert member.request("POST", "/vouch", b"{}").status_code == 400
    assert member.request("GET", "/vouch", key_id="mallory@partner").status_code == 401
    with home.store.read() as conn:
        actions = [r.action for r in audit_rows(conn, 0, 10**9)]
    assert actions.count("vouch-issue") == 1 and "link-relay" not in actions[-2:]
    with owner.store.read() as conn:
        assert not any("vouch" in r.detail for r in audit_rows(conn, 0, 10**9) if r.action == "link-request")
