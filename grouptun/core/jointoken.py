"""Join tokens: what an admin hands a new member, one line of text.

Format: ``"gtjoin1-" || base64url-nopad(RFC 8785 JSON)`` where the JSON is
``{"url": "https://host:port", "tls": <hex SHA-256 of the provider's TLS
certificate (DER)>, "keys": <ProviderKeys.fingerprint()>, "secret":
<base64url-nopad of 32 random bytes>}``, and optionally ``"urls"``: every
URL of the provider (its replicas, or one provider under several
addresses), in the order a member tries them, ``url`` first. Absent means
``[url]``; a provider with a one-URL list leaves it out, so older members
still read the token. All URLs serve the one certificate ``tls`` pins.

The token is a bearer secret: whoever holds it can enroll once, before it
expires. The provider stores only SHA-256(secret) (the secret has 256 bits
of entropy, so a slow hash adds nothing). Limits: token text <= 2048 chars;
URL must be https with a host; the fingerprints are 64 lowercase hex chars;
at most MAX_PROVIDER_URLS URLs, no duplicates.

Spending the token (enrollment) the member signs :func:`enroll_message`
with its new Ed25519 key: the proof that it holds the keys it enrolls.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

import rfc8785

from grouptun.core.envelope import b64e, canonical
from grouptun.errors import ConfigError

PREFIX = "gtjoin1-"
MAX_TOKEN_CHARS = 2048
SECRET_BYTES = 32
MAX_PROVIDER_URLS = 8  # also the archive's provider_urls bound (grouptun.core.archive)
MAX_URL_CHARS = 200
ENROLL_LABEL = b"grouptun/1 enroll"
_HEX64 = re.compile(r"[0-9a-f]{64}")
_B64URL = re.compile(r"[A-Za-z0-9_-]+")


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    if not _B64URL.fullmatch(text):
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _bad(problem: str) -> ConfigError:
    return ConfigError("join token", problem)


def url_problem(url: object) -> str | None:
    """Why ``url`` is not a usable provider URL (https://HOST[:PORT]), or None if it is."""
    if not isinstance(url, str) or len(url) > MAX_URL_CHARS:
        return f"provider URL must be a string of at most {MAX_URL_CHARS} characters"
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # e.g. an unclosed "[" of an IPv6 host
        return f"provider URL {url!r} does not parse: {exc}"
    if parts.scheme != "https" or not parts.hostname or parts.path not in ("", "/") or parts.query \
            or parts.fragment or parts.username is not None:
        return f"provider URL must be https://HOST[:PORT], got {url!r}"
    try:
        parts.port  # noqa: B018  (raises on a bad port)
    except ValueError:
        return f"bad port in {url!r}"
    return None


def url_list_problem(urls: object) -> str | None:
    """Why ``urls`` is not a provider URL list (1..MAX_PROVIDER_URLS distinct URLs), or None."""
    if not isinstance(urls, (list, tuple)) or not 1 <= len(urls) <= MAX_PROVIDER_URLS:
        return f"must be a list of 1..{MAX_PROVIDER_URLS} provider URLs"
    for url in urls:
        problem = url_problem(url)
        if problem is not None:
            return problem
    if len({u.rstrip("/") for u in urls}) != len(urls):
        return "lists a URL twice"
    return None


def check_url(url: str) -> str:
    """An https URL with a host and port; returns it without a trailing slash."""
    problem = url_problem(url)
    if problem is not None:
        raise _bad(problem)
    return url.rstrip("/")


def check_urls(urls, what: str = "join token") -> tuple[str, ...]:
    """A provider URL list (see url_list_problem) without trailing slashes; ConfigError(what) if bad."""
    problem = url_list_problem(urls)
    if problem is not None:
        raise ConfigError(what, problem)
    return tuple(u.rstrip("/") for u in urls)


@dataclass(frozen=True)
class JoinToken:
    url: str
    tls_fingerprint: str
    provider_keys_hash: str
    secret: str
    urls: tuple[str, ...] = ()  # every provider URL, ``url`` first; () = just ``url``

    def __post_init__(self) -> None:
        check_url(self.url)
        if self.urls and (check_urls(self.urls)[0] != self.url.rstrip("/")):
            raise _bad("urls must start with url")
        for name in ("tls_fingerprint", "provider_keys_hash"):
            if not _HEX64.fullmatch(getattr(self, name)):
                raise _bad(f"{name} must be 64 lowercase hex characters")
        try:
            if len(b64url_decode(self.secret)) != SECRET_BYTES:
                raise ValueError("size")
        except (ValueError, binascii.Error) as exc:
            raise _bad(f"secret must be {SECRET_BYTES} bytes of base64url") from exc

    @property
    def provider_urls(self) -> tuple[str, ...]:
        """The provider URLs a member tries, in order."""
        return self.urls or (self.url,)

    def __str__(self) -> str:
        body = {"url": self.url, "tls": self.tls_fingerprint, "keys": self.provider_keys_hash,
                "secret": self.secret}
        if len(self.urls) > 1:
            body["urls"] = list(self.urls)
        return PREFIX + b64url(rfc8785.dumps(body))


def parse_join_token(text: str) -> JoinToken:
    """Parse a token; raises ConfigError('join token', reason) on anything malformed."""
    text = text.strip()
    if len(text) > MAX_TOKEN_CHARS:
        raise _bad("too long")
    if not text.startswith(PREFIX):
        raise _bad(f"must start with {PREFIX!r}")
    try:
        body = json.loads(b64url_decode(text[len(PREFIX):]))
    except (ValueError, binascii.Error, RecursionError) as exc:  # RecursionError: JSON nested too deep
        raise _bad("not valid base64url JSON") from exc
    if not isinstance(body, dict) or set(body) - {"urls"} != {"url", "tls", "keys", "secret"}:
        raise _bad("wrong fields")
    urls = check_urls(body.pop("urls")) if "urls" in body else ()
    urls = urls if len(urls) > 1 else ()  # a one-URL list says what url says (and prints without it)
    if not all(isinstance(v, str) for v in body.values()):
        raise _bad("fields must be strings")
    return JoinToken(check_url(body["url"]), body["tls"], body["keys"], body["secret"], urls)


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
