"""Forwarded member requests (issue 19 item 4; provider/linked.py relay, routes.py link callers): the home provider
re-signs its member's start/archive/capsule/salt/watch/report with its own key, naming the member, and the owner
answers as to the member itself. Capsules and the sealed salt stay sealed to the member's own key. In-memory
providers on both sides; the transport is the owner's app in a TestClient (the fixture of test_provider_linked)."""

from __future__ import annotations

import json
import time
import os
from dataclasses import dataclass

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from grouptun.control.reqsign import sign_headers
from grouptun.core import keys as keys_mod
from grouptun.core.capsule import KemPrivateKey, capsule_info, open_sealed, salt_info
from grouptun.core.vouch import verify_foreign_archive
from grouptun.errors import CapsuleError, EpochRejected
from provider import linked, links, membership
from provider.errors import InvalidInput
from provider.store import audit_rows
from provider_helpers import dump
from test_provider_linked import HOME_SIGNER, _refusals, sides  # noqa: F401 -- the two linked providers

LAN = "/v1/groups/lan"


@dataclass
class Carol:
    """carol@partner, enrolled at the owner through her home provider, and the two providers."""

    owner: object
    home: object
    send: object  # into the owner's app
    sent: list
    kem: KemPrivateKey
    signing: ed25519.Ed25519PrivateKey

    def relay(self, method: str, path: str, body: bytes = b"", credential: str = "none", member: str = "carol"):
        """What the home does for its member once it checked her signature: forward, re-signed."""
        return linked.relay(self.home, "owner", method, path, member, body, self.send, credential)

    def archive(self):
        status, raw = self.relay("GET", f"{LAN}/archive")
        assert status == 200
        return verify_foreign_archive(raw, HOME_SIGNER.public, links.issue_vouch(self.home, "owner"), "carol@partner",
                                      now=time.time())


@pytest.fixture
def carol(sides):  # noqa: F811
    owner, home, send, sent = sides
    membership.invite(owner, "lan", "carol@partner", 3600)
    kem, signing = KemPrivateKey.from_random(os.urandom(96)), ed25519.Ed25519PrivateKey.generate()
    raw = serialization.Encoding.Raw, serialization.PublicFormat.Raw
    linked.forward_member(home, "owner", "lan", "carol", signing.public_key().public_bytes(*raw),
                          kem.public_bytes(), [], send)
    return Carol(owner, home, send, sent, kem, signing)


def test_start_archive_capsule_and_salt_through_the_home_open_only_with_the_members_key(carol):
    challenge = os.urandom(32)
    assert carol.relay("POST", f"{LAN}/start", json.dumps({"challenge": challenge.hex()}).encode())[0] == 200
    archive = carol.archive()
    assert challenge in archive.epoch.challenges and archive.member("carol@partner").instance is not None
    epoch, group_id = archive.epoch.epoch, archive.group_id
    status, capsule = carol.relay("GET", f"{LAN}/epochs/{epoch}/capsule")
    assert status == 200 and len(capsule) == 1168
    status, sealed_salt = carol.relay("POST", f"{LAN}/epochs/{epoch}/salt", b"{}", credential="checked")
    assert status == 200 and len(sealed_salt) == 1168
    ss = open_sealed(carol.kem, capsule_info(group_id, epoch, "carol@partner"), capsule)
    salt = open_sealed(carol.kem, salt_info(group_id, epoch, "carol@partner"), sealed_salt)
    assert keys_mod.data_id(bytes(ss)) == archive.epoch.data_id
    epoch_keys = keys_mod.EpochKeys(archive.epoch.suite, group_id, epoch, ss, salt)
    assert epoch_keys.key_check() == archive.epoch.key_check  # the whole epoch, delivered through the relay
    with pytest.raises(CapsuleError):  # any key but carol's (the relay's, say) opens nothing
        open_sealed(KemPrivateKey.from_random(os.urandom(96)), capsule_info(group_id, epoch, "carol@partner"),
                    capsule)
    relayed = dump(carol.home.store)
    for secret in (bytes(ss), bytes(salt)):
        assert secret.hex() not in relayed
    with carol.owner.store.read() as conn:  # both sides audit every forwarded request, naming the member
        at_owner = [json.loads(r.detail)["request"] for r in audit_rows(conn, 0, 10**9) if r.action == "link-request"]
    with carol.home.store.read() as conn:
        at_home = [json.loads(r.detail)["request"] for r in audit_rows(conn, 0, 10**9) if r.action == "link-relay"]
    assert at_home == ["start", "archive", f"epochs/{epoch}/capsule", f"epochs/{epoch}/salt"]
    assert at_owner == [f"{LAN}/start", f"{LAN}/archive", f"{LAN}/epochs/{epoch}/capsule",
                        f"/v1/links/groups/lan/epochs/{epoch}/salt"]


def test_report_and_watch_are_forwarded(carol):
    body = json.dumps({"endpoints": ["198.51.100.9:51820"]}).encode()
    assert carol.relay("POST", f"{LAN}/report", body)[0] == 204
    version = carol.owner.store.archive("lan")[0]
    assert carol.relay("GET", f"{LAN}/watch?version={version - 1}&timeout=0")[0] == 200
    assert carol.archive().member("carol@partner").endpoints == ("198.51.100.9:51820",)


def test_the_compact_form_is_relayed_as_the_owners_own_signed_envelope(carol):
    """PROTOCOL.md 2.2 and 8: ?form=compact reaches the owner unchanged; what comes back is the owner's compact
    envelope, byte for byte, which carol verifies through her home's voucher (and only as the compact form)."""
    version, stored = carol.owner.store.archive("lan", compact=True)
    vouch = links.issue_vouch(carol.home, "owner")
    for path in (f"{LAN}/archive?form=compact", f"{LAN}/watch?version={version - 1}&timeout=0&form=compact"):
        status, raw = carol.relay("GET", path)
        assert status == 200 and raw == stored
        archive = verify_foreign_archive(raw, HOME_SIGNER.public, vouch, "carol@partner", now=time.time(),
                                         compact_ok=True)
        assert archive.compact and archive.member("carol@partner").kem_matches(carol.kem.public_bytes())
        with pytest.raises(EpochRejected, match="signature"):  # a compact envelope is never a full archive
            verify_foreign_archive(raw, HOME_SIGNER.public, vouch, "carol@partner", now=time.time())
    assert carol.relay("GET", f"{LAN}/archive")[1] == carol.owner.store.archive("lan")[1]  # no form: the full one
    status, key = carol.relay("GET", f"{LAN}/members/alice/kem")  # what `grouptun seal` asks for, then checks
    assert status == 200 and archive.member("alice").kem_matches(key)


def test_the_salt_needs_the_homes_credential_check_and_the_member_never_talks_to_the_owner(carol):
    epoch = json.loads(json.loads(carol.owner.store.archive("lan")[1])["document"])["epoch"]["epoch"]
    status, answer = carol.relay("POST", f"{LAN}/epochs/{epoch}/salt", b"{}", credential="none")
    assert status == 403 and "did not vouch for the credential check" in json.loads(answer)["detail"]
    assert any("did not vouch" in detail["reason"] for _, detail in _refusals(carol.owner))  # audited
    assert carol.relay("GET", f"{LAN}/archive", member="dave")[0] == 401  # not enrolled through the link
    url = f"https://owner.example{LAN}/archive"
    headers: dict = {}
    sign_headers("GET", url, headers, b"", "carol@partner", carol.signing)  # carol's own key, straight to the owner
    assert carol.send("GET", url, headers, b"")[0] == 401


def test_a_replayed_or_forged_forwarded_request_is_401_and_audited(carol):
    carol.relay("GET", f"{LAN}/archive")
    method, url, headers, body = carol.sent[-1]
    status, answer = carol.send(method, url, headers, body)
    assert (status, json.loads(answer)["detail"]) == (401, "replayed signature")
    forged = {linked.MEMBER_HEADER: "carol", linked.CREDENTIAL_HEADER: "checked"}
    sign_headers("GET", url, forged, b"", HOME_SIGNER.public.fingerprint(), ed25519.Ed25519PrivateKey.generate(),
                 extra=linked.LINK_COVERED)
    status, answer = carol.send("GET", url, forged, b"")
    assert (status, json.loads(answer)["detail"]) == (401, "signature not valid")
    reasons = [detail["reason"] for _, detail in _refusals(carol.owner)]
    assert "replayed signature" in reasons and "signature not valid" in reasons


@pytest.mark.parametrize("path", [f"{LAN}/members/a#x/kem", f"{LAN}/members/a%23/kem", f"{LAN}/members/../kem",
                                  f"{LAN}/members/a b/kem", f"{LAN}/members/a/../../x/kem",
                                  f"{LAN}/sealed/{'0' * 32}/parts/12345678", f"{LAN}/epochs/1/capsule/x"])
def test_the_relay_forwards_only_the_member_apis_own_paths(carol, path):
    """A path outside the member API's shapes is refused before anything is signed or sent (no dot segment, no
    fragment or escape a transport could fold into another route under the home's signature)."""
    before = len(carol.sent)
    with pytest.raises(InvalidInput, match="not a request a provider forwards"):
        carol.relay("GET", path)
    assert len(carol.sent) == before
