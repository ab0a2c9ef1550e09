"""Fuzz target ``archive``: the signed group document's parser and verifier (grouptun.core.archive).

Input: byte 0 picks the form, the rest is

- 0: an envelope, verified as received (``verify_archive``) against the pinned keys of the
  shared fake provider (tests/daemon/fakes.py): the envelope's parsing and the signature check;
- 1: a document, which this target signs with those keys first, so mutations reach what only a
  provider-signed document reaches: the canonical-form check and the document parser.
"""

from __future__ import annotations

from daemon.fakes import FakeProvider
from grouptun.core.archive import (SIGNING_LABEL, b64e, canonical, parse_document, verify_archive)
from grouptun.errors import EpochRejected

INVARIANT = (
    "verify_archive raises nothing but EpochRejected('format' | 'signature'); a document the "
    "target signed itself is never refused at 'signature'; an accepted archive keeps the exact "
    "envelope bytes, and its to_json() is a document that signs, verifies and parses back to an "
    "equal archive.")

PROVIDER = FakeProvider(["alice", "bob", "carol"])
PINNED = PROVIDER.keys


def sign_document(document: str) -> bytes:
    message = SIGNING_LABEL + document.encode("utf-8")
    return canonical({"document": document, "ed25519": b64e(PROVIDER.ed.sign(message)),
                      "mldsa65": b64e(PROVIDER.ml.sign(message, SIGNING_LABEL))})


def _verify(envelope: bytes, signed_here: bool):
    try:
        return verify_archive(envelope, PINNED)
    except EpochRejected as exc:
        assert exc.step in ("format", "signature"), f"unexpected step {exc.step!r}"
        assert not (signed_here and exc.step == "signature"), "our own signature refused"
        return None


def test_one_input(data: bytes) -> None:
    if not data:
        return
    signed_here = data[0] % 2 == 1
    envelope = sign_document(data[1:].decode("utf-8", "replace")) if signed_here else data[1:]
    archive = _verify(envelope, signed_here)
    if archive is None:
        return
    assert archive.raw == envelope
    again = verify_archive(sign_document(canonical(archive.to_json()).decode("utf-8")), PINNED)
    assert again == archive, "to_json() of an accepted archive parses to a different archive"
    assert parse_document(archive.to_json()) == archive


def seeds() -> dict[str, bytes]:
    import json

    PROVIDER.open_epoch()
    signed = PROVIDER.signed
    document = json.loads(signed)["document"].encode()
    lone = FakeProvider(["alice"])  # no epoch yet: "epoch": null
    return {"envelope": b"\0" + signed, "document": b"\1" + document,
            "document-no-epoch": b"\1" + json.loads(lone.signed)["document"].encode(),
            "not-json": b"\0{\"document\": 1"}
