"""RFC 9421 request signing shared by client and server (grouptun.control.reqsign)."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from hypothesis import given, settings
from hypothesis import strategies as st

from grouptun.control.reqsign import MAX_AGE, NonceCache, SignatureRefused, sign_headers, verify_headers

KEY = ed25519.Ed25519PrivateKey.generate()
NOW = 1_795_400_000.0
URL = "https://provider:8443/v1/groups/lan/report?x=1"


def _signed(body=b'{"a": 1}', method="POST", url=URL, created=NOW, key=KEY, key_id="alice"):
    headers = {"Content-Type": "application/json"}
    sign_headers(method, url, headers, body, key_id, key, created=created)
    return {k.lower(): v for k, v in headers.items()}


def _verify(headers, body=b'{"a": 1}', method="POST", url="https://other-host/v1/groups/lan/report?x=1",
            now=NOW, resolve=lambda kid: KEY.public_key(), not_before=0.0):
    return verify_headers(method, url, headers, body, resolve, now, not_before)


def test_round_trip_covers_method_path_query_digest_created_nonce():
    headers = _signed()
    verified = _verify(headers)
    assert verified.key_id == "alice" and verified.created == int(NOW) and len(verified.nonce) >= 16
    inputs = headers["signature-input"]
    for part in ('"@method"', '"@path"', '"@query"', '"content-digest"', "created=", "nonce=", 'alg="ed25519"'):
        assert part in inputs


@pytest.mark.parametrize("change", ["method", "path", "query", "body", "key", "unknown"])
def test_any_change_is_refused_with_one_reason(change):
    headers = _signed()
    kwargs = {
        "method": dict(method="PUT"), "path": dict(url="https://p/v1/groups/lab/report?x=1"),
        "query": dict(url="https://p/v1/groups/lan/report?x=2"), "body": dict(body=b'{"a": 2}'),
        "key": dict(resolve=lambda kid: ed25519.Ed25519PrivateKey.generate().public_key()),
        "unknown": dict(resolve=lambda kid: None),
    }[change]
    with pytest.raises(SignatureRefused) as info:
        _verify(headers, **kwargs)
    assert info.value.reason == "signature not valid"


@pytest.mark.parametrize("offset", [-MAX_AGE - 1, 6, 3600])
def test_stale_or_future_signatures_are_refused(offset):
    with pytest.raises(SignatureRefused, match="stale"):
        _verify(_signed(created=NOW + offset))


def test_signatures_from_before_server_start_are_refused():
    with pytest.raises(SignatureRefused, match="stale"):
        _verify(_signed(created=NOW - 2), not_before=NOW - 1)


@pytest.mark.parametrize("mutate", [
    lambda h: h.pop("signature-input"), lambda h: h.pop("signature"), lambda h: h.pop("content-digest"),
    lambda h: h.update({"signature-input": "garbage((("}), lambda h: h.update({"signature": "gt=:AAAA:"}),
    lambda h: h.update({"signature-input": h["signature-input"].replace('"content-digest"', "")}),
])
def test_malformed_headers_are_refused(mutate):
    headers = _signed()
    mutate(headers)
    with pytest.raises(SignatureRefused):
        _verify(headers)


def test_nonce_cache_refuses_replays_and_forgets_old_ones():
    cache = NonceCache(capacity=3)
    assert cache.check_and_add("lan/alice", "n1", NOW)
    assert not cache.check_and_add("lan/alice", "n1", NOW + 1)
    assert cache.check_and_add("lan/bob", "n1", NOW + 1)  # scoped per member
    assert cache.check_and_add("lan/alice", "n2", NOW + 1000)  # old entries expire
    assert len(cache) == 1


@given(st.lists(st.text(alphabet="abcdef0123456789", min_size=16, max_size=16), max_size=50))
@settings(max_examples=50, deadline=None)
def test_nonce_cache_bounded_and_never_accepts_a_live_duplicate(nonces):
    cache = NonceCache(capacity=1000)
    accepted = [n for n in nonces if cache.check_and_add("g/m", n, NOW)]
    assert accepted == list(dict.fromkeys(nonces))
    assert len(cache) <= 1000
