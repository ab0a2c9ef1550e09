"""The ASGI app in-process (no TLS): guard limits, rate limits, metrics hook, bodies that are not I-JSON."""

from __future__ import annotations

import os
import warnings

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from grouptun.control.reqsign import sign_headers
from sqlalchemy import text

from grouptun.errors import ConfigError
from provider.app import MAX_BODY, Settings, create_app, docs_from_config
from provider.keys import Signer
from provider.limits import RateLimiter
from provider.tables import SCHEMA_VERSION
from provider_helpers import STORE_KINDS, fresh_store, memory_provider

warnings.filterwarnings("ignore", message=".*httpx.*", category=DeprecationWarning)
TestClient = pytest.importorskip("starlette.testclient").TestClient
SIGNER = Signer.generate()


def _world():
    provider, keys = memory_provider(signer=SIGNER)
    return provider, keys["alice"]


@pytest.fixture(params=STORE_KINDS)
def world(request):
    provider, keys = memory_provider(signer=SIGNER, store=fresh_store(request.param, request))
    return provider, keys["alice"]


@pytest.fixture(scope="module")
def served():
    """(TestClient, alice's key) of one app for the many bad-body cases (they change nothing)."""
    provider, key = _world()
    asgi, _ = create_app(provider, Settings(member_rate=1000, member_burst=1000))
    with TestClient(asgi, client=("127.0.0.1", 4000)) as client:  # an exception escaping the app fails a test
        yield client, key


def _signed_get(client, key, path):
    headers: dict = {}
    sign_headers("GET", "http://testserver" + path, headers, b"", "alice", key)
    return client.get(path, headers=headers)


def test_guard_refuses_big_and_malformed_bodies(world):
    provider, _ = world
    asgi, _ = create_app(provider)
    with TestClient(asgi, client=("127.0.0.1", 4000)) as client:
        assert client.post("/v1/enroll", content=b"x" * (MAX_BODY + 1)).status_code == 413
        r = client.post("/v1/enroll", content=b"{}", headers={"content-length": "abc"})
        assert r.status_code in (400, 422)
        assert client.get("/healthz").json() == {"ok": True}


def test_healthz_answers_503_with_a_reason_when_the_database_does_not(world, caplog):
    provider, _ = world
    asgi, _ = create_app(provider)
    with TestClient(asgi, client=("127.0.0.1", 4000)) as client:
        assert client.get("/healthz").json() == {"ok": True}
        with provider.store.write() as conn:
            conn.execute(text("UPDATE meta SET value = '999' WHERE key = 'schema_version'"))
        r = client.get("/healthz")
        assert (r.status_code, r.json()) == (503, {"ok": False, "detail": (
            f"database schema version 999, this provider knows {SCHEMA_VERSION}")})
        with provider.store.write() as conn:
            conn.execute(text("DROP TABLE meta"))
        r = client.get("/healthz")
        assert (r.status_code, r.json()) == (503, {"ok": False, "detail": "database has no schema version (not initialised?)"})
    assert "healthz: database has no schema version" in caplog.text


def test_api_documents_are_served_only_when_enabled(world):
    provider, _ = world
    for docs, code in ((False, 404), (True, 200)):
        asgi, _ = create_app(provider, Settings(docs=docs))
        with TestClient(asgi, client=("127.0.0.1", 4000)) as client:
            assert [client.get(path).status_code for path in ("/docs", "/redoc", "/openapi.json")] == [code] * 3
            assert client.get("/healthz").status_code == 200
    assert docs_from_config({}) is False and docs_from_config({"api_docs": True}) is True
    for bad in ("yes", 1, None):
        with pytest.raises(ConfigError) as err:
            docs_from_config({"api_docs": bad})
        assert err.value.key == "api_docs"


def test_per_address_and_per_member_rate_limits(world):
    provider, key = world
    asgi, _ = create_app(provider, Settings(address_rate=0.001, address_burst=3, member_rate=0.001, member_burst=2))
    with TestClient(asgi, client=("127.0.0.1", 4000)) as client:
        codes = [_signed_get(client, key, "/v1/groups/lan/archive").status_code for _ in range(4)]
    assert codes == [200, 200, 429, 429]


def test_rate_limiter_refills_and_bounds_keys():
    now = [0.0]
    limiter = RateLimiter(rate=1.0, burst=2, max_keys=2, clock=lambda: now[0])
    assert [limiter.allow("a") for _ in range(3)] == [True, True, False]
    now[0] += 1.0
    assert limiter.allow("a") and not limiter.allow("a")
    limiter.allow("b")
    limiter.allow("c")
    assert len(limiter._buckets) == 2  # noqa: SLF001


def test_metrics_hook_mounts_the_exporter_and_counts_epochs(world):
    pytest.importorskip("provider.metrics")
    provider, key = world
    asgi, _ = create_app(provider, Settings(metrics=True))
    with TestClient(asgi, client=("127.0.0.1", 4000)) as client:
        assert _signed_get(client, key, "/v1/groups/lan/archive").status_code == 200
        provider.open_epoch("lan", "admin", "admin")
        text = client.get("/metrics").text
    assert 'grouptun_provider_epochs_created_total{group="lan"} 1.0' in text
    assert "/v1/groups/{group}/archive" in text


def test_starts_are_rate_limited_per_member(world):
    provider, key = world
    asgi, _ = create_app(provider, Settings(start_rate=0.001, start_burst=1))
    with TestClient(asgi, client=("127.0.0.1", 4000)) as client:
        codes = []
        for challenge in ("aa", "bb"):
            body = ('{"challenge": "%s"}' % (challenge * 32)).encode()
            headers = {"content-type": "application/json"}
            sign_headers("POST", "http://testserver/v1/groups/lan/start", headers, body, "alice", key)
            codes.append(client.post("/v1/groups/lan/start", content=body, headers=headers).status_code)
    assert codes == [200, 429]


def test_wrong_credentials_are_budgeted_right_ones_are_not(world):
    provider, key = world
    asgi, _ = create_app(provider, Settings(wrong_credential_rate=0.001, wrong_credential_burst=2))
    epoch = provider.show_group("lan")["epoch"]

    def salt(client, credential: bytes) -> int:
        import base64

        body = ('{"credential": "%s"}' % base64.b64encode(credential).decode()).encode()
        path = f"/v1/groups/lan/epochs/{epoch}/salt"
        headers = {"content-type": "application/json"}
        sign_headers("POST", "http://testserver" + path, headers, body, "alice", key)
        return client.post(path, content=body, headers=headers).status_code

    with TestClient(asgi, client=("127.0.0.1", 4000)) as client:
        codes = [salt(client, b"credential") for _ in range(3)]
        codes += [salt(client, b"wrong-credential") for _ in range(3)]
        codes.append(salt(client, b"credential"))  # budget spent: even the right one waits
    assert codes == [200, 200, 200, 403, 403, 429, 429]


def _salt_request(client, key, epoch: int, fields: dict, keyid: str = "alice"):
    import json  # noqa: PLC0415

    body = json.dumps(fields).encode()
    path = f"/v1/groups/lan/epochs/{epoch}/salt"
    headers = {"content-type": "application/json"}
    sign_headers("POST", "http://testserver" + path, headers, body, keyid, key)
    return client.post(path, content=body, headers=headers)


def _stored(provider) -> str:
    from sqlalchemy import select  # noqa: PLC0415

    from provider.tables import members  # noqa: PLC0415

    with provider.store.read() as conn:
        return conn.execute(select(members.c.credential_hash).where(members.c.name == "alice")).scalar()


def test_salt_body_needs_exactly_one_proof(world):
    import base64  # noqa: PLC0415

    provider, key = world
    asgi, _ = create_app(provider, Settings())
    epoch = provider.show_group("lan")["epoch"]
    b64 = lambda raw: base64.b64encode(raw).decode()  # noqa: E731
    bad = [{}, {"authenticator": b64(bytes(32)), "credential": b64(b"credential")},
           {"authenticator": b64(bytes(32)), "new_authenticator": b64(bytes(32))},
           {"authenticator": b64(bytes(31))}, {"credential": b64(b"credential"), "new_authenticator": b64(b"x" * 8)}]
    with TestClient(asgi, client=("127.0.0.1", 4000)) as client:
        codes = [_salt_request(client, key, epoch, fields).status_code for fields in bad]
    assert codes == [422] * len(bad)


def test_a_migration_is_signed_and_checked_before_the_hash_changes(world):
    import base64  # noqa: PLC0415

    from provider.members import credential_matches  # noqa: PLC0415

    provider, key = world  # alice enrolled the old way: the provider hashed b"credential"
    asgi, _ = create_app(provider, Settings())
    epoch = provider.show_group("lan")["epoch"]
    new = os.urandom(32)
    migrate = {"credential": base64.b64encode(b"credential").decode(),
               "new_authenticator": base64.b64encode(new).decode()}
    before = _stored(provider)
    with TestClient(asgi, client=("127.0.0.1", 4000)) as client:
        forged = _salt_request(client, ed25519.Ed25519PrivateKey.generate(), epoch, migrate)
        assert forged.status_code == 401 and _stored(provider) == before
        wrong = _salt_request(client, key, epoch, {**migrate, "credential": base64.b64encode(b"not it!!").decode()})
        assert wrong.status_code == 403 and _stored(provider) == before
        assert _salt_request(client, key, epoch, migrate).status_code == 200
        assert credential_matches(new, _stored(provider))
        shown = {"authenticator": base64.b64encode(new).decode()}
        assert _salt_request(client, key, epoch, shown).status_code == 200
        assert _salt_request(client, key, epoch, {"credential": migrate["credential"]}).status_code == 403


# --- bodies that are not I-JSON (issue 14, defect 5): 400 with a reason, never a 500 or a traceback ------------

BODY_ROUTES = {"/v1/enroll": '{"secret": %s}', "/v1/groups/lan/start": '{"challenge": %s}',
               "/v1/groups/lan/epochs/1/salt": '{"credential": %s}',
               "/v1/groups/lan/report": '{"packets_sent": {"1": %s}}', "/v1/groups/lan/rekey": '{"reason": %s}'}
BAD_NUMBERS = {"NaN": "not a number", "Infinity": "not a number", "-Infinity": "not a number",
               "1e999999": "out of range", "9" * 40: "integer beyond", "1" * 5000: "integer beyond"}


def _post(client, key, path: str, body: bytes, content_type: str = "application/json"):
    headers = {"content-type": content_type}
    if path.startswith("/v1/groups/"):
        sign_headers("POST", "http://testserver" + path, headers, body, "alice", key)
    return client.post(path, content=body, headers=headers)


def _no_traceback(caplog) -> None:
    assert not [r for r in caplog.records if r.exc_info or r.levelname in ("ERROR", "CRITICAL")], caplog.text


@pytest.mark.parametrize("value", list(BAD_NUMBERS), ids=lambda v: v[:12])
@pytest.mark.parametrize("path", list(BODY_ROUTES))
def test_non_finite_and_huge_numbers_get_400_with_a_reason(served, caplog, path, value):
    client, key = served
    r = _post(client, key, path, (BODY_ROUTES[path] % value).encode())
    assert (r.status_code, BAD_NUMBERS[value] in r.json()["detail"]) == (400, True), r.text[:300]
    _no_traceback(caplog)


HOSTILE_BODIES = [
    ("deep-nesting", b'{"reason": ' + b"[" * 5000 + b"]" * 5000 + b"}", 400, "nested deeper"),
    ("nesting-17", b'{"reason": ' + b"[" * 16 + b"]" * 16 + b"}", 400, "nested deeper"),
    ("invalid-utf8", b'{"reason": "\xff\xfe"}', 400, "not UTF-8"),
    ("duplicate-names", b'{"reason": "a", "reason": "b"}', 400, "duplicate name"),
    ("lone-surrogate", b'{"reason": "\\ud800"}', 400, "surrogate"),
    ("truncated", b'{"reason": ', 400, "not JSON"),
    ("byte-order-mark", b'\xef\xbb\xbf{"reason": "x"}', 400, "not JSON"),
    ("not-json-media", b'\xff\xfe', 415, "application/json"),
    ("schema", b'{"reason": "\\u0000"}', 422, "reason"),  # a control: parses, fails its schema
]


@pytest.mark.parametrize(("case", "body", "status", "reason"), HOSTILE_BODIES, ids=[c[0] for c in HOSTILE_BODIES])
@pytest.mark.parametrize("path", ["/v1/enroll", "/v1/groups/lan/rekey"])
def test_other_hostile_bodies_get_4xx_with_a_reason(served, caplog, path, case, body, status, reason):
    client, key = served
    content_type = "text/plain" if case == "not-json-media" else "application/json"
    r = _post(client, key, path, body, content_type)
    assert client.get("/healthz").status_code == 200
    if case == "schema" and path == "/v1/enroll":
        reason = "secret"  # enroll's first complaint is its missing fields
    assert (r.status_code, reason in r.text) == (status, True), r.text[:300]
    _no_traceback(caplog)
