"""The vectors tool against an independent, deliberately plain re-implementation of PROTOCOL.md 3-5.

The reference below uses the standard library's hashlib/hmac for the key
schedule and AES-ECB over explicit counter blocks for suite 2, so a shared
mistake in grouptun.core (labels, byte order, counter layout) would have to
be made twice. Inputs are drawn at and around every limit.
"""

from __future__ import annotations

import hashlib
import hmac

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st

from grouptun.vectors import compute_protocol


def hkdf_expand(prk: bytes, info: bytes, length: int) -> bytes:
    out, block, counter = b"", b"", 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        out += block
        counter += 1
    return out[:length]


def reference(v: dict) -> dict:
    ss, salt, gid = (bytes.fromhex(v[k]) for k in ("shared_secret", "salt", "group_id"))
    suite, epoch, index, size = v["suite"], v["epoch"], v["member_index"], v["group_size"]
    prk = hmac.new(salt, ss, hashlib.sha256).digest()
    nonce_common = hashlib.sha256(prk).digest()[:16]
    ctx = bytes([suite]) + gid + epoch.to_bytes(4, "big")
    enc = hkdf_expand(prk, b"grouptun/1 key" + ctx + index.to_bytes(4, "big"), 32)
    mac = hkdf_expand(prk, b"grouptun/1 mac" + ctx + index.to_bytes(4, "big"), 32) if suite == 2 else b""
    s = v["nonce_start"] + index + v["n"] * size
    iv = bytes(a ^ b for a, b in zip(nonce_common[:12], bytes(4) + s.to_bytes(8, "big")))
    header = bytes([0x10 | v["type"], 0]) + (epoch % 65536).to_bytes(2, "big") + s.to_bytes(8, "big")
    payload = bytes.fromhex(v["payload"])
    if suite == 1:
        body = AESGCM(enc).encrypt(iv, payload, header)
    else:
        start = int.from_bytes(iv + bytes(4), "big")
        blocks = b"".join(((start + j) % 2**128).to_bytes(16, "big") for j in range(len(payload) // 16 + 1))
        ecb = Cipher(algorithms.AES(enc), modes.ECB()).encryptor()
        stream = ecb.update(blocks) + ecb.finalize()
        ciphertext = bytes(a ^ b for a, b in zip(payload, stream))
        body = ciphertext + hmac.new(mac, header + ciphertext, hashlib.sha256).digest()[:16]
    return {
        "data_id": hashlib.sha256(b"grouptun/1 data-id" + ss).digest()[:16].hex(),
        "prk": prk.hex(), "nonce_common": nonce_common.hex(),
        "key_check": hkdf_expand(prk, b"grouptun/1 check" + ctx, 16).hex(),
        "enc_key": enc.hex(), "mac_key": mac.hex(), "stream_sequence": s, "iv": iv.hex(),
        "header": header.hex(), "packet": (header + body).hex(),
    }


def edge_ints(low: int, high: int):
    return st.one_of(st.sampled_from([low, low + 1, high - 1, high]), st.integers(low, high))


@st.composite
def vector_inputs(draw):
    size = draw(edge_ints(2, 65535))
    type_ = draw(st.sampled_from([1, 2]))
    payload = b"" if type_ == 2 else draw(st.one_of(
        st.binary(max_size=40), st.sampled_from([bytes(15), bytes(16), bytes(17), bytes(range(256)) * 6])))
    return {
        "suite": draw(st.sampled_from([1, 2])),
        "shared_secret": draw(st.binary(min_size=32, max_size=32)).hex(),
        "salt": draw(st.binary(min_size=32, max_size=32)).hex(),
        "group_id": draw(st.binary(min_size=16, max_size=16)).hex(),
        "epoch": draw(edge_ints(0, 2**32 - 1)),
        "nonce_start": draw(edge_ints(0, 2**32 - 1)),
        "group_size": size,
        "member_index": draw(edge_ints(0, size - 1)),
        "n": draw(edge_ints(0, 2**28 - 1)),
        "type": type_,
        "payload": payload.hex(),
    }


@settings(max_examples=150, deadline=None)
@given(vector_inputs())
def test_vectors_tool_matches_the_plain_reference(v):
    computed = compute_protocol("vectors[0]", dict(v))
    expected = {**v, **reference(v)}
    assert computed == expected
    assert list(computed) == list(v) + ["data_id", "prk", "key_check", "nonce_common", "enc_key",
                                        "mac_key", "stream_sequence", "iv", "header", "packet"]


def test_the_reference_itself_reproduces_the_published_vectors(vectors_dir):
    import json
    for v in json.loads((vectors_dir / "protocol-v1.json").read_text())["vectors"]:
        assert {k: v[k] for k in reference(v)} == reference(v)
