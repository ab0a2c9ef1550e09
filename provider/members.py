"""Names, overlay addresses, join-token secrets and credential hashes.

- Group names: ``[a-z0-9][a-z0-9_-]{0,31}`` (they appear in URLs and interface names).
- Member names: ``[A-Za-z0-9][A-Za-z0-9._-]{0,63}`` (the uid of PROTOCOL.md 2, 1..64
  bytes; ASCII because it is the RFC 9421 ``keyid``).
- Endpoints: ``host:port`` or ``[v6]:port``, at most 8 of at most 64 chars each.
- Addresses: the first free host of the group's CIDR in ascending order (IPv4,
  and IPv6 when the group has ``cidr6``), kept for the member's lifetime.
- Credential hashes: of the member's authenticator (32 bytes derived from
  its identification credential, ``grouptun.control.credkeys``; the credential
  itself never reaches the provider), or of the credential for a member
  enrolled before that and not migrated yet. Argon2id (``cryptography``),
  16-byte random salt, stored as
  ``argon2id$v=19$m=19456,t=2,p=1$<salt b64>$<hash b64>``, compared with
  ``hmac.compare_digest``. Parameters: OWASP's minimum (19 MiB, t=2) --
  ~60 ms here; the salt endpoint is rate-limited per member on top.
- Join-token secrets: 32 random bytes; only SHA-256(secret) is stored.
- Enrollment: the proof of possession (Ed25519 over the other fields) is
  checked by :func:`check_enrollment`, before the token is touched.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import os
import re

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

from grouptun.core.jointoken import enroll_message
from grouptun.core.capsule import load_kem_public
from grouptun.errors import CapsuleError
from provider.errors import Conflict, Forbidden, InvalidInput

GROUP_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
MEMBER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# A member of a linked provider (issue 19): NAME@LINK, LINK this provider's name for its home provider
# (provider/links.py); 64 bytes in all, like every member name (the capsule's uid).
FOREIGN_NAME = re.compile(r"(?=.{1,64}$)([A-Za-z0-9][A-Za-z0-9._-]{0,62})@([a-z][a-z0-9-]{0,31})")
LINK_MARKER = "link"  # members.credential_hash of a foreign member: its credential is checked at its home
ENDPOINT = re.compile(r"(?:\[[0-9A-Fa-f:.]{2,45}\]|[A-Za-z0-9.-]{1,53}):[0-9]{1,5}")
MAX_ENDPOINTS = 8
CREDENTIAL_MIN, CREDENTIAL_MAX = 8, 1024
ARGON_M, ARGON_T, ARGON_P = 19456, 2, 1


def check_group_name(name: str) -> str:
    if not isinstance(name, str) or not GROUP_NAME.fullmatch(name):
        raise InvalidInput(f"group name {name!r} must match {GROUP_NAME.pattern}")
    return name


def check_member_name(name: str) -> str:
    """A member name: local (MEMBER_NAME) or a linked provider's member (NAME@LINK, FOREIGN_NAME)."""
    if not isinstance(name, str) or not (MEMBER_NAME.fullmatch(name) or FOREIGN_NAME.fullmatch(name)):
        raise InvalidInput(f"member name {name!r} must match {MEMBER_NAME.pattern} (or NAME@LINK for a "
                           "member of a linked provider)")
    return name


def foreign_link(name: str) -> str | None:
    """The link name of a foreign member name NAME@LINK; None for a local name."""
    match = FOREIGN_NAME.fullmatch(name)
    return None if match is None else match.group(2)


def check_endpoints(endpoints: list[str]) -> list[str]:
    if len(endpoints) > MAX_ENDPOINTS:
        raise InvalidInput(f"at most {MAX_ENDPOINTS} endpoints")
    for ep in endpoints:
        if not isinstance(ep, str) or not ENDPOINT.fullmatch(ep) or not 0 < int(ep.rsplit(":", 1)[1]) < 65536:
            raise InvalidInput(f"endpoint {ep!r} is not host:port or [v6]:port")
    return list(dict.fromkeys(endpoints))  # order-preserving dedupe


def check_enrollment(secret: str, name: str, ed_public: bytes, kem_public: bytes, authenticator: bytes,
                     endpoints: list[str], proof: bytes) -> list[str]:
    """Check an enrollment request's fields and proof of possession; its normalised endpoints.

    ``proof`` is the Ed25519 signature over ``jointoken.enroll_message(...)`` of
    the other fields, as sent (checked before the join token is touched).
    Checks nothing about the token itself: the caller does, in its transaction.
    """
    check_member_name(name)
    if foreign_link(name) is not None:
        raise Forbidden(f"{name!r} is a member of a linked provider: it enrolls at its own provider, which "
                        "forwards its keys")
    checked = check_endpoints(list(endpoints))
    message = enroll_message(secret, name, ed_public, kem_public, authenticator, list(endpoints))
    signer_key = check_public_keys(ed_public, kem_public)
    try:
        signer_key.verify(proof, message)
    except InvalidSignature as exc:
        raise Forbidden("enrollment proof does not verify with the enrolled Ed25519 key") from exc
    return checked


def check_public_keys(ed_public: bytes, kem_public: bytes) -> ed25519.Ed25519PublicKey:
    """A member's Ed25519 key (loaded) once both public keys load; InvalidInput otherwise."""
    try:
        signer_key = ed25519.Ed25519PublicKey.from_public_bytes(ed_public)
        load_kem_public(kem_public)
    except (ValueError, CapsuleError) as exc:
        raise InvalidInput(f"public key not valid: {exc}") from exc
    return signer_key


def check_networks(cidr: str, cidr6: str | None) -> tuple[ipaddress.IPv4Network, ipaddress.IPv6Network | None]:
    try:
        net4 = ipaddress.IPv4Network(cidr, strict=True)
    except ValueError as exc:
        raise InvalidInput(f"--cidr {cidr!r}: {exc}") from exc
    if net4.prefixlen > 30:
        raise InvalidInput(f"--cidr {cidr!r}: prefix must be /30 or shorter")
    net6 = None
    if cidr6 is not None:
        try:
            net6 = ipaddress.IPv6Network(cidr6, strict=True)
        except ValueError as exc:
            raise InvalidInput(f"--cidr6 {cidr6!r}: {exc}") from exc
        if net6.prefixlen > 126:
            raise InvalidInput(f"--cidr6 {cidr6!r}: prefix must be /126 or shorter")
    return net4, net6


def allocate(network: ipaddress.IPv4Network | ipaddress.IPv6Network, used: set[str]) -> str:
    """First free host address, as 'address/prefix'. Conflict when the range is full."""
    taken = {ipaddress.ip_interface(u).ip for u in used}
    for host in network.hosts():
        if host not in taken:
            return f"{host}/{network.prefixlen}"
    raise Conflict(f"address range {network} is full")


def hash_credential(credential: bytes, salt: bytes | None = None) -> str:
    if not CREDENTIAL_MIN <= len(credential) <= CREDENTIAL_MAX:
        raise InvalidInput(f"credential must be {CREDENTIAL_MIN}..{CREDENTIAL_MAX} bytes")
    salt = os.urandom(16) if salt is None else salt
    digest = Argon2id(salt=salt, length=32, iterations=ARGON_T, lanes=ARGON_P, memory_cost=ARGON_M).derive(credential)
    b64 = lambda raw: base64.b64encode(raw).decode("ascii")  # noqa: E731
    return f"argon2id$v=19$m={ARGON_M},t={ARGON_T},p={ARGON_P}${b64(salt)}${b64(digest)}"


def check_credential(credential: bytes, stored: str) -> None:
    """Raise Forbidden('wrong credential') unless ``credential`` matches ``stored``."""
    if not credential_matches(credential, stored):
        raise Forbidden("wrong credential")


def credential_matches(credential: bytes, stored: str) -> bool:
    """Whether ``credential`` (or authenticator) hashes to ``stored`` (constant-time comparison)."""
    try:
        _, _, params, salt_b64, hash_b64 = stored.split("$")
        fields = dict(kv.split("=") for kv in params.split(","))
        salt, expected = base64.b64decode(salt_b64), base64.b64decode(hash_b64)
        kdf = Argon2id(salt=salt, length=len(expected), iterations=int(fields["t"]), lanes=int(fields["p"]),
                       memory_cost=int(fields["m"]))
    except (ValueError, KeyError):
        return False
    if not CREDENTIAL_MIN <= len(credential) <= CREDENTIAL_MAX:
        return False
    return hmac.compare_digest(kdf.derive(credential), expected)


def new_token_secret() -> tuple[str, bytes]:
    """(secret for the token text, SHA-256 to store)."""
    from grouptun.core.jointoken import b64url

    raw = os.urandom(32)
    secret = b64url(raw)
    return secret, token_hash(secret)


def token_hash(secret: str) -> bytes:
    return hashlib.sha256(b"grouptun/1 join-token" + secret.encode("ascii", "replace")).digest()
