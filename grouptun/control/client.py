"""Member-side client of the trust provider's HTTP API (contracts.md).

TLS: the provider's certificate is self-signed; the client pins the SHA-256
of its DER encoding (from the join token) with urllib3's
``assert_fingerprint`` and skips CA/hostname checks, which the pin replaces.
Every member call is signed per ``grouptun.control.reqsign`` with the member's
Ed25519 key. The HTTP API itself is documented in ``provider/app.py``.
The identification credential is never sent: enrollment and salt requests
carry the authenticator derived from it (``grouptun.control.credkeys``), except the
one salt request that migrates an old-form member (``grouptun.control.credmigrate``).

Failover: the client knows every URL of the provider (replicas, or one
provider under several addresses: the join token's list, replaced by the
newest archive's ``provider_urls``). A call whose URL fails to connect
(``CONNECT_TIMEOUT``), times out, fails the pin or answers 5xx is made
again at the next URL, after the jittered delay of
:class:`grouptun.control.backoff.ReplicaRotation`; each URL at most once per call,
and the next call starts at the URL that answered last.

Errors: ``ProviderError`` when no URL answered (each could not be reached,
timed out, failed the pin, or answered 5xx or nonsense); ``ProviderRefused(status,
reason)`` for a 4xx, with the provider's one-line reason; ``LinkUnavailable``
when the home provider answered 502/503 with its link's state (a group a
linked provider owns, PROTOCOL.md 8: the home could not reach the owner). A signature
refused as stale (the provider restarted, or clocks differ) is retried once.

Archive form: with ``compact`` (what the daemon uses) start, archive and
watch ask for the compact archive (``?form=compact``, PROTOCOL.md 2.2); a
provider that predates it ignores the parameter and sends the full one,
which the caller's verification accepts as well.

Thread safety: one ``requests.Session`` per thread (``threading.local``),
so a daemon may watch in one thread and fetch capsules in another.
"""

from __future__ import annotations

import base64
import hmac
import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable, Sequence
from urllib.parse import quote

import requests
from cryptography.hazmat.primitives.asymmetric import ed25519
from requests.adapters import HTTPAdapter

from grouptun.control.backoff import ReplicaRotation
from grouptun.core.archive import verify_archive
from grouptun.core.envelope import ProviderKeys
from grouptun.core.vouch import verify_foreign_archive
from grouptun.core.capsule import CAPSULE_SIZE, KEM_PUBLIC_SIZE
from grouptun.core.jointoken import JoinToken, check_url, check_urls, enroll_message, parse_join_token
from grouptun.errors import LinkUnavailable, ProviderError, ProviderRefused
from grouptun.control.reqsign import sign_headers

__all__ = ["EnrollResult", "JoinToken", "ProviderClient", "parse_join_token", "pinned_session"]

MAX_RESPONSE_BYTES = 32 * 1024 * 1024
CONNECT_TIMEOUT = 3.0  # a replica whose host is gone (no RST) costs this, not the call's whole timeout

log = logging.getLogger("grouptun.provider")


class _PinnedAdapter(HTTPAdapter):
    def __init__(self, fingerprint: str) -> None:
        self._fingerprint = fingerprint
        super().__init__(max_retries=0)

    def init_poolmanager(self, *args, **kwargs):
        kwargs["assert_fingerprint"] = self._fingerprint
        super().init_poolmanager(*args, **kwargs)


def pinned_session(tls_fingerprint: str) -> requests.Session:
    """A session that accepts exactly the certificate with this SHA-256 (hex)."""
    session = requests.Session()
    session.verify = False  # replaced by the pin: CA and hostname checks do not apply
    session.trust_env = False  # never route the member's control traffic via a proxy
    session.mount("https://", _PinnedAdapter(tls_fingerprint.lower()))
    return session


def _reason(response: requests.Response) -> str:
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        detail = None
    if isinstance(detail, list):  # FastAPI validation errors
        detail = "; ".join(f"{'.'.join(map(str, d.get('loc', [])))}: {d.get('msg')}" for d in detail[:3])
    return str(detail or response.reason or "refused")[:300]


def _send(session: requests.Session, method: str, url: str, timeout: float, **kwargs) -> requests.Response:
    try:
        response = session.request(method, url, timeout=(min(CONNECT_TIMEOUT, timeout), timeout), **kwargs)
    except requests.exceptions.SSLError as exc:
        raise ProviderError(f"TLS to {url} failed (certificate does not match the pinned fingerprint?)") from exc
    except requests.RequestException as exc:
        raise ProviderError(f"provider unreachable: {type(exc).__name__}") from exc
    if len(response.content) > MAX_RESPONSE_BYTES:
        raise ProviderError("provider answer too large")
    if 400 <= response.status_code < 500:
        raise ProviderRefused(response.status_code, _reason(response))
    if response.status_code >= 300:
        link = _link_state(response)
        if link is not None:
            raise LinkUnavailable(response.status_code, _reason(response), link)
        raise ProviderError(f"provider answered {response.status_code}: {_reason(response)}")
    return response


LINK_FIELDS = {"name": str, "contact": str, "down_since": (int, float), "last_failure": str}


def _link_state(response: requests.Response) -> dict | None:
    """A home provider's 502/503 ``link`` (its link to the group's owner, PROTOCOL.md 8), the known fields only
    and each of its type (None: no such part)."""
    if response.status_code not in (502, 503):
        return None
    try:
        link = response.json().get("link")
    except (ValueError, AttributeError):
        return None
    if not isinstance(link, dict):
        return None
    return {k: (v[:200] if isinstance(v, str) else v) for k, kind in LINK_FIELDS.items()
            if isinstance(v := link.get(k), kind) and not isinstance(v, bool)}


send_checked = _send  # public for the provider's link client (provider/links.py): one pinned-TLS request path


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _enroll_at(token: JoinToken, payload: dict, new_session: Callable[[str], requests.Session]) -> requests.Response:
    """POST the enrollment to the token's URLs in turn, until one answers (a refusal is an answer)."""
    failures: list[tuple[str, ProviderError]] = []
    with new_session(token.tls_fingerprint) as session:
        for url in token.provider_urls:
            try:
                return _send(session, "POST", f"{url}/v1/enroll", 30.0, json=payload)
            except ProviderRefused:
                raise
            except ProviderError as exc:
                failures.append((url, exc))
    raise _none_answered(failures)


def _none_answered(failures: list[tuple[str, ProviderError]]) -> ProviderError:
    """One URL: its own error; several: one line naming each URL and what it did."""
    if len(failures) == 1:
        return failures[0][1]
    if all(isinstance(e, LinkUnavailable) for _, e in failures):  # every replica answered: the link is down
        return failures[-1][1]
    return ProviderError("no provider URL answered: " + "; ".join(f"{u}: {e}" for u, e in failures))


@dataclass(frozen=True)
class EnrollResult:
    group: str
    member_name: str
    index: int
    addresses: tuple[str, ...]
    provider_keys: ProviderKeys
    archive: bytes
    vouch: bytes | None = None  # a group a linked provider owns: our provider's voucher (PROTOCOL.md 8)


class ProviderClient:
    """Signed calls for one member of one group. Limits: retries only at the provider's other URLs
    (and once for a stale signature); the caller backs off when none answered."""

    def __init__(self, url: str | Sequence[str], tls_fingerprint: str, group: str, member_name: str,
                 signing_key: ed25519.Ed25519PrivateKey, timeout: float = 10.0,
                 session_factory: Callable[[str], requests.Session] | None = None,
                 rotation: Callable[[tuple[str, ...]], ReplicaRotation] = ReplicaRotation,
                 sleep: Callable[[float], None] = time.sleep, compact: bool = False) -> None:
        urls = (url,) if isinstance(url, str) else tuple(url)
        self._form = "form=compact" if compact else ""
        self.replicas = rotation(tuple(check_url(u) for u in urls))
        self.tls_fingerprint = tls_fingerprint
        self.group = group
        self.member_name = member_name
        self.timeout = timeout
        self._key = signing_key
        self._new_session = session_factory or pinned_session
        self._sleep = sleep
        self._local = threading.local()
        self._path = f"/v1/groups/{quote(group, safe='')}"

    @property
    def url(self) -> str:
        """The URL the next call goes to."""
        return self.replicas.current

    @property
    def urls(self) -> tuple[str, ...]:
        return self.replicas.urls

    @property
    def answered_by(self) -> str | None:
        """The URL that answered last (None before any answer)."""
        return self.replicas.answered_by

    def use_urls(self, urls) -> None:
        """Ask these URLs from now on (a newer archive's ``provider_urls``)."""
        self.replicas.replace(check_urls(urls, "provider_urls"))

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = self._new_session(self.tls_fingerprint)
        return session

    def call(self, method: str, path: str, payload: dict | None = None, raw: bytes | None = None) -> requests.Response:
        """A signed request under the group's URL: a JSON ``payload`` or a ``raw`` octet-stream body."""
        return self._call(method, path, payload, raw=raw)

    def _call(self, method: str, path: str, payload: dict | None = None, timeout: float | None = None,
              params: str = "", raw: bytes | None = None) -> requests.Response:
        """The call at the current URL, then at each other one in turn while they fail (see the module doc)."""
        body = raw if raw is not None else b"" if payload is None else requests.models.complexjson.dumps(payload).encode()
        kind = "application/octet-stream" if raw is not None else "application/json" if payload is not None else None
        target = self._path + path + (f"?{params}" if params else "")
        failures: list[tuple[str, ProviderError]] = []
        attempts = len(self.replicas.urls)
        while True:
            base = self.replicas.current
            try:
                response = self._call_at(base + target, method, body, kind, timeout)
            except ProviderRefused:
                self.replicas.answered(base)  # a 4xx is the provider's decision: no other URL would differ
                raise
            except ProviderError as exc:
                failures.append((base, exc))
                delay = self.replicas.failed(base)
                if len(failures) >= attempts:
                    break
                log.info("provider at %s: %s; trying %s in %.2f s", base, exc, self.replicas.current, delay)
                self._sleep(delay)
                continue
            self.replicas.answered(base)
            return response
        raise _none_answered(failures)

    def _call_at(self, url: str, method: str, body: bytes, kind: str | None, timeout: float | None) -> requests.Response:
        for attempt in (0, 1):
            headers = {"Content-Type": kind} if kind else {}
            sign_headers(method, url, headers, body, self.member_name, self._key)
            try:
                return _send(self._session(), method, url, timeout or self.timeout, data=body, headers=headers)
            except ProviderRefused as exc:
                if attempt or exc.status != 401 or exc.reason != "stale signature":
                    raise
                time.sleep(1.0)  # the provider restarted this second; signatures from before are refused
        raise AssertionError("unreachable")

    @staticmethod
    def enroll(token: JoinToken, name: str, signing_key: ed25519.Ed25519PrivateKey, kem_public: bytes,
               authenticator: bytes, endpoints: list[str],
               session_factory: Callable[[str], requests.Session] | None = None) -> EnrollResult:
        """Consume ``token``; checks the provider keys against the token's hash and verifies the archive.

        The request carries ``proof``: the member's Ed25519 signature over
        ``jointoken.enroll_message`` of the other fields (proof of possession;
        the provider checks it before it consumes the token).
        """
        ed25519_public = signing_key.public_key().public_bytes_raw()
        endpoints = list(endpoints)
        proof = signing_key.sign(enroll_message(token.secret, name, ed25519_public, kem_public, authenticator,
                                                endpoints))
        payload = {"secret": token.secret, "name": name, "ed25519_public": _b64(ed25519_public),
                   "kem_public": _b64(kem_public), "authenticator": _b64(authenticator), "endpoints": endpoints,
                   "proof": _b64(proof)}
        response = _enroll_at(token, payload, session_factory or pinned_session)
        try:
            answer = response.json()
            keys = ProviderKeys.from_json(answer["provider_keys"])
            archive = answer["archive"].encode("utf-8")
            vouch = answer["vouch"].encode("utf-8") if "vouch" in answer else None
            result = EnrollResult(str(answer["group"]), str(answer["member_name"]), int(answer["index"]),
                                  tuple(str(a) for a in answer["addresses"]), keys, archive, vouch)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ProviderError(f"malformed enrollment answer: {exc}") from exc
        if not hmac.compare_digest(keys.fingerprint(), token.provider_keys_hash):
            raise ProviderError("provider keys do not match the join token's hash")
        if vouch is None:
            verify_archive(archive, keys)
        else:  # the owner's archive, through our provider's voucher
            verify_foreign_archive(archive, keys, vouch, result.member_name, now=time.time())
        return result

    def start(self, challenge: bytes) -> bytes | None:
        """Ask for a new epoch listing ``challenge`` (32 bytes); returns that signed archive.

        None means "waiting for members": the group has fewer than 2
        members, so there is no epoch; the provider recorded the challenge
        as pending (for 10 minutes) and the group's first epoch will list
        it. Watch for it (and start again if an epoch appears without it).
        """
        response = self._call("POST", "/start", {"challenge": challenge.hex()}, timeout=self.timeout + 30,
                              params=self._form)
        return None if response.status_code == 202 else response.content

    def archive(self, compact: bool | None = None) -> bytes:
        """The current signed archive: the compact form if ``compact`` (None: as the client was made)."""
        form = self._form if compact is None else "form=compact" if compact else ""
        return self._call("GET", "/archive", params=form).content

    def kem_public(self, member: str) -> bytes:
        """``member``'s KEM public key as the provider holds it (PROTOCOL.md 2.2: unsigned; the caller checks
        it against the digest a verified compact archive names)."""
        content = self._call("GET", f"/members/{quote(member, safe='')}/kem").content
        if len(content) != KEM_PUBLIC_SIZE:
            raise ProviderError(f"KEM public key has {len(content)} bytes, expected {KEM_PUBLIC_SIZE}")
        return content

    def vouch(self) -> bytes:
        """A fresh voucher of our provider for the owner of our group (PROTOCOL.md 8; only for such a group)."""
        return self._call("GET", "/vouch").content

    def watch(self, version: int, timeout: float = 25.0) -> bytes | None:
        """Long-poll: the archive once its version exceeds ``version``; None after ``timeout`` (<= 60 s)."""
        timeout = min(max(float(timeout), 0.0), 60.0)
        response = self._call("GET", "/watch", timeout=timeout + self.timeout,
                              params=f"version={int(version)}&timeout={float(timeout):g}"
                              + (f"&{self._form}" if self._form else ""))
        return None if response.status_code == 204 else response.content

    def capsule(self, epoch: int) -> bytes:
        content = self._call("GET", f"/epochs/{int(epoch)}/capsule").content
        if len(content) != CAPSULE_SIZE:
            raise ProviderError(f"capsule has {len(content)} bytes, expected {CAPSULE_SIZE}")
        return content

    def salt(self, epoch: int, authenticator: bytes, old_credential: bytes | None = None) -> bytes:
        """The sealed salt of ``epoch``; with ``old_credential`` the request also registers ``authenticator``.

        The registering form is an old-form member's migration
        (``grouptun.control.credmigrate``): the provider checks the credential, then
        stores the authenticator in its place.
        """
        body = ({"authenticator": _b64(authenticator)} if old_credential is None
                else {"credential": _b64(old_credential), "new_authenticator": _b64(authenticator)})
        content = self._call("POST", f"/epochs/{int(epoch)}/salt", body).content
        if len(content) != CAPSULE_SIZE:
            raise ProviderError(f"sealed salt has {len(content)} bytes, expected {CAPSULE_SIZE}")
        return content

    def report(self, endpoints: list[str], packets_sent: dict[int, int]) -> None:
        self._call("POST", "/report", {"endpoints": list(endpoints),
                                       "packets_sent": {str(int(e)): int(n) for e, n in packets_sent.items()}})

    def request_routes(self, prefixes: list[str]) -> None:
        """Ask the provider's admin to approve ``prefixes`` behind us (provider/route_requests.py)."""
        self._call("POST", "/routes", {"prefixes": [str(p) for p in prefixes]})

    def rekey(self, reason: str) -> None:
        self._call("POST", "/rekey", {"reason": reason[:64]})

    def close(self) -> None:
        session = getattr(self._local, "session", None)
        if session is not None:
            session.close()
