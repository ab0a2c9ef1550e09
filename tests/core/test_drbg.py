"""HMAC_DRBG (SP 800-90A 10.1.2, SHA-256) against NIST CAVP vectors, and its limits."""

from __future__ import annotations

import json

import pytest

from grouptun.core.drbg import MAX_REQUEST, HmacDrbg


def cases(vectors_dir):
    return json.loads((vectors_dir / "hmac-drbg-cavp.json").read_text())["cases"]


def test_cavp_vectors_are_reproduced(vectors_dir):
    found = cases(vectors_dir)
    assert len(found) >= 4 and any("EntropyInputReseed" in c for c in found)
    for case in found:
        generator = HmacDrbg(bytes.fromhex(case["EntropyInput"]), bytes.fromhex(case["Nonce"]),
                             bytes.fromhex(case["PersonalizationString"]))
        if "EntropyInputReseed" in case:
            generator.reseed(bytes.fromhex(case["EntropyInputReseed"]))
        generator.generate(128)
        assert generator.generate(128).hex() == case["ReturnedBits"], case["from"]


def test_a_changed_input_changes_the_output(vectors_dir):
    case = cases(vectors_dir)[0]
    entropy = bytearray.fromhex(case["EntropyInput"])
    entropy[0] ^= 1
    generator = HmacDrbg(entropy, bytes.fromhex(case["Nonce"]))
    generator.generate(128)
    assert generator.generate(128).hex() != case["ReturnedBits"]


def test_limits_and_wipe():
    with pytest.raises(ValueError, match="^entropy"):
        HmacDrbg(bytes(31), bytes(16))
    with pytest.raises(ValueError, match="^nonce"):
        HmacDrbg(bytes(32), bytes(15))
    generator = HmacDrbg(bytes(32), bytes(16))
    with pytest.raises(ValueError, match="^length"):
        generator.generate(MAX_REQUEST + 1)
    with pytest.raises(ValueError, match="^length"):
        generator.generate(0)
    generator.generate(MAX_REQUEST)
    generator.reseed_counter = 2**48 + 1
    with pytest.raises(ValueError, match="reseed required"):
        generator.generate(1)
    generator.wipe()
    assert generator._key == bytes(32) and generator._v == bytes(32)
