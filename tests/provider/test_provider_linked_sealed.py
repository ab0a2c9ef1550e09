"""Sealed data in a group a linked provider owns (issue 19/20; grouptun/apps/sealed.py, provider/linked.py relay): a
member of the partner seals through its home provider to the owner's members and to itself, and opens what the
owner's members sealed to it; the blob's parts cross the relay as they are (sealed to the recipients' keys). Both
providers in memory (test_provider_remote's fixture); the owner's local member uses the owner's sealed-data
operations directly (provider_helpers.InProcessSealed)."""

from __future__ import annotations

import io
import json
import os
import time

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from grouptun.apps import sealed as app
from grouptun.control.reqsign import sign_headers
from grouptun.core.jointoken import enroll_message
from grouptun.core.capsule import KemPrivateKey
from grouptun.core.vouch import verify_foreign_archive
from grouptun.errors import ProviderRefused
from provider.archives import parse_own
from provider.sealed import SealedData, SealedLimits
from provider.store import audit_rows
from provider_helpers import InProcessSealed, dump
from test_provider_linked import HOME_SIGNER, sides  # noqa: F401 -- the two linked providers
from test_provider_remote import erin  # noqa: F401 -- erin@partner, enrolled through her home

PLAIN = os.urandom(5 * 1024 * 1024 + 77)  # two parts of 4 MiB: the relay carries a part upload and download


class Relayed:
    """A SealedTransport of erin's: her signed requests to her home, relayed to the owner."""

    def __init__(self, member) -> None:
        self.m = member

    def _call(self, method: str, path: str, body: bytes = b"", media: str = "application/json"):
        url = f"https://home.example/v1/groups/acme/sealed{path}"
        headers = {"content-type": media} if body else {}
        sign_headers(method, url, headers, body, "erin@partner", self.m.signing)
        answer = self.m.client.request(method, url, headers=headers, content=body)
        if answer.status_code >= 400:
            raise ProviderRefused(answer.status_code, answer.text[:200])
        return answer

    def reserve(self, size, recipients, ttl):
        return self._call("POST", "", json.dumps({"size": size, "recipients": recipients, "ttl": ttl}).encode()).json()

    def put_part(self, data_id, part, data):
        self._call("PUT", f"/{data_id}/parts/{part}", data, "application/octet-stream")

    def commit(self, data_id):
        return self._call("POST", f"/{data_id}/commit", b"{}").json()

    def listing(self):
        return self._call("GET", "").json()["sealed"]

    def describe(self, data_id):
        return self._call("GET", f"/{data_id}").json()

    def get_part(self, data_id, part):
        answer = self._call("GET", f"/{data_id}/parts/{part}")
        assert answer.headers["content-type"] == "application/octet-stream"
        return answer.content

    def delete(self, data_id):
        self._call("DELETE", f"/{data_id}")


def _olga(owner):
    """A local member of the owner with a KEM key of her own, and her transport."""
    signing, kem = ed25519.Ed25519PrivateKey.generate(), KemPrivateKey.from_random(os.urandom(96))
    ed, pub = signing.public_key().public_bytes_raw(), kem.public_bytes()
    secret = owner.invite("lan", "olga", 3600)
    owner.enroll(secret, "olga", ed, pub, b"credential", [],
                 signing.sign(enroll_message(secret, "olga", ed, pub, b"credential", [])))
    return kem, InProcessSealed(SealedData(owner.store, SealedLimits(), owner.clock, owner.rand), "lan", "olga")


def _erins_archive(member):
    got = member.request("GET", "/archive")
    return verify_foreign_archive(got.content, HOME_SIGNER.public, member.answer["vouch"].encode(), "erin@partner",
                                  now=time.time())


def test_a_partner_member_seals_through_its_home_and_opens_what_the_owners_member_sealed_to_it(erin):  # noqa: F811
    owner, home, member = erin
    kem, olga = _olga(owner)
    archive = _erins_archive(member)
    to = app.choose_recipients(archive, "erin@partner", ["olga", "erin@partner"], False, False)
    entry = app.seal_file(Relayed(member), archive, io.BytesIO(PLAIN), len(PLAIN), to, 3600)
    assert entry["sender"] == "erin@partner" and entry["parts"] == 2
    opened = io.BytesIO()
    app.unseal(olga, archive.group_id, "olga", kem, entry["data_id"], opened)  # the owner's member opens it
    assert opened.getvalue() == PLAIN
    mine = io.BytesIO()
    app.unseal(Relayed(member), archive.group_id, "erin@partner", member.kem, entry["data_id"], mine)
    assert mine.getvalue() == PLAIN
    # and the other way: sealed at the owner by olga to erin@partner (her KEM key from the owner's archive)
    theirs = app.seal_file(olga, parse_own(owner.store.archive("lan")[1]), io.BytesIO(b"for erin"), 8,
                           app.choose_recipients(archive, "olga", ["erin@partner"], False, False), 3600)
    got = io.BytesIO()
    app.unseal(Relayed(member), archive.group_id, "erin@partner", member.kem, theirs["data_id"], got)
    assert got.getvalue() == b"for erin"
    assert {e["data_id"] for e in Relayed(member).listing()} == {entry["data_id"], theirs["data_id"]}
    with home.store.read() as conn:  # every part crossed the relay, audited; no plaintext stays at the home
        relayed = [json.loads(r.detail)["request"] for r in audit_rows(conn, 0, 10**9) if r.action == "link-relay"]
    assert f"sealed/{entry['data_id']}/parts/1" in relayed
    assert PLAIN[:64].hex() not in dump(home.store)


def test_a_partner_member_cannot_read_a_blob_not_sealed_to_it(erin):  # noqa: F811
    owner, home, member = erin
    kem, olga = _olga(owner)
    archive = parse_own(owner.store.archive("lan")[1])
    private = app.seal_file(olga, archive, io.BytesIO(b"olga only"), 9,
                            app.choose_recipients(archive, "olga", None, False, True), 3600)
    with pytest.raises(ProviderRefused) as refused:
        Relayed(member).get_part(private["data_id"], 0)
    assert refused.value.status == 403
