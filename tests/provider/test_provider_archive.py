"""The signed archive (grouptun.core.archive) and join tokens (grouptun.core.jointoken)."""

from __future__ import annotations

import base64
import json
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from grouptun.core.archive import Archive, ArchiveEpoch, parse_document, verify_archive
from grouptun.core.archivemember import ArchiveMember, instance_of
from grouptun.core.envelope import ProviderKeys, canonical
from grouptun.core.jointoken import JoinToken, b64url, parse_join_token
from grouptun.errors import ConfigError, EpochRejected
from provider.keys import Signer

SIGNER = Signer.generate()
OTHER = Signer.generate()


def _archive(**changes) -> Archive:
    epoch = ArchiveEpoch(epoch=7, suite=1, nonce_start=2**32 - 1, group_size=2, data_id=b"\x01" * 16,
                         key_check=b"\x02" * 16, rekey_after_seconds=600.0, rekey_after_packets=2**27,
                         switch_delay=2.0, grace=30.0, challenges=(b"\x03" * 32,), opened_at=1795400000.123)
    members = (
        ArchiveMember("alice", 1, ("10.77.0.1/24",), ("192.0.2.1:5000",), b"\x04" * 32, b"\x05" * 1216,
                      instance_of(b"\x03" * 32)),
        ArchiveMember("bob", 0, ("10.77.0.2/24", "fd77::2/64"), ("[2001:db8::1]:5000",), b"\x06" * 32,
                      b"\x07" * 1216),
    )
    fields = dict(group_id=b"\x08" * 16, name="lan", version=3, epoch=epoch, members=members, cidr="10.77.0.0/24",
                  cidr6="fd77::/64", mtu=1420, expires_at=1795401200.5)
    fields.update(changes)
    return Archive(**fields)


def test_sign_verify_round_trip_keeps_every_field():
    archive = _archive()
    signed = SIGNER.sign(archive)
    parsed = verify_archive(signed, SIGNER.public)
    assert parsed == archive
    assert parsed.raw == signed
    assert parsed.member("bob").index == 0 and parsed.member("carol") is None


def test_member_instance_is_signed_and_parsed():
    """PROTOCOL.md 4: each member entry names its current instance; nobody can swap it unnoticed."""
    signed = SIGNER.sign(_archive())
    parsed = verify_archive(signed, SIGNER.public)
    assert parsed.member("alice").instance == instance_of(b"\x03" * 32)
    assert parsed.member("bob").instance is None  # never started
    envelope = json.loads(signed)
    own = instance_of(b"\x03" * 32).hex()
    assert envelope["document"].count(own) == 1
    for forged in (instance_of(b"\x0a" * 32).hex(), "null"):
        tampered = dict(envelope, document=envelope["document"].replace(f'"{own}"', forged if forged == "null"
                                                                        else f'"{forged}"'))
        with pytest.raises(EpochRejected) as info:
            verify_archive(json.dumps(tampered).encode(), SIGNER.public)
        assert info.value.step == "signature"
    document = json.loads(envelope["document"])
    for bad in ("missing", "ab", own.upper(), 7):
        entry = dict(document["members"][0])
        if bad == "missing":
            del entry["instance"]
        else:
            entry["instance"] = bad
        with pytest.raises(EpochRejected, match="member.instance") as info:
            parse_document(dict(document, members=[entry, document["members"][1]]))
        assert info.value.step == "format"


def test_document_is_rfc8785_canonical():
    envelope = json.loads(SIGNER.sign(_archive()))
    document = envelope["document"].encode()
    assert canonical(json.loads(document)) == document
    assert list(json.loads(document)) == sorted(json.loads(document))


@pytest.mark.parametrize("which", ["ed25519", "mldsa65"])
def test_either_signature_alone_is_not_enough(which):
    envelope = json.loads(SIGNER.sign(_archive()))
    other = json.loads(OTHER.sign(_archive()))
    envelope[which] = other[which]
    with pytest.raises(EpochRejected) as info:
        verify_archive(json.dumps(envelope).encode(), SIGNER.public)
    assert info.value.step == "signature"


def test_wrong_pinned_keys_and_tampered_document_are_refused():
    signed = SIGNER.sign(_archive())
    with pytest.raises(EpochRejected, match="signature"):
        verify_archive(signed, OTHER.public)
    envelope = json.loads(signed)
    envelope["document"] = envelope["document"].replace('"version":3', '"version":4')
    with pytest.raises(EpochRejected, match="signature"):
        verify_archive(json.dumps(envelope).encode(), SIGNER.public)


def test_mixed_keys_are_refused():
    mixed = ProviderKeys(SIGNER.public.ed25519_public, OTHER.public.mldsa65_public)
    with pytest.raises(EpochRejected, match="signature"):
        verify_archive(SIGNER.sign(_archive()), mixed)


@pytest.mark.parametrize("blob", [b"", b"[]", b"{", b'{"document": 1, "ed25519": "", "mldsa65": ""}',
                                  b'{"document": "{}", "ed25519": "!!", "mldsa65": ""}', b"\xff\xfe",
                                  # nesting beyond the JSON parser's stack (found by fuzzing)
                                  pytest.param(b"[" * 5000, id="deep-nesting"),
                                  pytest.param(b'{"document": "\\ud800", "ed25519": "", "mldsa65": ""}',
                                               id="lone-surrogate")])
def test_malformed_envelopes_are_refused_as_format(blob):
    with pytest.raises(EpochRejected) as info:
        verify_archive(blob, SIGNER.public)
    assert info.value.step in ("format", "signature")


def test_signed_but_malformed_document_is_refused():
    # The provider key signs a non-canonical or incomplete document: the member still refuses it.
    from cryptography.hazmat.primitives.asymmetric import ed25519, mldsa

    ed, ml = ed25519.Ed25519PrivateKey.generate(), mldsa.MLDSA65PrivateKey.generate()
    signer = Signer(ed, ml)
    # 1e999 / NaN / 2^60 parse but have no RFC 8785 form, "[" * 5000 nests too deep (found by fuzzing)
    for document in (b'{"b": 1, "a": 2}', canonical({"format": "grouptun/1 archive"}), b'{"a": 1e999}',
                     b'{"a": NaN}', b'{"a": 1152921504606846976}', b"[" * 5000):
        message = b"grouptun/1 archive" + document
        envelope = {"document": document.decode(), "ed25519": base64.b64encode(ed.sign(message)).decode(),
                    "mldsa65": base64.b64encode(ml.sign(message, b"grouptun/1 archive")).decode()}
        with pytest.raises(EpochRejected) as info:
            verify_archive(canonical(envelope), signer.public)
        assert info.value.step == "format"


@pytest.mark.parametrize("field,value", [("group_id", "00"), ("version", -1), ("version", True),
                                         ("members", "x"), ("expires_at", "soon")])
def test_parse_document_names_the_bad_field(field, value):
    obj = _archive().to_json()
    obj[field] = value
    with pytest.raises(EpochRejected, match=field):
        parse_document(obj)


def test_provider_keys_fingerprint_is_stable_and_binding():
    keys = SIGNER.public
    assert keys.fingerprint() == ProviderKeys.from_json(keys.to_json()).fingerprint()
    assert len(keys.fingerprint()) == 64
    assert keys.fingerprint() != ProviderKeys(keys.ed25519_public, OTHER.public.mldsa65_public).fingerprint()


_HEX64 = st.binary(min_size=32, max_size=32).map(bytes.hex)


@given(host=st.sampled_from(["127.0.0.1", "vault.example", "[::1]"]), port=st.integers(1, 65535),
       tls=_HEX64, keys=_HEX64, secret=st.binary(min_size=32, max_size=32))
@settings(max_examples=50, deadline=None)
def test_join_token_round_trips(host, port, tls, keys, secret):
    token = JoinToken(f"https://{host}:{port}", tls, keys, b64url(secret))
    text = str(token)
    assert text.startswith("gtjoin1-") and "\n" not in text
    assert parse_join_token(f"  {text}\n") == token


@pytest.mark.parametrize("text", ["", "gtjoin1-", "gtjoin1-!!!", "gtjoin2-e30", "gtjoin1-" + b64url(b"{}"),
                                  "gtjoin1-" + b64url(b'{"url":"http://x","tls":"","keys":"","secret":""}'),
                                  "x" * 5000,
                                  # found by fuzzing: JSON nested too deep, an unclosed IPv6 host
                                  pytest.param("gtjoin1-" + b64url(b"[" * 1400), id="deep-nesting"),
                                  pytest.param("gtjoin1-" + b64url(b'{"url":"https://[::1","tls":"","keys":"",'
                                                                   b'"secret":""}'), id="unclosed-ipv6-host")])
def test_malformed_join_tokens_are_config_errors(text):
    with pytest.raises(ConfigError) as info:
        parse_join_token(text)
    assert info.value.key == "join token"


def test_join_token_field_checks():
    good = dict(url="https://127.0.0.1:8443", tls_fingerprint="a" * 64, provider_keys_hash="b" * 64,
                secret=b64url(os.urandom(32)))
    JoinToken(**good)
    for field, bad in [("url", "http://127.0.0.1"), ("url", "https://h:99999"), ("tls_fingerprint", "A" * 64),
                       ("provider_keys_hash", "b" * 63), ("secret", b64url(b"short"))]:
        with pytest.raises(ConfigError):
            JoinToken(**{**good, field: bad})


def test_member_routes_are_optional_signed_and_checked():
    """grouptun extension: a member entry's approved subnet routes; absent means none."""
    plain = _archive()
    assert "routes" not in json.loads(json.loads(SIGNER.sign(plain))["document"])["members"][0]
    bob = plain.members[1]
    routed = _archive(members=(plain.members[0], ArchiveMember(
        bob.name, bob.index, bob.addresses, bob.endpoints, bob.ed25519_public, bob.kem_public,
        routes=("192.168.5.0/24", "fd99:5::/64"))))
    parsed = verify_archive(SIGNER.sign(routed), SIGNER.public)
    assert parsed.member("bob").routes == ("192.168.5.0/24", "fd99:5::/64")
    assert parsed.member("alice").routes == ()
    document = json.loads(json.loads(SIGNER.sign(routed))["document"])
    for bad in (["192.168.5.1/24"], ["not a prefix"], "192.168.5.0/24", [7], ["10.0.0.0/8"] * 65):
        entry = dict(document["members"][1], routes=bad)
        with pytest.raises(EpochRejected, match="member.routes") as info:
            parse_document(dict(document, members=[document["members"][0], entry]))
        assert info.value.step == "format"
