"""The signed group document (the seed's Keystore Group Archive, KGA).

The provider publishes one document per group and version; members verify
it against the provider keys they pinned at join (PROTOCOL.md 2). It travels
in the signed envelope of :mod:`grouptun.core.envelope` under
:data:`SIGNING_LABEL` (the full form) or :data:`COMPACT_LABEL` (the compact
form). The document::

    {"format": "grouptun/1 archive",
     "group_id": hex(16 bytes), "name": str,
     "version": int (strictly increasing per group; unix milliseconds or more),
     "epoch": null | {"epoch": u32, "suite": 1|2, "nonce_start": u32,
               "group_size": N, "data_id": hex(16), "key_check": hex(16),
               "rekey_after_seconds": num, "rekey_after_packets": int,
               "switch_delay": num, "grace": num,
               "challenges": [hex(32 bytes), ...], "opened_at": unix seconds},
     "members": [member entry, ...]   (:mod:`grouptun.core.archivemember`),
     "attributes": {"cidr": "10.77.0.0/24", "cidr6": "fd77::/64" | null, "mtu": 1420},
     "expires_at": unix seconds,
     "provider_urls": ["https://host:port", ...]}      (optional, see below)

``epoch`` is null while the group has fewer than two members (PROTOCOL.md 1:
2 <= N): the provider opens no epoch then, but still signs the document so
the lone member sees its addresses and the member list; member indices are
then only an order (0..N-1), no epoch's. A member that asked for a start
meanwhile waits for the first epoch listing its challenge.

``provider_urls`` (a grouptun extension, PROTOCOL.md 2) is the provider's
list of URLs, in the order members try them (1..8 distinct https URLs, one
certificate for all). Absent: the member keeps the list it has (the join
token's, or an earlier archive's).

grouptun extensions (OPTIONAL keys; absent means none, so archives without
them verify and parse as before): the member entry's own
(:mod:`grouptun.core.archivemember`), and the document's
``"group_metadata": {"provider_id": hex, "expires_at"?: num, "owner"?:
{key: value}, "owners"?: [name, ...]}`` and ``"policy": {"version": int, "rules":
[statement, ...]}`` (the access policy, :mod:`grouptun.core.policy`, its
canonical statements one per item; absent: everything allowed) and
``"export_rules": {label: selector}`` (crypto-product names limited to members
with given attributes, :mod:`grouptun.core.exportrules`; absent: no limits)
(see PROTOCOL.md, grouptun extensions).

The compact form (grouptun extension, PROTOCOL.md 2.2): the same document
with ``"format": "grouptun/1 compact archive"`` and, in each member entry,
``"kem_sha256": hex(SHA-256(kem_public))`` in place of ``"kem_public"``,
signed under :data:`COMPACT_LABEL` (so it never verifies as a full archive
or a voucher, nor they as it). 88 % of a full archive is other members' KEM
keys, which a daemon needs only to seal data to them; the compact form is
what daemons fetch and watch (``Archive.compact``; a member's
``kem_public`` is then None and ``ArchiveMember.kem_matches`` checks a
key fetched later against the signed digest). :func:`verify_archive` takes
the full form only unless ``compact_ok``; the label whose Ed25519 signature
verifies picks the form, and the document's format must be that form's.

``Archive.raw`` holds the whole envelope exactly as verified, so a member
can store it and verify it again later. Limits: this module checks shapes
and signatures only; the semantic acceptance order (group id, epoch newer,
index permutation, capsule and salt) is ``grouptun.core.accept``'s.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric import ed25519, mldsa

from grouptun.core import exportrules as exportrules_mod
from grouptun.core import policy as policy_mod
from grouptun.core.archivemember import ArchiveMember, parse_member
from grouptun.core.capsule import GROUP_ID_SIZE, KEM_PUBLIC_SIZE
from grouptun.core.envelope import (ProviderKeys, b64d, hexd, num, open_envelope_as, pairs, sign_envelope, strs,
                                    typed, uint)
from grouptun.core.jointoken import url_list_problem
from grouptun.errors import EpochRejected

FORMAT = "grouptun/1 archive"
SIGNING_LABEL = b"grouptun/1 archive"
COMPACT_FORMAT = "grouptun/1 compact archive"  # grouptun extension, PROTOCOL.md 2.2
COMPACT_LABEL = b"grouptun/1 compact archive"
CHALLENGE_SIZE = 32


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


def verify_archive(signed: bytes, pinned: ProviderKeys, compact_ok: bool = False) -> Archive:
    """Verify both signatures, then parse: the full form, or with ``compact_ok`` either form (the one
    whose label the signatures verify under). Raises EpochRejected('signature' | 'format')."""
    label, obj = open_envelope_as(signed, pinned, (SIGNING_LABEL, COMPACT_LABEL) if compact_ok else (SIGNING_LABEL,))
    return parse_document(obj, raw=bytes(signed), compact=label == COMPACT_LABEL)


def _parse_epoch(obj: object) -> ArchiveEpoch:
    if not isinstance(obj, dict):
        raise EpochRejected("format", "epoch: not an object")
    w = "epoch."
    challenges = tuple(hexd(c, "epoch.challenges", CHALLENGE_SIZE) for c in typed(obj, "challenges", list, w))
    return ArchiveEpoch(
        epoch=uint(obj, "epoch", w, 2**32), suite=uint(obj, "suite", w, 256),
        nonce_start=uint(obj, "nonce_start", w, 2**32), group_size=uint(obj, "group_size", w, 65536),
        data_id=hexd(obj.get("data_id"), "epoch.data_id", 16),
        key_check=hexd(obj.get("key_check"), "epoch.key_check", 16),
        rekey_after_seconds=num(obj, "rekey_after_seconds", w),
        rekey_after_packets=uint(obj, "rekey_after_packets", w, 2**63),
        switch_delay=num(obj, "switch_delay", w), grace=num(obj, "grace", w),
        challenges=challenges, opened_at=num(obj, "opened_at", w),
    )


def _provider_urls(obj: dict) -> tuple[str, ...]:
    if "provider_urls" not in obj:
        return ()
    urls = obj["provider_urls"]
    problem = url_list_problem(urls)
    if problem is not None or any(u.endswith("/") for u in urls):
        raise EpochRejected("format", f"provider_urls: {problem or 'a URL ends with /'}")
    return tuple(urls)


def _parse_metadata(obj: object) -> GroupMetadata:
    if not isinstance(obj, dict):
        raise EpochRejected("format", "group_metadata: not an object")
    w = "group_metadata."
    return GroupMetadata(provider_id=typed(obj, "provider_id", str, w),
                         expires_at=None if "expires_at" not in obj else num(obj, "expires_at", w),
                         owner=pairs(obj, "owner", w), owners=_owners(obj, w))


def _owners(obj: dict, where: str) -> tuple[str, ...]:
    """Optional ``owners``: sorted, unique names of 1..64 characters; absent: ()."""
    if "owners" not in obj:
        return ()
    names = strs(obj, "owners", where)
    if list(names) != sorted(set(names)) or not all(0 < len(n) <= 64 for n in names):
        raise EpochRejected("format", f"{where}owners: not sorted unique names of 1..64 characters")
    return names


def _parse_policy(obj: object) -> ArchivePolicy:
    """The ``policy`` object: a version and the canonical statements of a policy that parses."""
    if not isinstance(obj, dict) or set(obj) != {"version", "rules"}:
        raise EpochRejected("format", "policy: not an object of version and rules")
    version, rules = uint(obj, "version", "policy.", 2**63), strs(obj, "rules", "policy.")
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
        group_id=hexd(obj.get("group_id"), "group_id", GROUP_ID_SIZE),
        name=typed(obj, "name", str, ""), version=uint(obj, "version", "", 2**63),
        epoch=None if obj.get("epoch", 0) is None else _parse_epoch(obj.get("epoch")),
        members=tuple(parse_member(m, compact) for m in typed(obj, "members", list, "")),
        cidr=typed(attrs, "cidr", str, "attributes."), cidr6=cidr6,
        mtu=uint(attrs, "mtu", "attributes.", 65536), expires_at=num(obj, "expires_at", ""),
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
