"""A home provider's voucher for a linked provider (PROTOCOL.md 8): how a member of one provider verifies the
archive of a group that another provider owns.

A member pinned only its own (home) provider at join. A group owned by a
linked provider is signed with that provider's keys, which the member has
never seen; its home provider vouches for them in a document it signs, so
the member's trust still starts at its own join token. Wire shape (the
envelope of ``grouptun.core.envelope``, signed under ``VOUCH_LABEL``, so an
archive signature never verifies as a voucher nor the other way round)::

    {"format": "grouptun/1 provider-vouch",
     "home": provider id of the signer (the member's home provider),
     "provider": provider id of the vouched provider (= fingerprint of "keys"),
     "keys": {"ed25519": base64(32), "mldsa65": base64(1952)},
     "url": "https://HOST[:PORT]", "tls": hex SHA-256 of its certificate,
     "groups": [group name, ...]   (optional: the link serves only these; absent: any),
     "issued_at": unix seconds,
     "expires_at": unix seconds}   (after issued_at; absent only in vouchers from before it existed)

:func:`verify_foreign_archive` is the member's whole check: the voucher
verifies against the pinned home keys and names them as its signer, the
archive verifies against the vouched keys, its ``group_metadata.provider_id``
is the vouched provider, the group is one the link serves, and the member's
own entry names its home provider, and the voucher has not expired at
``now`` (the caller's wall clock: the core reads none). Any failure is
``EpochRejected`` ('signature' for a signature, 'link' for the rest), and
the archive is refused. A voucher without ``expires_at`` (issued before the
field existed) is still accepted; :func:`renewal_due` says it is due for
renewal at once, so a member replaces it at its first chance.
"""

from __future__ import annotations

from dataclasses import dataclass

from grouptun.core.archive import Archive, verify_archive
from grouptun.core.envelope import ProviderKeys, open_envelope, provider_id_of, sign_envelope
from grouptun.core.jointoken import url_problem
from grouptun.errors import EpochRejected

VOUCH_FORMAT = "grouptun/1 provider-vouch"
VOUCH_LABEL = b"grouptun/1 provider-vouch"
MAX_VOUCH_BYTES = 16 * 1024
MAX_VOUCH_GROUPS = 64
_KEYS = {"format", "home", "provider", "keys", "url", "tls", "issued_at"}
_OPTIONAL = {"groups", "expires_at"}
RENEW_FRACTION = 0.25  # a member renews its voucher once less than this share of its lifetime is left


@dataclass(frozen=True)
class Vouch:
    home: str                      # the signing home provider's id
    keys: ProviderKeys             # the vouched provider's signing keys
    url: str
    tls: str                       # SHA-256 of the vouched provider's TLS certificate, hex
    issued_at: float
    groups: tuple[str, ...] | None = None  # None: the link serves any group
    expires_at: float | None = None        # None: a voucher from before expiry existed (renewed at once)

    @property
    def provider(self) -> str:
        return self.keys.fingerprint()

    def to_json(self) -> dict:
        out = {"format": VOUCH_FORMAT, "home": self.home, "provider": self.provider, "keys": self.keys.to_json(),
               "url": self.url, "tls": self.tls, "issued_at": self.issued_at}
        if self.groups is not None:
            out["groups"] = list(self.groups)
        if self.expires_at is not None:
            out["expires_at"] = self.expires_at
        return out


def sign_vouch(vouch: Vouch, ed_key, mldsa_key) -> bytes:
    """The home provider's signed envelope of ``vouch`` (its own two private keys)."""
    return sign_envelope(vouch.to_json(), VOUCH_LABEL, ed_key, mldsa_key)


def _bad(detail: str) -> EpochRejected:
    return EpochRejected("link", detail)


def _parse(obj: dict) -> Vouch:
    if set(obj) - _OPTIONAL != _KEYS or obj["format"] != VOUCH_FORMAT:
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
    issued, expires = _time(obj["issued_at"], "issued_at"), obj.get("expires_at")
    if expires is not None and _time(expires, "expires_at") <= issued:
        raise EpochRejected("format", "voucher.expires_at: not after issued_at")
    return Vouch(provider_id_of(obj["home"], "voucher.home"), keys, obj["url"], tls, issued,
                 None if groups is None else tuple(groups), None if expires is None else float(expires))


def _time(value, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 2**53:
        raise EpochRejected("format", f"voucher.{field}: not a time")
    return float(value)


def verify_vouch(signed: bytes, home_keys: ProviderKeys, *, now: float) -> Vouch:
    """The voucher, once it verifies against the member's pinned ``home_keys``, names them as its signer and
    has not expired at wall time ``now``."""
    vouch = _parse(open_envelope(signed, home_keys, VOUCH_LABEL, MAX_VOUCH_BYTES))
    if vouch.home != home_keys.fingerprint():
        raise _bad("voucher: signed by the home provider but naming another one as home")
    if vouch.provider == vouch.home:
        raise _bad("voucher: a provider vouching for itself")
    if vouch.expires_at is not None and now >= vouch.expires_at:
        raise _bad(f"voucher: expired at {vouch.expires_at:.0f} (the home provider issues a fresh one)")
    return vouch


def renewal_due(vouch: Vouch, now: float) -> bool:
    """Whether a member should fetch a fresh voucher: less than RENEW_FRACTION of its lifetime left, or none
    stated (a voucher from before ``expires_at``)."""
    if vouch.expires_at is None:
        return True
    return now >= vouch.expires_at - (vouch.expires_at - vouch.issued_at) * RENEW_FRACTION


def verify_foreign_archive(signed: bytes, home_keys: ProviderKeys, vouch_signed: bytes, member: str, *,
                           now: float, compact_ok: bool = False) -> Archive:
    """The archive of a group owned by a linked provider, verified for ``member`` of the home provider at wall
    time ``now`` (the voucher's expiry); with ``compact_ok`` also its compact form (PROTOCOL.md 2.2: relayed
    unchanged, the owner's signature)."""
    vouch = verify_vouch(vouch_signed, home_keys, now=now)
    archive = verify_archive(signed, vouch.keys, compact_ok)
    if archive.metadata is None or archive.metadata.provider_id != vouch.provider:
        raise _bad("archive: group_metadata.provider_id is not the vouched provider")
    if vouch.groups is not None and archive.name not in vouch.groups:
        raise _bad(f"archive: the link does not serve group {archive.name!r}")
    entry = archive.member(member)
    if entry is not None and entry.home != vouch.home:
        raise _bad(f"archive: member {member!r} is not listed with its home provider")
    return archive
