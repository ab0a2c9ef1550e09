"""Fuzz target ``provider``: the member API's request bodies, through the whole app in process.

The FastAPI app (behind its size/address guard) runs in a starlette TestClient over an in-memory
provider (tests/provider/provider_helpers.memory_provider) with member alice; rate limits are
lifted so every input reaches validation. Signed routes are signed as alice (RFC 9421), so a body
gets past authentication into the route's own checks. Input: byte 0 picks the route, the rest is
the body sent as application/json.

The app and its store live for the whole fuzzing process (starting one costs ~0.5 s), so an input
may see epochs opened by an earlier one; the invariant holds for any such state.
"""

from __future__ import annotations

import atexit
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "provider"))  # provider_helpers: not a package

from grouptun.control.reqsign import sign_headers  # noqa: E402
from provider.app import Settings, create_app  # noqa: E402
from provider_helpers import dump, memory_provider  # noqa: E402

INVARIANT = (
    "No request body makes the app raise or answer 5xx. A 4xx answer is JSON with a 'detail' "
    "reason, and leaves every provider table but the audit log as it was.")

ROUTES = ("enroll", "start", "salt", "report", "rekey")
_UNLIMITED = Settings(**{f"{kind}_{part}": 1e9 for kind in ("member", "address", "salt", "wrong_credential",
                                                             "rekey", "start", "report")
                         for part in ("rate", "burst")})
_world: dict = {}


def _client():
    if not _world:
        warnings.filterwarnings("ignore", message=".*httpx.*", category=DeprecationWarning)
        from starlette.testclient import TestClient  # noqa: PLC0415

        provider, keys = memory_provider()
        asgi, _app = create_app(provider, _UNLIMITED)
        client = TestClient(asgi, client=("127.0.0.1", 4000))
        client.__enter__()  # runs the lifespan (watch hub, start batcher)
        atexit.register(client.__exit__, None, None, None)
        _world.update(provider=provider, key=keys["alice"], client=client)
    return _world


def _state(provider) -> list[str]:
    return [line for line in dump(provider.store).splitlines() if not line.startswith("audit ")]


def request(route: str, body: bytes):
    world = _client()
    provider, client = world["provider"], world["client"]
    path = {"enroll": "/v1/enroll", "start": "/v1/groups/lan/start", "report": "/v1/groups/lan/report",
            "rekey": "/v1/groups/lan/rekey",
            "salt": f"/v1/groups/lan/epochs/{provider.show_group('lan')['epoch']}/salt"}[route]
    headers = {"content-type": "application/json"}
    if route != "enroll":
        sign_headers("POST", "http://testserver" + path, headers, body, "alice", world["key"])
    return client.post(path, content=body, headers=headers)


def test_one_input(data: bytes) -> None:
    if not data:
        return
    route, body = ROUTES[data[0] % len(ROUTES)], data[1:]
    provider = _client()["provider"]
    before = _state(provider)
    answer = request(route, body)
    assert answer.status_code < 500, f"{route}: HTTP {answer.status_code} {answer.text[:200]}"
    if answer.status_code >= 400:
        assert "detail" in answer.json(), f"{route}: refusal without a reason"
        assert _state(provider) == before, f"{route}: refused (HTTP {answer.status_code}) but the store changed"


def seeds() -> dict[str, bytes]:
    import base64
    import json

    def b64(n: int) -> str:
        return base64.b64encode(bytes(n)).decode()

    enroll = {"secret": "A" * 43, "name": "mallory", "ed25519_public": b64(32), "kem_public": b64(1216),
              "credential": b64(12), "endpoints": ["192.0.2.1:51820"], "proof": b64(64)}
    bodies = {"enroll": (0, enroll), "start": (1, {"challenge": "ab" * 32}),
              "salt": (2, {"credential": base64.b64encode(b"credential").decode()}),
              "salt-wrong": (2, {"credential": b64(12)}),
              "report": (3, {"endpoints": ["192.0.2.7:51820"], "packets_sent": {"1": 10}}),
              "rekey": (4, {"reason": "member"}), "rekey-empty": (4, {})}
    out = {label: bytes([route]) + json.dumps(body).encode() for label, (route, body) in bodies.items()}
    out["report-bad-json"] = b"\3{\"endpoints\": [1e999]"
    return out
