"""Fuzz target ``archive``: the signed group document's parser and verifier (grouptun.core.archive).

Input: byte 0 picks the form (mod 4), the rest is

- 0: an envelope, verified as received (``verify_archive``) against the pinned keys of the
  shared fake provider (tests/daemon/fakes.py): the envelope's parsing and the signature check;
- 1: a document, which this target signs with those keys first, so mutations reach what only a
  provider-signed document reaches: the canonical-form check and the document parser;
- 2 and 3: the same, verified as a daemon does (``compact_ok``: either form), the document of 3
  signed under the compact archive's label (PROTOCOL.md 2.2).
"""

from __future__ import annotations

from daemon.fakes import FakeProvider
from grouptun.core.archive import COMPACT_LABEL, SIGNING_LABEL, compact_document, parse_document, verify_archive
from grouptun.core.archivemember import KEM_DIGEST_SIZE
from grouptun.core.envelope import b64e, canonical
from grouptun.errors import EpochRejected

INVARIANT = (
    "verify_archive raises nothing but EpochRejected('format' | 'signature'); a document the "
    "target signed itself is never refused at 'signature'; an accepted archive keeps the exact "
    "envelope bytes, and its to_json() is a document that signs, verifies and parses back to an "
    "equal archive; an accepted compact archive names a 32-byte digest and no key for every member, "
    "and the compact form of an accepted full document parses to it with the keys replaced.")

PROVIDER = FakeProvider(["alice", "bob", "carol"])
PINNED = PROVIDER.keys


def sign_document(document: str, label: bytes = SIGNING_LABEL) -> bytes:
    message = label + document.encode("utf-8")
    return canonical({"document": document, "ed25519": b64e(PROVIDER.ed.sign(message)),
                      "mldsa65": b64e(PROVIDER.ml.sign(message, label))})


def _verify(envelope: bytes, signed_here: bool, compact_ok: bool = False):
    try:
        return verify_archive(envelope, PINNED, compact_ok)
    except EpochRejected as exc:
        assert exc.step in ("format", "signature"), f"unexpected step {exc.step!r}"
        assert not (signed_here and exc.step == "signature"), "our own signature refused"
        return None


def test_one_input(data: bytes) -> None:
    if not data:
        return
    signed_here, compact_ok = data[0] % 2 == 1, data[0] % 4 >= 2
    label = COMPACT_LABEL if data[0] % 4 == 3 else SIGNING_LABEL
    envelope = sign_document(data[1:].decode("utf-8", "replace"), label) if signed_here else data[1:]
    archive = _verify(envelope, signed_here, compact_ok)
    if archive is None:
        return
    assert archive.raw == envelope
    if archive.compact:
        assert all(m.kem_public is None and len(m.kem_sha256) == KEM_DIGEST_SIZE for m in archive.members)
        return
    small = parse_document(compact_document(archive.to_json()), compact=True)
    assert [m.kem_sha256 for m in small.members] == [m.kem_digest for m in archive.members]
    again = verify_archive(sign_document(canonical(archive.to_json()).decode("utf-8")), PINNED)
    assert again == archive, "to_json() of an accepted archive parses to a different archive"
    assert parse_document(archive.to_json()) == archive


def seeds() -> dict[str, bytes]:
    import json

    PROVIDER.open_epoch()
    signed = PROVIDER.signed
    document = json.loads(signed)["document"].encode()
    lone = FakeProvider(["alice"])  # no epoch yet: "epoch": null
    compact = PROVIDER.signed_compact
    return {"envelope": b"\0" + signed, "document": b"\1" + document,
            "compact-envelope": b"\2" + compact, "compact-document": b"\3" + json.loads(compact)["document"].encode(),
            "document-no-epoch": b"\1" + json.loads(lone.signed)["document"].encode(),
            "not-json": b"\0{\"document\": 1"}
