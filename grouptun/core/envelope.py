"""The signed envelope every provider document travels in, and the keys that sign it (PROTOCOL.md 2).

Wire shape (UTF-8 JSON)::

    {"document": "<RFC 8785 canonical JSON of the document, as a string>",
     "ed25519": "<base64 signature>", "mldsa65": "<base64 signature>"}

Both signatures cover ``label || document-bytes``; ML-DSA-65 also gets
``label`` as its FIPS 204 context string. The label is the document kind's
domain (an archive's, a compact archive's, a voucher's: one kind's signature
never verifies as another's, PROTOCOL.md 8). Carrying the document as a
string keeps the signed bytes exact (no float re-serialisation); a document
that is not already canonical is refused.

Members pin the provider's two public keys by their fingerprint
(:meth:`ProviderKeys.fingerprint`, also the provider's id). The strict field
readers below (base64, hex, typed keys) are the ones every document's parser
uses; each raises ``EpochRejected('format')`` naming the field. Signing draws
randomness inside ``cryptography`` (ML-DSA's hedged signing), like HPKE in
``capsule.py``.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass

import rfc8785
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519, mldsa

from grouptun.core.attributes import check as check_attributes
from grouptun.errors import EpochRejected

KEYS_HASH_LABEL = b"grouptun/1 provider-keys"
ED25519_PUBLIC_SIZE = 32
MLDSA65_PUBLIC_SIZE = 1952
MAX_ENVELOPE_BYTES = 16 * 1024 * 1024  # ~65535 members * ~1.7 KiB each, base64


def b64e(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def b64d(text: str, what: str, size: int | None = None) -> bytes:
    """Strict standard base64; raises EpochRejected('format') naming ``what``."""
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError, AttributeError) as exc:
        raise EpochRejected("format", f"{what}: not base64") from exc
    if size is not None and len(raw) != size:
        raise EpochRejected("format", f"{what}: {len(raw)} bytes, expected {size}")
    return raw


def hexd(text: object, what: str, size: int) -> bytes:
    """Exactly ``size`` bytes of lowercase hex; raises EpochRejected('format') naming ``what``."""
    try:
        raw = bytes.fromhex(text)  # type: ignore[arg-type]
    except (ValueError, TypeError) as exc:
        raise EpochRejected("format", f"{what}: not hex") from exc
    if len(raw) != size or text != raw.hex():
        raise EpochRejected("format", f"{what}: expected {size} bytes of lowercase hex")
    return raw


def typed(obj: dict, key: str, kind: type | tuple, where: str):
    """``obj[key]`` if it is of ``kind`` (a bool is never an int here)."""
    value = obj.get(key)
    if isinstance(value, bool) or not isinstance(value, kind):
        raise EpochRejected("format", f"{where}{key}: missing or wrong type")
    return value


def uint(obj: dict, key: str, where: str, limit: int) -> int:
    value = typed(obj, key, int, where)
    if not 0 <= value < limit:
        raise EpochRejected("format", f"{where}{key}: out of range")
    return value


def num(obj: dict, key: str, where: str) -> float:
    value = float(typed(obj, key, (int, float), where))
    if not value >= 0:
        raise EpochRejected("format", f"{where}{key}: negative")
    return value


def strs(obj: dict, key: str, where: str) -> tuple[str, ...]:
    items = typed(obj, key, list, where)
    if not all(isinstance(x, str) for x in items):
        raise EpochRejected("format", f"{where}{key}: not a list of strings")
    return tuple(items)


def pairs(obj: dict, key: str, where: str) -> tuple[tuple[str, str], ...]:
    """An optional attribute object (``grouptun.core.attributes`` grammar) as sorted pairs; absent: ()."""
    if key not in obj:
        return ()
    try:
        return tuple(check_attributes(obj[key], f"{where}{key}").items())
    except ValueError as exc:
        raise EpochRejected("format", str(exc)) from exc


def provider_id_of(value: object, what: str) -> str:
    """A provider id (64 lowercase hex digits, ``ProviderKeys.fingerprint``) or EpochRejected('format')."""
    if not isinstance(value, str) or len(value) != 64 or value.strip("0123456789abcdef"):
        raise EpochRejected("format", f"{what}: not a provider id (64 lowercase hex digits)")
    return value


@dataclass(frozen=True)
class ProviderKeys:
    """The provider's two public signing keys; members pin their hash."""

    ed25519_public: bytes
    mldsa65_public: bytes

    def fingerprint(self) -> str:
        """SHA-256 over label || ed25519 || ml-dsa-65, lowercase hex (64 chars)."""
        h = hashlib.sha256(KEYS_HASH_LABEL + self.ed25519_public + self.mldsa65_public)
        return h.hexdigest()

    def to_json(self) -> dict:
        return {"ed25519": b64e(self.ed25519_public), "mldsa65": b64e(self.mldsa65_public)}

    @classmethod
    def from_json(cls, obj: object) -> "ProviderKeys":
        if not isinstance(obj, dict):
            raise EpochRejected("format", "provider_keys: not an object")
        return cls(
            b64d(obj.get("ed25519"), "provider_keys.ed25519", ED25519_PUBLIC_SIZE),  # type: ignore[arg-type]
            b64d(obj.get("mldsa65"), "provider_keys.mldsa65", MLDSA65_PUBLIC_SIZE),  # type: ignore[arg-type]
        )


def canonical(obj: object) -> bytes:
    """RFC 8785 (JCS) canonical JSON bytes."""
    return rfc8785.dumps(obj)


def sign_envelope(obj: dict, label: bytes, ed_key: ed25519.Ed25519PrivateKey,
                  mldsa_key: mldsa.MLDSA65PrivateKey) -> bytes:
    """The signed envelope of document ``obj`` under ``label`` (the domain: an archive's signature never
    verifies as another kind of document's, PROTOCOL.md 8)."""
    document = canonical(obj)
    message = label + document
    envelope = {
        "document": document.decode("utf-8"),
        "ed25519": b64e(ed_key.sign(message)),
        "mldsa65": b64e(mldsa_key.sign(message, label)),
    }
    return canonical(envelope)


def _verify_signatures(document: bytes, sig_ed: bytes, sig_ml: bytes, pinned: ProviderKeys,
                       labels: tuple[bytes, ...]) -> bytes:
    """The label of ``labels`` both signatures verify under: the first whose Ed25519 signature verifies
    (cheap, so a second candidate costs one Ed25519 check, not an ML-DSA one), then ML-DSA under it."""
    try:
        ed = ed25519.Ed25519PublicKey.from_public_bytes(pinned.ed25519_public)
        for label in labels:
            try:
                ed.verify(sig_ed, label + document)
            except InvalidSignature:
                continue
            mldsa.MLDSA65PublicKey.from_public_bytes(pinned.mldsa65_public).verify(sig_ml, label + document, label)
            return label
    except (InvalidSignature, ValueError) as exc:
        raise EpochRejected("signature", "document signature does not verify") from exc
    raise EpochRejected("signature", "document signature does not verify")


def open_envelope(signed: bytes, pinned: ProviderKeys, label: bytes,
                  max_bytes: int = MAX_ENVELOPE_BYTES) -> dict:
    """Verify both signatures of an envelope under ``label``, then return its canonical document.
    Raises EpochRejected('signature' | 'format')."""
    return open_envelope_as(signed, pinned, (label,), max_bytes)[1]


def open_envelope_as(signed: bytes, pinned: ProviderKeys, labels: tuple[bytes, ...],
                     max_bytes: int = MAX_ENVELOPE_BYTES) -> tuple[bytes, dict]:
    """(label, canonical document) of an envelope whose signatures verify under one of ``labels``."""
    if len(signed) > max_bytes:
        raise EpochRejected("format", "envelope too large")
    try:
        envelope = json.loads(signed)
    except (ValueError, RecursionError) as exc:  # RecursionError: nesting deeper than the parser's stack
        raise EpochRejected("format", "envelope is not JSON") from exc
    if not isinstance(envelope, dict) or set(envelope) != {"document", "ed25519", "mldsa65"}:
        raise EpochRejected("format", "envelope has the wrong keys")
    if not isinstance(envelope["document"], str):
        raise EpochRejected("format", "document is not a string")
    try:
        document = envelope["document"].encode("utf-8")
    except UnicodeEncodeError as exc:  # a JSON escape of a lone surrogate ("\ud800") has no UTF-8 form
        raise EpochRejected("format", "document is not UTF-8 text") from exc
    sig_ed = b64d(envelope["ed25519"], "ed25519 signature")
    sig_ml = b64d(envelope["mldsa65"], "mldsa65 signature")
    label = _verify_signatures(document, sig_ed, sig_ml, pinned, labels)
    try:
        obj = json.loads(document)
        # JCS has no NaN, infinity or integer beyond 2^53 (CanonicalizationError, a ValueError):
        # json.loads reads them, so a document holding one is not canonical either
        is_canonical = canonical(obj) == document
    except (ValueError, RecursionError) as exc:
        raise EpochRejected("format", "document is not canonical JSON") from exc
    if not is_canonical:
        raise EpochRejected("format", "document is not RFC 8785 canonical")
    return label, obj
