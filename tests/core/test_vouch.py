"""The home provider's voucher and the foreign archive check (grouptun/core/vouch.py, PROTOCOL.md 8): the
vouch-v1 vectors, round trips, and each refusal by its step."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, mldsa

from grouptun.core.archive import Archive, GroupMetadata, parse_document, sign_archive, verify_archive
from grouptun.core.archivemember import ArchiveMember
from grouptun.core.envelope import ProviderKeys
from grouptun.core.vouch import Vouch, renewal_due, sign_vouch, verify_foreign_archive, verify_vouch
from grouptun.errors import EpochRejected

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "vouch-v1.json"


class Side:
    """One provider's two signing keys."""

    def __init__(self) -> None:
        self.ed, self.ml = ed25519.Ed25519PrivateKey.generate(), mldsa.MLDSA65PrivateKey.generate()
        raw = serialization.Encoding.Raw, serialization.PublicFormat.Raw
        self.keys = ProviderKeys(self.ed.public_key().public_bytes(*raw), self.ml.public_key().public_bytes_raw())
        self.id = self.keys.fingerprint()


HOME, OWNER, OTHER = Side(), Side(), Side()
NOW = 1e9 + 86400.0  # the member's wall clock: a day into the voucher's 30


def _member(name: str, index: int, home: str | None) -> ArchiveMember:
    return ArchiveMember(name, index, (f"10.77.0.{index + 2}/24",), (), bytes(32), bytes(1216), None, home=home)


def _archive(owner: Side = OWNER, bob_home: str | None = HOME.id, provider_id: str | None = None) -> bytes:
    archive = Archive(bytes(16), "lan", 1, None, (_member("alice", 0, None), _member("bob@partner", 1, bob_home)),
                      "10.77.0.0/24", None, 1420, 2e9, metadata=GroupMetadata(provider_id or owner.id))
    return sign_archive(archive, owner.ed, owner.ml)


def _vouch(signer: Side = HOME, **change) -> bytes:
    vouch = Vouch(HOME.id, OWNER.keys, "https://owner.example:8443", "cd" * 32, 1e9, ("lan",), 1e9 + 30 * 86400)
    return sign_vouch(dataclasses.replace(vouch, **change), signer.ed, signer.ml)


def test_the_vectors_verify_or_fail_at_their_step():
    vectors = json.loads(VECTORS.read_text())
    home, now = ProviderKeys.from_json(vectors["home_keys"]), vectors.get("now", 0.0)
    assert len(vectors["cases"]) >= 11
    for case in vectors["cases"]:
        voucher, archive = case["voucher"].encode(), case["archive"].encode()
        if case["error"] is None:
            accepted = verify_foreign_archive(archive, home, voucher, vectors["member"], now=now)
            assert accepted.member(vectors["member"]).home == home.fingerprint(), case["name"]
            continue
        with pytest.raises(EpochRejected) as refused:
            verify_foreign_archive(archive, home, voucher, vectors["member"], now=now)
        assert refused.value.step == case["error"], case["name"]


def test_a_foreign_archive_verifies_through_the_voucher_only():
    accepted = verify_foreign_archive(_archive(), HOME.keys, _vouch(), "bob@partner", now=NOW)
    assert accepted.member("bob@partner").home == HOME.id and accepted.member("alice").home is None
    assert verify_vouch(_vouch(), HOME.keys, now=NOW).provider == OWNER.id
    with pytest.raises(EpochRejected, match="does not verify"):  # without the voucher: the home keys do not fit
        verify_archive(_archive(), HOME.keys)


@pytest.mark.parametrize("voucher, archive, step, reason", [
    (lambda: _vouch(OTHER), _archive, "signature", "does not verify"),
    (lambda: _vouch(keys=OTHER.keys), _archive, "signature", "does not verify"),
    (lambda: _vouch(home=OTHER.id), _archive, "link", "naming another one as home"),
    (lambda: _vouch(keys=HOME.keys), _archive, "link", "vouching for itself"),
    (lambda: _vouch(groups=("ops",)), _archive, "link", "does not serve group 'lan'"),
    (_vouch, lambda: _archive(bob_home=None), "link", "not listed with its home provider"),
    (_vouch, lambda: _archive(bob_home=OTHER.id), "link", "not listed with its home provider"),
    (_vouch, lambda: _archive(provider_id=OTHER.id), "link", "provider_id is not the vouched provider"),
    (lambda: _archive(HOME), _archive, "signature", "does not verify"),  # an archive is no voucher
    (lambda: _vouch(expires_at=NOW), _archive, "link", "voucher: expired at"),
    (lambda: _vouch(expires_at=NOW - 1), _archive, "link", "voucher: expired at"),
    (lambda: _vouch(expires_at=1e9), _archive, "format", "expires_at: not after issued_at"),
])
def test_each_refusal_names_its_step(voucher, archive, step, reason):
    with pytest.raises(EpochRejected, match=reason) as refused:
        verify_foreign_archive(archive(), HOME.keys, voucher(), "bob@partner", now=NOW)
    assert refused.value.step == step


def test_a_member_entry_without_home_is_the_document_it_was():
    plain = _member("alice", 0, None).to_json()
    assert "home" not in plain
    obj = json.loads(json.loads(_archive())["document"])
    assert [m.get("home") for m in obj["members"]] == [None, HOME.id]
    obj["members"][1]["home"] = "XY" * 32
    with pytest.raises(EpochRejected, match="member.home: not a provider id"):
        parse_document(obj)


def test_the_expiry_round_trips_and_a_voucher_from_before_it_is_accepted_but_due_for_renewal():
    fresh = verify_vouch(_vouch(), HOME.keys, now=NOW)
    assert fresh.expires_at == 1e9 + 30 * 86400 and not renewal_due(fresh, NOW)
    assert renewal_due(fresh, 1e9 + 23 * 86400) and not renewal_due(fresh, 1e9 + 22 * 86400)  # last quarter
    legacy = verify_vouch(_vouch(expires_at=None), HOME.keys, now=4e9)  # no expiry stated: any time
    assert legacy.expires_at is None and "expires_at" not in legacy.to_json() and renewal_due(legacy, NOW)
