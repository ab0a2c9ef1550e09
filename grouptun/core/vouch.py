"""A home provider's voucher for a linked provider (PROTOCOL.md 8): how a member of one provider verifies the
archive of a group that another provider owns.

A member pinned only its own (home) provider at join. A group owned by a
linked provider is signed with that provider's keys, which the member has
never seen; its home provider vouches for them in a document it signs, so
the member's trust still starts at its own join token. Wire shape (the
envelope of ``grouptun.core.archive``, signed under ``VOUCH_LABEL``, so an
archive signature never verifies as a voucher nor the other way round)::

    {"format": "grouptun/1 provider-vouch",
     "home": provider id of the signer (the member's home provider),
     "provider": provider id of the vouched provider (= fingerprint of "keys"),
     "keys": {"ed25519": base64(32), "mldsa65": base64(1952)},
     "url": "https://HOST[:PORT]", "tls": hex SHA-256 of its certificate,
     "groups": [group name, ...]   (optional: the link serves only these; absent: any),
     "issued_at": unix seconds}

:func:`verify_foreign_archive` is the member's whole check: the voucher
verifies against the pinned home keys and names them as its signer, the
archive verifies against the vouched keys, its ``group_metadata.provider_id``
is the vouched provider, the group is one the link serves, and the member's
own entry names its home provider. Any failure is ``EpochRejected``
('signature' for a signature, 'link' for the rest), and the archive is
refused. Sans-IO: no clock (the voucher's ``issued_at`` is informative;
freshness comes from the archive's version rule).
"""

from __future__ import annotations

from dataclasses import dataclass

from grouptun.core.archive import (Archive, ProviderKeys, open_envelope, provider_id_of, sign_envelope,
                                   verify_archive)
from grouptun.core.jointoken import url_problem
from grouptun.errors import EpochRejected

VOUCH_FORMAT = "grouptun/1 provider-vouch"
VOUCH_LABEL = b"grouptun/1 provider-vouch"
MAX_VOUCH_BYTES = 16 * 1024
MAX_VOUCH_GROUPS = 64
_KEYS = {"format", "home", "provider", "keys", "url", "tls", "issued_at"}


@dataclass(frozen=True)
class Vouch:
    home: str                      # the signing home provider's id
    keys: ProviderKeys             # the vouched provider's signing keys
    url: str
    tls: str                       # SHA-256 of the vouched provider's TLS certificate, hex
    issued_at: float
    groups: tuple[str, ...] | None = None  # None: the link serves any group

    @property
    def provider(self) -> str:
        return self.keys.fingerprint()

    def to_json(self) -> dict:
        out = {"format": VOUCH_FORMAT, "home": self.home, "provider": self.provider, "keys": self.keys.to_json(),
               "url": self.url, "tls": self.tls, "issued_at": self.issued_at}
        if self.groups is not None:
            out["groups"] = list(self.groups)
        return out


def sign_vouch(vouch: Vouch, ed_key, mldsa_key) -> bytes:
    """The home provider's signed envelope of ``vouch`` (its own two private keys)."""
    return sign_envelope(vouch.to_json(), VOUCH_LABEL, ed_key, mldsa_key)


def _bad(detail: str) -> EpochRejected:
    return EpochRejected("link", detail)


def _parse(obj: dict) -> Vouch:
    if set(obj) - {"groups"} != _KEYS or obj["format"] != VOUCH_FORMAT:
        raise EpochRejected("format", "voucher: wrong keys or format")
    keys = ProviderKeys.from_json(obj["keys"])
    if provider_id_of(obj["provider"], "voucher.provider") != keys.fingerprint():
        raise _bad("voucher: provider id is not the fingerprint of its keys")
    if url_problem(obj["url"]) is not None or not isinstance(obj["tls"], str):
        raise EpochRejected("format", "voucher: url or tls")
    tls = provider_id_of(obj["tls"], "voucher.tls")  # the same 64-hex shape
    groups = obj.get("groups")
    if groups is not None and (not isinstance(groups, list) or not 1 <= len(groups) <= MAX_VOUCH_GROUPS
                               or not all(isinstance(g, str) for g in groups)):
        raise EpochRejected("format", f"voucher.groups: 1..{MAX_VOUCH_GROUPS} group names")
    issued = obj["issued_at"]
    if isinstance(issued, bool) or not isinstance(issued, (int, float)) or issued < 0:
        raise EpochRejected("format", "voucher.issued_at: not a time")
    return Vouch(provider_id_of(obj["home"], "voucher.home"), keys, obj["url"], tls, float(issued),
                 None if groups is None else tuple(groups))


def verify_vouch(signed: bytes, home_keys: ProviderKeys) -> Vouch:
    """The voucher, once it verifies against the member's pinned ``home_keys`` and names them as its signer."""
    vouch = _parse(open_envelope(signed, home_keys, VOUCH_LABEL, MAX_VOUCH_BYTES))
    if vouch.home != home_keys.fingerprint():
        raise _bad("voucher: signed by the home provider but naming another one as home")
    if vouch.provider == vouch.home:
        raise _bad("voucher: a provider vouching for itself")
    return vouch


def verify_foreign_archive(signed: bytes, home_keys: ProviderKeys, vouch_signed: bytes, member: str,
                           compact_ok: bool = False) -> Archive:
    """The archive of a group owned by a linked provider, verified for ``member`` of the home provider
    (with ``compact_ok`` also its compact form, PROTOCOL.md 2.2: relayed unchanged, the owner's signature)."""
    vouch = verify_vouch(vouch_signed, home_keys)
    archive = verify_archive(signed, vouch.keys, compact_ok)
    if archive.metadata is None or archive.metadata.provider_id != vouch.provider:
        raise _bad("archive: group_metadata.provider_id is not the vouched provider")
    if vouch.groups is not None and archive.name not in vouch.groups:
        raise _bad(f"archive: the link does not serve group {archive.name!r}")
    entry = archive.member(member)
    if entry is not None and entry.home != vouch.home:
        raise _bad(f"archive: member {member!r} is not listed with its home provider")
    return archive
