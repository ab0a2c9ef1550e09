"""The compact archive (PROTOCOL.md 2.2): tests/vectors/compact-v1.json reproduced by `grouptun vectors` and
checked by an independent reading of the protocol text (json, hashlib, rfc8785 and cryptography; none of
grouptun.core.archive); each refusal by its step; a member's own key checked against its digest."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path

import pytest
import rfc8785
from cryptography.hazmat.primitives.asymmetric import ed25519, mldsa

from grouptun.core import archive as arch
from grouptun.core import envelope as env
from grouptun.core.capsule import KEM_PUBLIC_SIZE
from grouptun.core.vouch import VOUCH_LABEL, verify_vouch
from grouptun.errors import EpochRejected

from .test_sealed_vectors import vectors_cli

REPO = Path(__file__).resolve().parents[2]
FILE = REPO / "tests/vectors/compact-v1.json"
VECTORS = json.loads(FILE.read_text())["archives"]
LABEL = b"grouptun/1 compact archive"


def test_grouptun_vectors_reproduces_the_file_byte_for_byte():
    proc = vectors_cli("--check", str(FILE))
    assert (proc.returncode, proc.stderr, proc.stdout) == (0, "", FILE.read_text())


@pytest.mark.parametrize("field", ["compact_document", "compact_ed25519", "kem_sha256"])
def test_a_wrong_output_is_reported(field):
    doc = json.loads(FILE.read_text())
    doc["archives"][0][field] = ["00" * 32] if field == "kem_sha256" else "00"
    proc = vectors_cli("--check", "-", stdin=json.dumps(doc))
    assert proc.returncode == 1 and f"archives[0].{field}: differs" in proc.stderr


def test_a_compact_envelope_of_another_document_is_refused():
    doc = json.loads(FILE.read_text())
    doc["archives"][0]["compact"] = doc["archives"][1]["compact"]
    proc = vectors_cli("-", stdin=json.dumps(doc))
    assert proc.returncode == 2 and "archives[0].compact: is not the compact form of archive" in proc.stderr


@pytest.mark.parametrize("v", VECTORS, ids=[str(i) for i in range(len(VECTORS))])
def test_every_vector_by_the_protocol_text_alone(v):
    full = json.loads(json.loads(v["archive"])["document"])
    expected = {**full, "format": "grouptun/1 compact archive", "members": [
        {**{k: x for k, x in m.items() if k != "kem_public"},
         "kem_sha256": hashlib.sha256(base64.b64decode(m["kem_public"])).hexdigest()} for m in full["members"]]}
    assert rfc8785.dumps(expected).decode() == v["compact_document"]
    envelope = json.loads(v["compact"])
    assert envelope["document"] == v["compact_document"]
    message = LABEL + v["compact_document"].encode()
    ed_pub = ed25519.Ed25519PrivateKey.from_private_bytes(bytes.fromhex(v["ed25519_seed"])).public_key()
    ml_pub = mldsa.MLDSA65PrivateKey.from_seed_bytes(bytes.fromhex(v["mldsa65_seed"])).public_key()
    ed_pub.verify(base64.b64decode(envelope["ed25519"]), message)
    ml_pub.verify(base64.b64decode(envelope["mldsa65"]), message, LABEL)
    assert base64.b64decode(envelope["ed25519"]).hex() == v["compact_ed25519"]  # Ed25519 is deterministic


def _keys(v) -> env.ProviderKeys:
    return env.ProviderKeys.from_json(v["provider_keys"])


def test_the_compact_form_parses_to_the_full_archive_but_the_keys():
    v = VECTORS[0]
    full = arch.verify_archive(v["archive"].encode(), _keys(v))
    small = arch.verify_archive(v["compact"].encode(), _keys(v), compact_ok=True)
    assert small.compact and not full.compact and small.version == full.version and small.epoch == full.epoch
    for a, b in zip(full.members, small.members):
        assert b.kem_public is None and b.kem_digest == a.kem_digest and b.kem_matches(a.kem_public)
        assert (a.name, a.index, a.instance, a.routes, a.attributes) == (b.name, b.index, b.instance, b.routes,
                                                                         b.attributes)
    assert (small.policy, small.provider_urls, small.cidr6) == (full.policy, full.provider_urls, full.cidr6)
    assert arch.verify_archive(v["archive"].encode(), _keys(v), compact_ok=True) == full  # the old form still


def test_a_member_checks_its_own_key_and_a_substituted_one_fails():
    v = VECTORS[0]
    full = arch.verify_archive(v["archive"].encode(), _keys(v))
    entry = arch.verify_archive(v["compact"].encode(), _keys(v), compact_ok=True).member("alice")
    assert entry.kem_matches(full.member("alice").kem_public)
    assert not entry.kem_matches(full.member("bob").kem_public)
    assert not entry.kem_matches(os.urandom(KEM_PUBLIC_SIZE))


def test_labels_keep_the_forms_apart():
    v = VECTORS[0]
    keys = _keys(v)
    with pytest.raises(EpochRejected, match="signature"):  # a compact envelope is no full archive
        arch.verify_archive(v["compact"].encode(), keys)
    with pytest.raises(EpochRejected, match="signature"):  # nor a voucher
        verify_vouch(v["compact"].encode(), keys, now=1700000000.0)
    with pytest.raises(EpochRejected, match="signature"):
        env.open_envelope(v["archive"].encode(), keys, LABEL)
    with pytest.raises(EpochRejected, match="signature"):
        env.open_envelope(v["archive"].encode(), keys, VOUCH_LABEL)


def _resigned(v, document: dict, label: bytes) -> bytes:
    ed = ed25519.Ed25519PrivateKey.from_private_bytes(bytes.fromhex(v["ed25519_seed"]))
    ml = mldsa.MLDSA65PrivateKey.from_seed_bytes(bytes.fromhex(v["mldsa65_seed"]))
    return env.sign_envelope(document, label, ed, ml)


def _compact(v) -> dict:
    return json.loads(v["compact_document"])


@pytest.mark.parametrize("change, detail", [
    (lambda d: d.update(format="grouptun/1 archive"), "format"),                   # full format, compact label
    (lambda d: d["members"][0].update(kem_public="AAAA"), "member.kem_public"),    # a key where only a digest goes
    (lambda d: d["members"][0].pop("kem_sha256"), "member.kem_sha256"),
    (lambda d: d["members"][0].update(kem_sha256="AB" * 32), "member.kem_sha256"),  # not lowercase
    (lambda d: d["members"][0].update(kem_sha256="ab" * 31), "member.kem_sha256"),
])
def test_a_malformed_compact_document_is_refused_at_the_format_step(change, detail):
    v = VECTORS[0]
    document = _compact(v)
    change(document)
    with pytest.raises(EpochRejected, match="format") as caught:
        arch.verify_archive(_resigned(v, document, LABEL), _keys(v), compact_ok=True)
    assert detail in str(caught.value)


def test_a_full_document_signed_under_the_compact_label_is_refused():
    v = VECTORS[0]
    full = json.loads(json.loads(v["archive"])["document"])
    with pytest.raises(EpochRejected, match="format"):
        arch.verify_archive(_resigned(v, full, LABEL), _keys(v), compact_ok=True)


def test_the_compact_rule_keeps_every_other_key():
    v = VECTORS[0]
    full = json.loads(json.loads(v["archive"])["document"])
    full["members"][0]["future_key"] = "kept"
    full["future_top"] = {"x": 1}
    small = arch.compact_document(full)
    assert small["members"][0]["future_key"] == "kept" and small["future_top"] == {"x": 1}
    assert "kem_public" not in json.dumps(small)
    with pytest.raises(ValueError):
        arch.compact_document(small)  # only a full document has a compact form
