"""Client of the provider's remote admin API (``/v1/admin/...``, ``provider/admin_routes.py``).

Every request is signed per ``grouptun.control.reqsign`` (the member
requests' scheme) with ``key_id`` ``admin:<id>`` (a provider-admin key) or
``owner:<group>/<member>`` (a member's own key; the provider decides from
the group's signed ``owners`` whether it is an owner). TLS: either the
certificate's SHA-256 pin (``tls_fingerprint``, as members pin it) or a CA
bundle (``ca_file``) with the normal CA and hostname checks. Refusals come
back as ``ProviderRefused(status, reason)`` with the provider's reason
(401 signature, 403 role, 4xx input), other failures as ``ProviderError``.
A signature refused as stale (the provider restarted this second) is
signed afresh and sent once more.
"""

from __future__ import annotations

import json
import time
from urllib.parse import quote

import requests
from cryptography.hazmat.primitives.asymmetric import ed25519

from grouptun.control.client import _send, pinned_session
from grouptun.control.reqsign import sign_headers
from grouptun.core.jointoken import check_url
from grouptun.errors import ProviderRefused, UsageError

PREFIX = "/v1/admin"


def session_for(tls_fingerprint: str | None, ca_file: str | None) -> requests.Session:
    """A pinned session, or one that checks the certificate against ``ca_file``; exactly one must be given."""
    if (tls_fingerprint is None) == (ca_file is None):
        raise UsageError("give exactly one of --fingerprint (the provider's TLS pin) and --ca (a CA bundle)")
    if tls_fingerprint is not None:
        return pinned_session(tls_fingerprint)
    session = requests.Session()
    session.verify, session.trust_env = ca_file, False
    return session


class AdminClient:
    def __init__(self, url: str, key_id: str, key: ed25519.Ed25519PrivateKey, session: requests.Session,
                 timeout: float = 60.0) -> None:
        self.url, self.key_id, self._key, self._session, self.timeout = check_url(url), key_id, key, session, timeout

    @staticmethod
    def path(*parts: str) -> str:
        """``/v1/admin/`` + the parts, each percent-encoded (a name never changes the path's shape)."""
        return PREFIX + "".join("/" + quote(str(p), safe="") for p in parts)

    def call(self, method: str, path: str, body: dict | None = None):
        """The signed request; its JSON answer."""
        raw = b"" if body is None else json.dumps(body).encode()
        url = self.url + path
        for attempt in (0, 1):
            headers = {"Content-Type": "application/json"} if body is not None else {}
            sign_headers(method, url, headers, raw, self.key_id, self._key)
            try:
                response = _send(self._session, method, url, self.timeout, data=raw, headers=headers)
            except ProviderRefused as exc:
                if attempt or exc.status != 401 or exc.reason != "stale signature":
                    raise
                time.sleep(1.0)
                continue
            return response.json()
        raise AssertionError("unreachable")

    def close(self) -> None:
        self._session.close()
