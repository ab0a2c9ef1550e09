"""RFC 9421 HTTP Message Signatures for member requests, both sides.

Every member request carries one signature, label ``gt``, algorithm
``ed25519``, tag ``grouptun/1``, ``keyid`` = the member name (the group is
in the covered path; admin requests: ``admin:<id>`` or ``owner:<group>/<member>``,
``provider/admin.py``), parameters ``created`` (unix seconds) and ``nonce``
(16 random bytes, base64url), covering ``@method``, ``@path`` (with the
query: ``@path`` is the path only, so the query is covered by also signing
``@query``) and ``content-digest`` (RFC 9530 SHA-256 of the body, present
even for an empty body).

The verifier refuses, in this order and each with one fixed reason:
malformed or missing headers, a ``created`` outside ``[now - MAX_AGE,
now + MAX_SKEW]`` ("stale signature"), a bad signature or unknown member
("signature not valid" -- an unknown member is verified against a fixed
dummy key so both cost the same work), a body that does not match its
digest. Replay (nonce reuse) is the caller's policy: see ``NonceCache``.
"""

from __future__ import annotations

import datetime
import os
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

import http_sf
from cryptography.hazmat.primitives.asymmetric import ed25519
from http_message_signatures import HTTPMessageSigner, HTTPMessageVerifier, algorithms
from http_message_signatures.exceptions import HTTPMessageSignaturesException

from grouptun.core.jointoken import b64url
from grouptun.errors import ProtocolError

LABEL = "gt"
TAG = "grouptun/1"
COVERED = ("@method", "@path", "@query", "content-digest")
MAX_AGE = 60  # seconds a signature stays acceptable
MAX_SKEW = 5  # seconds a signer's clock may run ahead
NONCE_BYTES = 16
MAX_KEYID_CHARS = 104  # "owner:" + a 32-character group + "/" + a 64-character member (admin API)

# Fixed, public dummy key: unknown members are checked against it so that
# "unknown" and "bad signature" cost the same and answer the same.
_DUMMY_PUBLIC = ed25519.Ed25519PrivateKey.from_private_bytes(b"\x42" * 32).public_key()


class SignatureRefused(ProtocolError):
    """Carries one of the fixed public reasons; never details an attacker could use.

    In the package's exception tree (a request breaking the signing rules above);
    defined here because only this module and the provider that calls it use it.
    """

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


@dataclass
class Message:
    """The minimum http_message_signatures needs: method, absolute URL, headers."""

    method: str
    url: str
    headers: object


class _Keys:
    def __init__(self, private: ed25519.Ed25519PrivateKey | None = None,
                 public: ed25519.Ed25519PublicKey | None = None) -> None:
        self.private, self.public = private, public

    def resolve_private_key(self, key_id: str):
        return self.private

    def resolve_public_key(self, key_id: str):
        return self.public


def sign_headers(method: str, url: str, headers: dict, body: bytes, key_id: str,
                 key: ed25519.Ed25519PrivateKey, created: float | None = None,
                 nonce: str | None = None, extra: tuple[str, ...] = ()) -> None:
    """Add Content-Digest, Signature-Input and Signature to ``headers`` (in place).

    ``extra``: header names covered besides COVERED (a provider forwarding for a member covers
    ``gt-member``, PROTOCOL.md 8); the verifier must require the same."""
    signer = HTTPMessageSigner(signature_algorithm=algorithms.ED25519, key_resolver=_Keys(private=key))
    when = datetime.datetime.fromtimestamp(time.time() if created is None else created, datetime.timezone.utc)
    signer.sign(Message(method.upper(), url, headers), key_id=key_id, created=when,
                nonce=nonce or b64url(os.urandom(NONCE_BYTES)), label=LABEL, tag=TAG,
                covered_component_ids=COVERED + tuple(extra), body=body)


@dataclass(frozen=True)
class Verified:
    key_id: str
    nonce: str
    created: int


class _Verifier(HTTPMessageVerifier):
    max_clock_skew = datetime.timedelta(seconds=MAX_SKEW)


def _refuse_duplicate(key: str, context: str) -> None:
    # RFC 8941 lets the last duplicate win; refuse instead, so this pre-check and the
    # library's own parse can never read different keyid/nonce/created values.
    raise ValueError(f"duplicate {context} key {key!r}")


def _params(headers) -> tuple[str, str, int]:
    """Pull keyid, nonce, created out of Signature-Input before any crypto.

    Parsed with ``http_sf`` (RFC 8941), the structured-field parser that
    http_message_signatures itself uses: the library has no public way to
    read a signature's parameters before verifying it.
    """
    try:
        raw = headers.get("signature-input")
        if raw is None or len(raw) > 1024:
            raise SignatureRefused("signature missing")
        parsed = http_sf.parse(raw.encode("ascii"), tltype="dictionary", on_duplicate_key=_refuse_duplicate)
        _, params = parsed[LABEL]
        key_id, nonce, created = params["keyid"], params["nonce"], params["created"]
    except (KeyError, ValueError, TypeError) as exc:  # http_sf.StructuredFieldError is a ValueError
        raise SignatureRefused("signature missing") from exc
    if not (isinstance(key_id, str) and isinstance(nonce, str) and type(created) is int):
        raise SignatureRefused("signature missing")
    if not 0 < len(key_id) <= MAX_KEYID_CHARS or not 16 <= len(nonce) <= 64:
        raise SignatureRefused("signature missing")
    return key_id, nonce, created


def verify_headers(method: str, url: str, headers, body: bytes,
                   resolve: Callable[[str], ed25519.Ed25519PublicKey | None],
                   now: float, not_before: float = 0.0, extra: tuple[str, ...] = ()) -> Verified:
    """Verify one member request; raises SignatureRefused(reason).

    ``resolve(key_id)`` returns the member's public key or None (unknown);
    ``not_before`` refuses signatures created earlier (the server passes its
    start time, so a restart cannot reopen a replay window it forgot).
    """
    key_id, nonce, created = _params(headers)
    if not (now - MAX_AGE <= created <= now + MAX_SKEW) or created < not_before:
        raise SignatureRefused("stale signature")
    key = resolve(key_id)
    verifier = _Verifier(signature_algorithm=algorithms.ED25519,
                         key_resolver=_Keys(public=key if key is not None else _DUMMY_PUBLIC))
    try:
        verifier.verify(Message(method.upper(), url, headers), max_age=None, expect_tag=TAG,
                        expect_label=LABEL, require_components=COVERED + tuple(extra), body=body)
    except HTTPMessageSignaturesException as exc:
        raise SignatureRefused("signature not valid") from exc
    if key is None:  # dummy key verified: impossible in practice, refused anyway
        raise SignatureRefused("signature not valid")
    return Verified(key_id, nonce, created)


class NonceCache:
    """Nonces seen within MAX_AGE + MAX_SKEW; bounded (oldest evicted first).

    Limits: in memory only -- the server also refuses signatures created
    before it started (``not_before``), which covers restarts. ``capacity``
    bounds memory; an evicted nonce is older than any a flood could push out
    only if the flood is rate-limited, which the server does per address.
    """

    def __init__(self, capacity: int = 200_000) -> None:
        self.capacity = capacity
        self._seen: OrderedDict[tuple[str, str], float] = OrderedDict()

    def check_and_add(self, scope: str, nonce: str, now: float) -> bool:
        """True if new (and now recorded); False for a replay."""
        horizon = now - MAX_AGE - MAX_SKEW
        while self._seen and (next(iter(self._seen.values())) < horizon or len(self._seen) >= self.capacity):
            self._seen.popitem(last=False)
        key = (scope, nonce)
        if key in self._seen:
            return False
        self._seen[key] = now
        return True

    def __len__(self) -> int:
        return len(self._seen)

