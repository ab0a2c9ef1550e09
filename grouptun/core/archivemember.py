"""A member's entry in the signed group document (PROTOCOL.md 2, 2.1, 2.2): its record, form and parser.

Shape (one item of the document's ``"members"``, :mod:`grouptun.core.archive`)::

    {"name": str, "index": int, "addresses": ["10.77.0.2/24", ...],
     "endpoints": ["host:port" | "[v6]:port", ...],
     "ed25519_public": base64(32), "kem_public": base64(1216),
     "instance": hex(32) | null,
     "routes": ["192.168.5.0/24", ...]  (optional, grouptun extension),
     "home": provider id  (optional: a member of a linked provider, PROTOCOL.md 8),
     "attributes": {key: value}  (optional, grouptun extension),
     "expires_at": unix seconds  (optional, grouptun extension)}

A member's ``instance`` is SHA-256 of the start challenge that currently
owns it (the latest start the provider accepted for it; null before its
first): a daemon sends only in an epoch whose entry for its own member
names its own instance (PROTOCOL.md 4, :func:`instance_of`).

``routes`` (absent = none) are the subnet prefixes the provider approved
behind it: at most :data:`MAX_ROUTES`, each a network in strict form (no
host bits set). ``attributes`` are signed key=value pairs
(:mod:`grouptun.core.attributes` grammar) and ``expires_at`` a temporary
member's deadline; absent means none, so entries without them parse as
before. ``home`` is absent for the owner's own members.

In the compact form (PROTOCOL.md 2.2) ``"kem_sha256": hex(SHA-256(kem_public))``
stands in place of ``"kem_public"``: the parsed entry's ``kem_public`` is then
None and :meth:`ArchiveMember.kem_matches` checks a key fetched later
against the signed digest.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from dataclasses import dataclass

from grouptun.core.capsule import KEM_PUBLIC_SIZE
from grouptun.core.envelope import (ED25519_PUBLIC_SIZE, b64d, b64e, hexd, num, pairs, provider_id_of, strs, typed,
                                    uint)
from grouptun.errors import EpochRejected

KEM_DIGEST_SIZE = 32  # SHA-256 of a member's kem_public, in the compact form
INSTANCE_SIZE = 32
MAX_ROUTES = 64  # approved subnet routes per member (grouptun extension)


def instance_of(challenge: bytes) -> bytes:
    """A daemon's instance: SHA-256 of its start challenge (PROTOCOL.md 4)."""
    return hashlib.sha256(challenge).digest()


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
        """The full form's entry (a compact one is derived from it: ``archive.compact_document``)."""
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


def membership_json(attributes: tuple[tuple[str, str], ...], expires_at: float | None) -> dict:
    """A member entry's optional keys: each present only when set (absent = none, as in older archives)."""
    return {**({"attributes": dict(attributes)} if attributes else {}),
            **({} if expires_at is None else {"expires_at": expires_at})}


def parse_member(obj: object, compact: bool) -> ArchiveMember:
    """One entry of a verified document; ``compact``: of the compact form (kem_sha256, no kem_public)."""
    if not isinstance(obj, dict):
        raise EpochRejected("format", "member: not an object")
    w = "member."
    if "instance" not in obj:
        raise EpochRejected("format", "member.instance: missing")
    instance = obj["instance"]
    if compact and "kem_public" in obj:
        raise EpochRejected("format", "member.kem_public: in a compact archive (only kem_sha256 belongs there)")
    return ArchiveMember(
        name=typed(obj, "name", str, w), index=uint(obj, "index", w, 65536),
        addresses=strs(obj, "addresses", w), endpoints=strs(obj, "endpoints", w),
        ed25519_public=b64d(obj.get("ed25519_public"), "member.ed25519_public", ED25519_PUBLIC_SIZE),
        kem_public=None if compact else b64d(obj.get("kem_public"), "member.kem_public", KEM_PUBLIC_SIZE),
        kem_sha256=hexd(obj.get("kem_sha256"), "member.kem_sha256", KEM_DIGEST_SIZE) if compact else None,
        instance=None if instance is None else hexd(instance, "member.instance", INSTANCE_SIZE),
        attributes=pairs(obj, "attributes", w),
        expires_at=None if "expires_at" not in obj else num(obj, "expires_at", w),
        routes=_routes(obj, w) if "routes" in obj else (),
        home=None if "home" not in obj else provider_id_of(obj["home"], "member.home"),
    )


def _routes(obj: dict, where: str) -> tuple[str, ...]:
    routes = strs(obj, "routes", where)
    if len(routes) > MAX_ROUTES:
        raise EpochRejected("format", f"{where}routes: more than {MAX_ROUTES}")
    for text in routes:
        try:
            ipaddress.ip_network(text, strict=True)
        except ValueError as exc:
            raise EpochRejected("format", f"{where}routes: {text!r} is not a network") from exc
    return routes
