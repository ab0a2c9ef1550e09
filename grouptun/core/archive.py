"""The signed group document (the seed's Keystore Group Archive, KGA).

The provider publishes one document per group and version; members verify
it against the provider keys they pinned at join (PROTOCOL.md 2).

Wire shape (``verify_archive`` input, the "envelope", UTF-8 JSON)::

    {"document": "<RFC 8785 canonical JSON of the archive, as a string>",
     "ed25519": "<base64 signature>", "mldsa65": "<base64 signature>"}

Both signatures cover ``SIGNING_LABEL || document-bytes``; ML-DSA-65 also
gets ``SIGNING_LABEL`` as its FIPS 204 context string. Carrying the document
as a string keeps the signed bytes exact (no float re-serialisation); a
document that is not already canonical is refused. The document::

    {"format": "grouptun/1 archive",
     "group_id": hex(16 bytes), "name": str,
     "version": int (strictly increasing per group; unix milliseconds or more),
     "epoch": null | {"epoch": u32, "suite": 1|2, "nonce_start": u32,
               "group_size": N, "data_id": hex(16), "key_check": hex(16),
               "rekey_after_seconds": num, "rekey_after_packets": int,
               "switch_delay": num, "grace": num,
               "challenges": [hex(32 bytes), ...], "opened_at": unix seconds},
     "members": [{"name": str, "index": int, "addresses": ["10.77.0.2/24", ...],
                  "endpoints": ["host:port" | "[v6]:port", ...],
                  "ed25519_public": base64(32), "kem_public": base64(1216),
                  "instance": hex(32) | null,
                  "routes": ["192.168.5.0/24", ...]  (optional, grouptun extension),
                  "home": provider id  (optional: a member of a linked provider, PROTOCOL.md 8)}, ...],
     "attributes": {"cidr": "10.77.0.0/24", "cidr6": "fd77::/64" | null, "mtu": 1420},
     "expires_at": unix seconds,
     "provider_urls": ["https://host:port", ...]}      (optional, see below)

``epoch`` is null while the group has fewer than two members (PROTOCOL.md 1:
2 <= N): the provider opens no epoch then, but still signs the document so
the lone member sees its addresses and the member list; member indices are
then only an order (0..N-1), no epoch's. A member that asked for a start
meanwhile waits for the first epoch listing its challenge.

A member's ``instance`` is SHA-256 of the start challenge that currently
owns it (the latest start the provider accepted for it; null before its
first): a daemon sends only in an epoch whose entry for its own member
names its own instance (PROTOCOL.md 4, :func:`instance_of`).

``provider_urls`` (a grouptun extension, PROTOCOL.md 2) is the provider's
list of URLs, in the order members try them (1..8 distinct https URLs, one
certificate for all). Absent: the member keeps the list it has (the join
token's, or an earlier archive's).

grouptun extensions (OPTIONAL keys; absent means none, so archives without
them verify and parse as before): a member entry's ``"attributes": {key:
value}`` (signed attributes, :mod:`grouptun.core.attributes` grammar) and
``"expires_at"`` (a temporary member's deadline), and the document's
``"group_metadata": {"provider_id": hex, "expires_at"?: num, "owner"?:
{key: value}, "owners"?: [name, ...]}`` and ``"policy": {"version": int, "rules":
[statement, ...]}`` (the access policy, :mod:`grouptun.core.policy`, its
canonical statements one per item; absent: everything allowed) and
``"export_rules": {label: selector}`` (crypto-product names limited to members
with given attributes, :mod:`grouptun.core.exportrules`; absent: no limits)
(see PROTOCOL.md, grouptun extensions).

A member's ``routes`` (a grouptun extension, absent = none) are the subnet
prefixes the provider approved behind it: at most :data:`MAX_ROUTES`,
each a network in strict form (no host bits set).

The compact form (grouptun extension, PROTOCOL.md 2.2): the same document
with ``"format": "grouptun/1 compact archive"`` and, in each member entry,
``"kem_sha256": hex(SHA-256(kem_public))`` in place of ``"kem_public"``,
signed under :data:`COMPACT_LABEL` (so it never verifies as a full archive
or a voucher, nor they as it). 88 % of a full archive is other members' KEM
keys, which a daemon needs only to seal data to them; the compact form is
what daemons fetch and watch (``Archive.compact``; a member's
``kem_public`` is then None and :meth:`ArchiveMember.kem_matches` checks a
key fetched later against the signed digest). :func:`verify_archive` takes
the full form only unless ``compact_ok``; the label whose Ed25519 signature
verifies picks the form, and the document's format must be that form's.

``Archive.raw`` holds the whole envelope exactly as verified, so a member
can store it and verify it again later. Limits: this module checks shapes
and signatures only; the semantic acceptance order (group id, epoch newer,
index permutation, capsule and salt) is ``grouptun.core.accept``'s.
Signing draws randomness inside ``cryptography`` (ML-DSA's hedged signing),
like HPKE in ``capsule.py``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
from dataclasses import dataclass, field

import rfc8785
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519, mldsa

from grouptun.core import exportrules as exportrules_mod
from grouptun.core import policy as policy_mod
from grouptun.core.attributes import check as check_attributes
from grouptun.core.capsule import GROUP_ID_SIZE, KEM_PUBLIC_SIZE
from grouptun.core.jointoken import url_list_problem
from grouptun.errors import EpochRejected

FORMAT = "grouptun/1 archive"
SIGNING_LABEL = b"grouptun/1 archive"
COMPACT_FORMAT = "grouptun/1 compact archive"  # grouptun extension, PROTOCOL.md 2.2
COMPACT_LABEL = b"grouptun/1 compact archive"
KEM_DIGEST_SIZE = 32  # SHA-256 of a member's kem_public, in the compact form
KEYS_HASH_LABEL = b"grouptun/1 provider-keys"
ED25519_PUBLIC_SIZE = 32
MLDSA65_PUBLIC_SIZE = 1952
CHALLENGE_SIZE = 32
INSTANCE_SIZE = 32
MAX_ROUTES = 64  # approved subnet routes per member (grouptun extension)
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


def _hexd(text: object, what: str, size: int) -> bytes:
    try:
        raw = bytes.fromhex(text)  # type: ignore[arg-type]
    except (ValueError, TypeError) as exc:
        raise EpochRejected("format", f"{what}: not hex") from exc
    if len(raw) != size or text != raw.hex():
        raise EpochRejected("format", f"{what}: expected {size} bytes of lowercase hex")
    return raw


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


@dataclass(frozen=True)
class ArchiveMember:
    name: str
    index: int
    addresses: tuple[str, ...]
    endpoints: tuple[str, ...]
    ed25519_public: bytes
    kem_public: bytes | None  # None in a compact archive: only its digest (kem_sha256) is signed
    instance: bytes | None = None  # instance_of(the start challenge owning this member); None before its first
    attributes: tuple[tuple[str, str], ...] = ()  # grouptun extension: signed key=value pairs, sorted by key
    expires_at: float | None = None  # grouptun extension: a temporary member's deadline (unix seconds)
    routes: tuple[str, ...] = ()  # approved subnet prefixes behind it (grouptun extension; absent = none)
    home: str | None = None  # its home provider's id when not the owner's (PROTOCOL.md 8; absent = the owner's)
    kem_sha256: bytes | None = None  # compact archives only: SHA-256 of the kem_public they leave out

    @property
    def kem_digest(self) -> bytes:
        """SHA-256 of this member's kem_public: computed from the key, or as the compact form signed it."""
        if self.kem_public is not None:
            return hashlib.sha256(self.kem_public).digest()
        if self.kem_sha256 is None:
            raise ValueError(f"member {self.name!r}: neither kem_public nor kem_sha256")
        return self.kem_sha256

    def kem_matches(self, kem_public: bytes) -> bool:
        """True if ``kem_public`` is the key this (verified) entry names (constant-time compare)."""
        return hmac.compare_digest(hashlib.sha256(kem_public).digest(), self.kem_digest)

    def to_json(self) -> dict:
        """The full form's entry (a compact one is derived from it: :func:`compact_document`)."""
        if self.kem_public is None:
            raise ValueError(f"member {self.name!r}: a compact entry has no full form")
        out = {
            "name": self.name, "index": self.index, "addresses": list(self.addresses),
            "endpoints": list(self.endpoints), "ed25519_public": b64e(self.ed25519_public),
            "kem_public": b64e(self.kem_public), "instance": None if self.instance is None else self.instance.hex(),
            **membership_json(self.attributes, self.expires_at),
        }
        if self.routes:  # absent when none: documents without routes stay byte-identical to before
            out["routes"] = list(self.routes)
        if self.home is not None:  # absent for the owner's own members: their documents stay as before
            out["home"] = self.home
        return out


@dataclass(frozen=True)
class ArchiveEpoch:
    epoch: int
    suite: int
    nonce_start: int
    group_size: int
    data_id: bytes
    key_check: bytes
    rekey_after_seconds: float
    rekey_after_packets: int
    switch_delay: float
    grace: float
    challenges: tuple[bytes, ...]
    opened_at: float

    def to_json(self) -> dict:
        return {
            "epoch": self.epoch, "suite": self.suite, "nonce_start": self.nonce_start,
            "group_size": self.group_size, "data_id": self.data_id.hex(),
            "key_check": self.key_check.hex(), "rekey_after_seconds": self.rekey_after_seconds,
            "rekey_after_packets": self.rekey_after_packets, "switch_delay": self.switch_delay,
            "grace": self.grace, "challenges": [c.hex() for c in self.challenges],
            "opened_at": self.opened_at,
        }


@dataclass(frozen=True)
class GroupMetadata:
    """The seed's PID and GMD (grouptun extension, key ``group_metadata``): who signed, until when, whose."""

    provider_id: str                               # the provider keys' fingerprint (ProviderKeys.fingerprint)
    expires_at: float | None = None                # the whole group's end (unix seconds); None: none set
    owner: tuple[tuple[str, str], ...] = ()        # free-form owner fields, attribute grammar
    owners: tuple[str, ...] = ()                   # the roles: who owns (manages) the group, sorted names

    def to_json(self) -> dict:
        return {"provider_id": self.provider_id,
                **({} if self.expires_at is None else {"expires_at": self.expires_at}),
                **({"owner": dict(self.owner)} if self.owner else {}),
                **({"owners": list(self.owners)} if self.owners else {})}


@dataclass(frozen=True)
class ArchivePolicy:
    """The access policy (grouptun extension, key ``policy``) and its version (increasing per group)."""

    version: int
    policy: policy_mod.Policy

    def to_json(self) -> dict:
        return {"version": self.version, "rules": str(self.policy).split("\n")}


def membership_json(attributes: tuple[tuple[str, str], ...], expires_at: float | None) -> dict:
    """A member entry's optional keys: each present only when set (absent = none, as in older archives)."""
    return {**({"attributes": dict(attributes)} if attributes else {}),
            **({} if expires_at is None else {"expires_at": expires_at})}


@dataclass(frozen=True)
class Archive:
    group_id: bytes
    name: str
    version: int
    epoch: ArchiveEpoch | None  # None: no current epoch (fewer than 2 members)
    members: tuple[ArchiveMember, ...]
    cidr: str
    cidr6: str | None
    mtu: int
    expires_at: float
    raw: bytes = field(default=b"", compare=False, repr=False)
    provider_urls: tuple[str, ...] = ()  # () = the document has no provider_urls (keep the member's list)
    metadata: GroupMetadata | None = None  # grouptun extension: absent in archives without it
    policy: ArchivePolicy | None = None    # grouptun extension: absent means everything is allowed
    export_rules: exportrules_mod.ExportRules | None = None  # grouptun extension: absent means no limits
    compact: bool = False  # parsed from the compact form (PROTOCOL.md 2.2): members carry kem_sha256 only

    def to_json(self) -> dict:
        """The full form's document (the compact one is :func:`compact_document` of it)."""
        document = {
            "format": FORMAT, "group_id": self.group_id.hex(), "name": self.name,
            "version": self.version, "epoch": None if self.epoch is None else self.epoch.to_json(),
            "members": [m.to_json() for m in self.members],
            "attributes": {"cidr": self.cidr, "cidr6": self.cidr6, "mtu": self.mtu},
            "expires_at": self.expires_at,
            **({} if self.metadata is None else {"group_metadata": self.metadata.to_json()}),
            **({} if self.policy is None else {"policy": self.policy.to_json()}),
            **({"export_rules": self.export_rules.to_json()} if self.export_rules and self.export_rules.rules else {}),
        }
        if self.provider_urls:  # optional: an archive without it is byte-for-byte the older form
            document["provider_urls"] = list(self.provider_urls)
        return document

    def member(self, name: str) -> ArchiveMember | None:
        return next((m for m in self.members if m.name == name), None)


def instance_of(challenge: bytes) -> bytes:
    """A daemon's instance: SHA-256 of its start challenge (PROTOCOL.md 4)."""
    return hashlib.sha256(challenge).digest()


def canonical(obj: object) -> bytes:
    """RFC 8785 (JCS) canonical JSON bytes."""
    return rfc8785.dumps(obj)


ENROLL_LABEL = b"grouptun/1 enroll"


def enroll_message(secret: str, name: str, ed25519_public: bytes, kem_public: bytes, authenticator: bytes,
                   endpoints: list[str] | tuple[str, ...]) -> bytes:
    """What a member signs with its Ed25519 key to enroll (proof of possession).

    ``ENROLL_LABEL || RFC 8785 JSON`` of the enrollment request's fields
    (binary ones in standard base64): the token secret, the name, both
    public keys, the authenticator (``grouptun.control.credkeys``) and the endpoints. The provider checks the
    signature with the Ed25519 public key in the same request before it
    consumes the token, so nobody enrolls a key they do not hold, and a
    request altered in transit (another KEM key) does not verify.
    """
    return ENROLL_LABEL + canonical({
        "secret": secret, "name": name, "ed25519_public": b64e(ed25519_public), "kem_public": b64e(kem_public),
        "authenticator": b64e(authenticator), "endpoints": list(endpoints),
    })


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


def sign_archive(archive: Archive, ed_key: ed25519.Ed25519PrivateKey,
                 mldsa_key: mldsa.MLDSA65PrivateKey, compact: bool = False) -> bytes:
    """Return the signed envelope bytes for ``archive`` (its ``raw`` is ignored); with ``compact`` its
    compact form's, under COMPACT_LABEL."""
    document = archive.to_json()
    if compact:
        return sign_envelope(compact_document(document), COMPACT_LABEL, ed_key, mldsa_key)
    return sign_envelope(document, SIGNING_LABEL, ed_key, mldsa_key)


def compact_document(document: dict) -> dict:
    """The compact form of full document ``document`` (PROTOCOL.md 2.2; the one place that rule is written):
    the same object with its format replaced and, in each member entry, ``kem_public`` replaced by
    ``kem_sha256``, the lowercase hex SHA-256 of the key's raw bytes. Every other key stays as it is."""
    if document.get("format") != FORMAT:
        raise ValueError(f"not a {FORMAT!r} document")
    members = []
    for entry in document["members"]:
        out = {k: v for k, v in entry.items() if k != "kem_public"}
        out["kem_sha256"] = hashlib.sha256(b64d(entry["kem_public"], "member.kem_public", KEM_PUBLIC_SIZE)).hexdigest()
        members.append(out)
    return {**document, "format": COMPACT_FORMAT, "members": members}


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


def open_envelope(signed: bytes, pinned: ProviderKeys, label: bytes = SIGNING_LABEL,
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


def verify_archive(signed: bytes, pinned: ProviderKeys, compact_ok: bool = False) -> Archive:
    """Verify both signatures, then parse: the full form, or with ``compact_ok`` either form (the one
    whose label the signatures verify under). Raises EpochRejected('signature' | 'format')."""
    label, obj = open_envelope_as(signed, pinned, (SIGNING_LABEL, COMPACT_LABEL) if compact_ok else (SIGNING_LABEL,))
    return parse_document(obj, raw=bytes(signed), compact=label == COMPACT_LABEL)


def _get(obj: dict, key: str, kind: type | tuple, where: str):
    value = obj.get(key)
    if isinstance(value, bool) or not isinstance(value, kind):
        raise EpochRejected("format", f"{where}{key}: missing or wrong type")
    return value


def _uint(obj: dict, key: str, where: str, limit: int) -> int:
    value = _get(obj, key, int, where)
    if not 0 <= value < limit:
        raise EpochRejected("format", f"{where}{key}: out of range")
    return value


def _num(obj: dict, key: str, where: str) -> float:
    value = float(_get(obj, key, (int, float), where))
    if not value >= 0:
        raise EpochRejected("format", f"{where}{key}: negative")
    return value


def _strs(obj: dict, key: str, where: str) -> tuple[str, ...]:
    items = _get(obj, key, list, where)
    if not all(isinstance(x, str) for x in items):
        raise EpochRejected("format", f"{where}{key}: not a list of strings")
    return tuple(items)


def _parse_epoch(obj: object) -> ArchiveEpoch:
    if not isinstance(obj, dict):
        raise EpochRejected("format", "epoch: not an object")
    w = "epoch."
    challenges = tuple(_hexd(c, "epoch.challenges", CHALLENGE_SIZE) for c in _get(obj, "challenges", list, w))
    return ArchiveEpoch(
        epoch=_uint(obj, "epoch", w, 2**32), suite=_uint(obj, "suite", w, 256),
        nonce_start=_uint(obj, "nonce_start", w, 2**32), group_size=_uint(obj, "group_size", w, 65536),
        data_id=_hexd(obj.get("data_id"), "epoch.data_id", 16),
        key_check=_hexd(obj.get("key_check"), "epoch.key_check", 16),
        rekey_after_seconds=_num(obj, "rekey_after_seconds", w),
        rekey_after_packets=_uint(obj, "rekey_after_packets", w, 2**63),
        switch_delay=_num(obj, "switch_delay", w), grace=_num(obj, "grace", w),
        challenges=challenges, opened_at=_num(obj, "opened_at", w),
    )


def _parse_member(obj: object, compact: bool) -> ArchiveMember:
    if not isinstance(obj, dict):
        raise EpochRejected("format", "member: not an object")
    w = "member."
    if "instance" not in obj:
        raise EpochRejected("format", "member.instance: missing")
    instance = obj["instance"]
    if compact and "kem_public" in obj:
        raise EpochRejected("format", "member.kem_public: in a compact archive (only kem_sha256 belongs there)")
    return ArchiveMember(
        name=_get(obj, "name", str, w), index=_uint(obj, "index", w, 65536),
        addresses=_strs(obj, "addresses", w), endpoints=_strs(obj, "endpoints", w),
        ed25519_public=b64d(obj.get("ed25519_public"), "member.ed25519_public", ED25519_PUBLIC_SIZE),
        kem_public=None if compact else b64d(obj.get("kem_public"), "member.kem_public", KEM_PUBLIC_SIZE),
        kem_sha256=_hexd(obj.get("kem_sha256"), "member.kem_sha256", KEM_DIGEST_SIZE) if compact else None,
        instance=None if instance is None else _hexd(instance, "member.instance", INSTANCE_SIZE),
        attributes=_pairs(obj, "attributes", w),
        expires_at=None if "expires_at" not in obj else _num(obj, "expires_at", w),
        routes=_routes(obj, w) if "routes" in obj else (),
        home=None if "home" not in obj else provider_id_of(obj["home"], "member.home"),
    )


def provider_id_of(value: object, what: str) -> str:
    """A provider id (64 lowercase hex digits, ``ProviderKeys.fingerprint``) or EpochRejected('format')."""
    if not isinstance(value, str) or len(value) != 64 or value.strip("0123456789abcdef"):
        raise EpochRejected("format", f"{what}: not a provider id (64 lowercase hex digits)")
    return value


def _provider_urls(obj: dict) -> tuple[str, ...]:
    if "provider_urls" not in obj:
        return ()
    urls = obj["provider_urls"]
    problem = url_list_problem(urls)
    if problem is not None or any(u.endswith("/") for u in urls):
        raise EpochRejected("format", f"provider_urls: {problem or 'a URL ends with /'}")
    return tuple(urls)


def _pairs(obj: dict, key: str, where: str) -> tuple[tuple[str, str], ...]:
    """An optional attribute object (``grouptun.core.attributes`` grammar) as sorted pairs; absent: ()."""
    if key not in obj:
        return ()
    try:
        return tuple(check_attributes(obj[key], f"{where}{key}").items())
    except ValueError as exc:
        raise EpochRejected("format", str(exc)) from exc


def _parse_metadata(obj: object) -> GroupMetadata:
    if not isinstance(obj, dict):
        raise EpochRejected("format", "group_metadata: not an object")
    w = "group_metadata."
    return GroupMetadata(provider_id=_get(obj, "provider_id", str, w),
                         expires_at=None if "expires_at" not in obj else _num(obj, "expires_at", w),
                         owner=_pairs(obj, "owner", w), owners=_owners(obj, w))


def _owners(obj: dict, where: str) -> tuple[str, ...]:
    """Optional ``owners``: sorted, unique names of 1..64 characters; absent: ()."""
    if "owners" not in obj:
        return ()
    names = _strs(obj, "owners", where)
    if list(names) != sorted(set(names)) or not all(0 < len(n) <= 64 for n in names):
        raise EpochRejected("format", f"{where}owners: not sorted unique names of 1..64 characters")
    return names


def _routes(obj: dict, where: str) -> tuple[str, ...]:
    routes = _strs(obj, "routes", where)
    if len(routes) > MAX_ROUTES:
        raise EpochRejected("format", f"{where}routes: more than {MAX_ROUTES}")
    for text in routes:
        try:
            ipaddress.ip_network(text, strict=True)
        except ValueError as exc:
            raise EpochRejected("format", f"{where}routes: {text!r} is not a network") from exc
    return routes


def _parse_policy(obj: object) -> ArchivePolicy:
    """The ``policy`` object: a version and the canonical statements of a policy that parses."""
    if not isinstance(obj, dict) or set(obj) != {"version", "rules"}:
        raise EpochRejected("format", "policy: not an object of version and rules")
    version, rules = _uint(obj, "version", "policy.", 2**63), _strs(obj, "rules", "policy.")
    try:
        parsed = policy_mod.parse("\n".join(rules))
    except policy_mod.PolicyError as exc:
        raise EpochRejected("format", f"policy: {exc}") from exc
    if str(parsed).split("\n") != list(rules):
        raise EpochRejected("format", "policy.rules: not the canonical statements")
    return ArchivePolicy(version, parsed)


def parse_document(obj: object, raw: bytes = b"", compact: bool = False) -> Archive:
    """Parse an already verified document object into an :class:`Archive` of the form ``compact`` names
    (the form whose label the signatures verified under: a document of the other format is refused)."""
    expected = COMPACT_FORMAT if compact else FORMAT
    if not isinstance(obj, dict) or obj.get("format") != expected:
        raise EpochRejected("format", f"document format is not {expected!r}")
    attrs = obj.get("attributes")
    if not isinstance(attrs, dict):
        raise EpochRejected("format", "attributes: not an object")
    cidr6 = attrs.get("cidr6")
    if cidr6 is not None and not isinstance(cidr6, str):
        raise EpochRejected("format", "attributes.cidr6: wrong type")
    return Archive(
        group_id=_hexd(obj.get("group_id"), "group_id", GROUP_ID_SIZE),
        name=_get(obj, "name", str, ""), version=_uint(obj, "version", "", 2**63),
        epoch=None if obj.get("epoch", 0) is None else _parse_epoch(obj.get("epoch")),
        members=tuple(_parse_member(m, compact) for m in _get(obj, "members", list, "")),
        cidr=_get(attrs, "cidr", str, "attributes."), cidr6=cidr6,
        mtu=_uint(attrs, "mtu", "attributes.", 65536), expires_at=_num(obj, "expires_at", ""),
        raw=raw, provider_urls=_provider_urls(obj),
        metadata=None if "group_metadata" not in obj else _parse_metadata(obj["group_metadata"]),
        policy=None if "policy" not in obj else _parse_policy(obj["policy"]),
        export_rules=None if "export_rules" not in obj else _parse_export_rules(obj["export_rules"]),
        compact=compact,
    )


def _parse_export_rules(obj: object) -> exportrules_mod.ExportRules:
    try:
        return exportrules_mod.from_json(obj)
    except ValueError as exc:
        raise EpochRejected("format", str(exc)) from exc
