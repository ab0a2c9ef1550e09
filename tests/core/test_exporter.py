"""The exporter (PROTOCOL.md 3.1): limits, wiping, independence of outputs, typed products.

Known answers for every step are in tests/vectors/exporter-v1.json, checked
against an independent reference in test_exporter_reference.py.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from grouptun.core import exporter, keys
from grouptun.core.epoch import EpochState
from tests.core.builders import material, secret

SECRET = bytes(range(32))
PRINTABLE = [chr(c) for c in range(0x20, 0x7F)]


def epoch_keys(epoch: int = 5) -> keys.EpochKeys:
    return keys.EpochKeys(1, bytes(16), epoch, secret("ss", epoch), secret("salt", epoch))


@pytest.mark.parametrize("label, context, length, named", [
    ("", b"", 32, "label"), ("x" * 256, b"", 32, "label"), ("caf\u00e9", b"", 32, "label"),
    ("tab\there", b"", 32, "label"), (b"\x7f", b"", 32, "label"),
    ("ok", bytes(2**16 + 1), 32, "context"), ("ok", b"", 0, "length"),
    ("ok", b"", 255 * 32 + 1, "length"), ("ok", b"", True, "length"),
])
def test_limits_raise_value_error_naming_the_argument(label, context, length, named):
    with pytest.raises(ValueError, match=f"^{named}"):
        exporter.export(SECRET, label, context, length)


def test_the_limits_themselves_are_accepted():
    assert len(exporter.export(SECRET, "x" * 255, bytes(2**16), 255 * 32)) == 255 * 32
    assert len(exporter.export(SECRET, " ", b"", 1)) == 1
    assert exporter.export(SECRET, b"abc", b"", 8) == exporter.export(SECRET, "abc", b"", 8)


def test_exporter_secret_is_not_a_packet_key_and_is_wiped_with_the_epoch():
    k = epoch_keys()
    exp = k.exporter_secret()
    assert exp is k.exporter_secret() and len(exp) == 32
    assert exp not in (k.enc_key(0), k.prk, k.key_check())
    state = EpochState(material("alice", epoch=5), 0.0)
    held = state.keys.exporter_secret()
    state.wipe()
    assert held == bytes(32)
    with pytest.raises(ValueError, match="wiped"):
        state.keys.exporter_secret()


def test_every_epoch_exports_differently():
    a, b = epoch_keys(5).exporter_secret(), epoch_keys(6).exporter_secret()
    assert exporter.export(a, "l", b"", 32) != exporter.export(b, "l", b"", 32)


# At least 8 bytes each: two unrelated 1-byte outputs are equal once in 256 (a flaky test, not a finding);
# 8 bytes make a chance match 2^-64.
request = st.tuples(st.text(PRINTABLE, min_size=1, max_size=40), st.binary(max_size=40), st.integers(8, 80))


@settings(max_examples=200, deadline=None)
@given(request, request)
def test_distinct_requests_share_no_output_prefix(one, two):
    """Label, context and length are all bound: no request's output starts another's."""
    if one == two:
        return
    first, second = exporter.export(SECRET, *one), exporter.export(SECRET, *two)
    shorter = 8
    assert first[:shorter] != second[:shorter]


@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=32, max_size=32), st.integers(1, exporter.PASSWORD_MAX))
def test_passwords_use_only_the_alphabet_and_have_the_length_asked(seed, length):
    product = exporter.derive_product(seed, "password", "svc", length=length)
    assert len(product.password) == length and set(product.password) <= set(exporter.PASSWORD_ALPHABET)
    assert product.entropy_bits == pytest.approx(min(length * math.log2(62), 256))


def test_rejection_sampling_maps_evenly_and_skips_the_top_bytes():
    every_byte = bytes(range(256))
    letters = exporter.password_from(every_byte, 248)
    assert all(letters.count(ch) == 4 for ch in exporter.PASSWORD_ALPHABET)
    assert exporter.password_from(bytes([248, 255, 0, 61, 62]), 3) == "A9A"
    with pytest.raises(ValueError, match="password"):
        exporter.password_from(bytes([250] * 100 + [1]), 2)


def _binomial_tail_at_most(trials: int, successes_below: int, p_success: float) -> float:
    """P(fewer than ``successes_below`` accepted bytes among ``trials``), computed exactly in logs."""
    total = 0.0
    for k in range(successes_below):
        log_term = (math.lgamma(trials + 1) - math.lgamma(k + 1) - math.lgamma(trials - k + 1)
                    + k * math.log(p_success) + (trials - k) * math.log1p(-p_success))
        total += math.exp(log_term)
    return total


def test_running_out_of_password_bytes_is_below_2_to_the_minus_128_for_every_length():
    worst = max(_binomial_tail_at_most(2 * n + exporter.PASSWORD_SPARE, n, 248 / 256)
                for n in range(1, exporter.PASSWORD_MAX + 1))
    assert worst < 2.0**-128


def test_tls_psk_identity_and_size():
    product = exporter.derive_product(SECRET, "tls-psk", "web", b"", group="lan", epoch=70001)
    assert product.identity == "grouptun:lan:web:70001" and len(product.secret) == 32
    assert product.label == "grouptun/1 tls-psk web"
    assert bytes(product.secret) == bytes(exporter.export(SECRET, "grouptun/1 tls-psk web", b"", 32))


@pytest.mark.parametrize("type_, name, length, group, named", [
    ("rsa", "web", None, "lan", "type"), ("key", "", None, "lan", "name"),
    ("key", "has space", None, "lan", "name"), ("key", "a:b", None, "lan", "name"),
    ("key", "x" * 65, None, "lan", "name"), ("tls-psk", "web", 16, "lan", "length"),
    ("ed25519", "k", 64, "lan", "length"), ("password", "p", 257, "lan", "length"),
    ("key", "k", 0, "lan", "length"), ("tls-psk", "web", None, "a:b", "group"),
])
def test_bad_product_requests_name_what_is_wrong(type_, name, length, group, named):
    with pytest.raises(ValueError, match=f"^{named}"):
        exporter.derive_product(SECRET, type_, name, b"", length, group, 1)


def test_key_pairs_are_derived_from_the_exported_seed():
    from cryptography.hazmat.primitives.asymmetric import ed25519

    product = exporter.derive_product(SECRET, "ed25519", "ssh", b"")
    assert bytes(product.secret) == bytes(exporter.export(SECRET, "grouptun/1 ed25519 ssh", b"", 32))
    private = ed25519.Ed25519PrivateKey.from_private_bytes(bytes(product.secret))
    signature = private.sign(b"m")
    ed25519.Ed25519PublicKey.from_public_bytes(product.public).verify(signature, b"m")
    other = exporter.derive_product(SECRET, "x25519", "ssh", b"")
    assert other.secret != product.secret  # the type is in the label
    product.wipe()
    assert product.secret == bytes(32)


def test_a_stream_gives_distinct_products_apart_from_the_single_product():
    stream = exporter.derive_stream(SECRET, "key", "otk", 5, b"", 16)
    secrets = {bytes(p.secret) for p in stream}
    assert len(secrets) == 5 and all(len(s) == 16 for s in secrets)
    assert bytes(exporter.derive_product(SECRET, "key", "otk", b"", 16).secret) not in secrets
    assert stream[0].label == "grouptun/1 key otk stream"
    again = exporter.derive_stream(SECRET, "key", "otk", 2, b"", 16)
    assert [bytes(p.secret) for p in again] == [bytes(p.secret) for p in stream[:2]]  # a stream is a prefix


@pytest.mark.parametrize("type_, count", [("tls-psk", 2), ("key", 0), ("key", 1001), ("key", True)])
def test_bad_streams_name_the_count(type_, count):
    with pytest.raises(ValueError, match="^count"):
        exporter.derive_stream(SECRET, type_, "n", count)
