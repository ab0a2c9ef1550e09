"""AES counter blocks never repeat across members, packets and blocks (PROTOCOL.md 5)."""

from __future__ import annotations

import struct

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings
from hypothesis import strategies as st

from grouptun.core import keys, seal, sequence, wire

from .builders import GROUP_ID, secret


def gcm_block(nonce_common: bytes, s: int, j: int) -> bytes:
    """Suite 1: block j of packet s is encrypted under IV(s) || u32(j + 2)."""
    return seal.IvMaker(nonce_common)(s) + struct.pack(">I", j + 2)


def ctr_block(nonce_common: bytes, s: int, j: int) -> bytes:
    """Suite 2: (IV(s) || 0^32) + j as a 128-bit big-endian counter."""
    start = int.from_bytes(seal.IvMaker(nonce_common)(s) + bytes(4), "big")
    return ((start + j) % 2**128).to_bytes(16, "big")


@settings(max_examples=200, deadline=None)
@given(nonce_common=st.binary(min_size=16, max_size=16),
       nonce_start=st.integers(0, 2**32 - 1), size=st.integers(2, 65535),
       packets=st.lists(st.tuples(st.integers(0, 65534), st.integers(0, sequence.N_MAX),
                                  st.sampled_from([0, 1, 2, 87, 2**12, 2**32 - 3])), min_size=2, max_size=40))
def test_distinct_packet_blocks_never_share_a_counter_block(nonce_common, nonce_start, size, packets):
    seen_gcm, seen_ctr = {}, {}
    for index, n, j in packets:
        index %= size
        s = sequence.stream_sequence(nonce_start, size, index, n)
        for table, block in ((seen_gcm, gcm_block(nonce_common, s, j)), (seen_ctr, ctr_block(nonce_common, s, j))):
            assert table.setdefault(block, (s, j)) == (s, j)


def _keystream(suite: int, size: int):
    """Ciphertext XOR plaintext of one real sealed packet, and the epoch keys used."""
    k = keys.EpochKeys(suite, GROUP_ID, 9, secret("ss", 9), secret("salt", 9))
    s = sequence.stream_sequence(77, 5, 3, 1234)
    iv = seal.IvMaker(k.nonce_common)(s)
    plaintext = bytes(range(256)) * (size // 256) + bytes(size % 256)
    header = wire.encode(wire.Header(1, 9, s))
    packet = seal.sender_cipher(k, 3).seal(header, iv, plaintext)
    body = packet[wire.HEADER_SIZE:-wire.TAG_SIZE]
    return k, s, bytes(a ^ b for a, b in zip(body, plaintext))


def _aes_blocks(key: bytes, blocks: list[bytes]) -> bytes:
    ecb = Cipher(algorithms.AES(bytes(key)), modes.ECB()).encryptor()
    return ecb.update(b"".join(blocks)) + ecb.finalize()


def test_suite1_keystream_is_the_documented_counter_layout():
    k, s, stream = _keystream(1, 100)
    expected = _aes_blocks(k.enc_key(3), [gcm_block(bytes(k.nonce_common), s, j) for j in range(7)])
    assert stream == expected[:100]


def test_suite2_keystream_is_the_documented_counter_layout():
    k, s, stream = _keystream(2, 100)
    expected = _aes_blocks(k.enc_key(3), [ctr_block(bytes(k.nonce_common), s, j) for j in range(7)])
    assert stream == expected[:100]
