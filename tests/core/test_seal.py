"""Both suites: round trips, seal_at == seal, wrong key/IV refused, HMAC before decryption."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from grouptun.core import keys, seal, wire
from grouptun.errors import AuthenticationError

from .builders import GROUP_ID, secret


def epoch_keys(suite: int) -> keys.EpochKeys:
    return keys.EpochKeys(suite, GROUP_ID, 3, secret("ss", 3), secret("salt", 3))


KEYS = {suite: epoch_keys(suite) for suite in (1, 2)}


@settings(max_examples=100, deadline=None)
@given(suite=st.sampled_from([1, 2]), index=st.integers(0, 5), s=st.integers(0, 2**64 - 1),
       plaintext=st.binary(max_size=3000), slack=st.integers(0, 40))
def test_round_trip_and_seal_at(suite, index, s, plaintext, slack):
    k = KEYS[suite]
    iv = seal.IvMaker(k.nonce_common)(s)
    header = wire.encode(wire.Header(1, 3, s))
    packet = seal.sender_cipher(k, index).seal(header, iv, plaintext)
    assert isinstance(packet, bytes) and len(packet) == len(plaintext) + wire.OVERHEAD
    assert packet[:12] == header
    buffer = bytearray(b"\xaa" * (len(packet) + 15 + slack))
    buffer[:12] = header
    assert seal.sender_cipher(k, index).seal_at(memoryview(buffer), 0, iv, plaintext) == len(packet)
    assert buffer[:len(packet)] == packet
    assert seal.sender_cipher(k, index).open(memoryview(buffer)[:len(packet)], iv) == plaintext


@pytest.mark.parametrize("suite", [1, 2])
def test_wrong_key_or_iv_refused(suite):
    k = KEYS[suite]
    make_iv = seal.IvMaker(k.nonce_common)
    header = wire.encode(wire.Header(1, 3, 10))
    packet = seal.sender_cipher(k, 0).seal(header, make_iv(10), b"x" * 50)
    with pytest.raises(AuthenticationError):
        seal.sender_cipher(k, 1).open(packet, make_iv(10))
    if suite == 1:  # suite 2 binds the IV through s in the MACed header instead
        with pytest.raises(AuthenticationError):
            seal.sender_cipher(k, 0).open(packet, make_iv(11))
    moved = wire.encode(wire.Header(1, 3, 11)) + packet[12:]
    with pytest.raises(AuthenticationError):
        seal.sender_cipher(k, 0).open(moved, make_iv(11))
    other = epoch_keys(3 - suite)
    with pytest.raises(AuthenticationError):
        seal.sender_cipher(other, 0).open(packet, seal.IvMaker(other.nonce_common)(10))


def test_suite2_checks_the_tag_before_decrypting(monkeypatch):
    k = KEYS[2]
    iv = seal.IvMaker(k.nonce_common)(5)
    packet = bytearray(seal.sender_cipher(k, 0).seal(wire.encode(wire.Header(1, 3, 5)), iv, b"y" * 64))
    cipher = seal.sender_cipher(k, 0)
    calls = []
    original = seal.Suite2Cipher._encrypt
    monkeypatch.setattr(seal.Suite2Cipher, "_encrypt", lambda self, *a: calls.append(a) or original(self, *a))
    packet[20] ^= 1
    with pytest.raises(AuthenticationError):
        cipher.open(packet, iv)
    assert calls == []
    packet[20] ^= 1
    assert cipher.open(packet, iv) == b"y" * 64 and len(calls) == 1


def test_suite1_has_no_mac_key_and_wipe_clears_everything():
    k = epoch_keys(1)
    with pytest.raises(ValueError):
        k.mac_key(0)
    material = [k.enc_key(0), k.enc_key(7), k.prk, k.nonce_common]
    k.wipe()
    assert not any(any(m) for m in material)
    with pytest.raises(ValueError):
        k.enc_key(9)
