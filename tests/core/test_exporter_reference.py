"""tests/vectors/exporter-v1.json against a plain, independent reading of PROTOCOL.md 3.1.

The reference below uses only the standard library: hashlib/hmac for HKDF,
the rejection rule for passwords written out again, and the public keys
from RFC 8032 (Ed25519) and RFC 7748 (X25519) arithmetic, so a mistake in
grouptun.core.exporter or in how it calls ``cryptography`` would have to
be made twice. ``python3 tests/core/test_exporter_reference.py`` rewrites
the file's outputs from this reference (not from grouptun's code).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.core.test_vectors_reference import hkdf_expand  # the stdlib HKDF-Expand of the packet vectors
from grouptun.vectors import PROTOCOL_ORDER, compute_document, compute_protocol

FILE = Path(__file__).resolve().parents[1] / "vectors" / "exporter-v1.json"
ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"


def exporter_secret(v: dict) -> bytes:
    prk = hmac.new(bytes.fromhex(v["salt"]), bytes.fromhex(v["shared_secret"]), hashlib.sha256).digest()
    ctx = bytes([v["suite"]]) + bytes.fromhex(v["group_id"]) + v["epoch"].to_bytes(4, "big")
    return hkdf_expand(prk, b"grouptun/1 exporter" + ctx, 32)


def export(secret: bytes, label: str, context: bytes, length: int) -> bytes:
    info = bytes([len(label)]) + label.encode() + len(context).to_bytes(4, "big") + context \
        + length.to_bytes(2, "big")
    return hkdf_expand(secret, info, length)


# --- RFC 8032 section 5.1.5 (public key only) and RFC 7748 section 5 ---
P = 2**255 - 19
D = -121665 * pow(121666, P - 2, P) % P
BASE_Y = 4 * pow(5, P - 2, P) % P


def _base_x() -> int:
    xx = (BASE_Y * BASE_Y - 1) * pow(D * BASE_Y * BASE_Y + 1, P - 2, P)
    x = pow(xx, (P + 3) // 8, P)
    if (x * x - xx) % P:
        x = x * pow(2, (P - 1) // 4, P) % P
    return x if x % 2 == 0 else P - x


def _add(a, b):
    (x1, y1, z1, t1), (x2, y2, z2, t2) = a, b
    A, B = (y1 - x1) * (y2 - x2) % P, (y1 + x1) * (y2 + x2) % P
    C, DD = 2 * t1 * t2 * D % P, 2 * z1 * z2 % P
    E, F, G, H = B - A, DD - C, DD + C, B + A
    return E * F % P, G * H % P, F * G % P, E * H % P


def ed25519_public(seed: bytes) -> bytes:
    h = hashlib.sha512(seed).digest()
    scalar = int.from_bytes(h[:32], "little") & ((1 << 254) - 8) | (1 << 254)
    bx = _base_x()
    point, acc = (bx, BASE_Y, 1, bx * BASE_Y % P), (0, 1, 1, 0)
    while scalar:
        if scalar & 1:
            acc = _add(acc, point)
        point, scalar = _add(point, point), scalar >> 1
    x, y, z, _ = acc
    zi = pow(z, P - 2, P)
    x, y = x * zi % P, y * zi % P
    return (y | (x & 1) << 255).to_bytes(32, "little")


def x25519_public(private: bytes) -> bytes:
    k = int.from_bytes(private, "little") & ((1 << 254) - 8) | (1 << 254)
    x1, x2, z2, x3, z3, swap = 9, 1, 0, 9, 1, 0
    for t in reversed(range(255)):
        bit = (k >> t) & 1
        if swap ^ bit:
            x2, x3, z2, z3 = x3, x2, z3, z2
        swap = bit
        a, b = (x2 + z2) % P, (x2 - z2) % P
        c, d = (x3 + z3) % P, (x3 - z3) % P
        da, cb, aa, bb = d * a % P, c * b % P, a * a % P, b * b % P
        e = (aa - bb) % P
        x3, z3 = (da + cb) ** 2 % P, x1 * (da - cb) ** 2 % P
        x2, z2 = aa * bb % P, e * (aa + 121665 * e) % P
    if swap:
        x2, z2 = x3, z3
    return (x2 * pow(z2, P - 2, P) % P).to_bytes(32, "little")


def drbg_stream(seed: bytes, personalization: bytes, sizes) -> list[bytes]:
    """SP 800-90A 10.1.2 HMAC_DRBG (SHA-256, no reseed, no additional input), written out with hmac."""
    def update(k, v, provided):
        k = hmac.new(k, v + b"\x00" + provided, hashlib.sha256).digest()
        v = hmac.new(k, v, hashlib.sha256).digest()
        if provided:
            k = hmac.new(k, v + b"\x01" + provided, hashlib.sha256).digest()
            v = hmac.new(k, v, hashlib.sha256).digest()
        return k, v

    k, v = update(bytes(32), b"\x01" * 32, seed + personalization)
    outputs = []
    for size in sizes:
        out = b""
        while len(out) < size:
            v = hmac.new(k, v, hashlib.sha256).digest()
            out += v
        outputs.append(out[:size])
        k, v = update(k, v, b"")
    return outputs


def product(secret: bytes, p: dict, epoch: int) -> dict:
    label = f"grouptun/1 {p['type']} {p['name']}"
    context = bytes.fromhex(p["context"])
    n = p.get("length", 24 if p["type"] == "password" else 32)
    size = 2 * n + 32 if p["type"] == "password" else n
    if "count" in p:
        label += " stream"
        raws = drbg_stream(export(secret, label, context, 48), label.encode(), [size] * p["count"])
        return {"label": label, "stream": [made(raw, p, n, epoch) for raw in raws]}
    return {"label": label, **made(export(secret, label, context, size), p, n, epoch)}


def made(raw: bytes, p: dict, n: int, epoch: int) -> dict:
    if p["type"] == "password":
        text = "".join(ALPHABET[b % 62] for b in raw if b < 248)[:n]
        return {"secret": text.encode().hex(), "entropy_bits": round(min(n * math.log2(62), 256), 3),
                "password": text}
    out = {"secret": raw.hex(), "entropy_bits": float(min(8 * n, 256))}
    if p["type"] == "tls-psk":
        out["identity"] = f"grouptun:{p['group']}:{p['name']}:{epoch}"
    elif p["type"] == "ed25519":
        out["public"] = ed25519_public(raw).hex()
    elif p["type"] == "x25519":
        out["public"] = x25519_public(raw).hex()
    return out


def reference(v: dict) -> dict:
    secret = exporter_secret(v)
    out = {}
    if "exports" in v:
        out["exported"] = [export(secret, e["label"], bytes.fromhex(e["context"]), e["length"]).hex()
                           for e in v["exports"]]
    if "products" in v:
        out["produced"] = [product(secret, p, v["epoch"]) for p in v["products"]]
    return out


def _document() -> dict:
    return json.loads(FILE.read_text())


def test_every_product_type_and_the_exporter_limits_are_in_the_file():
    vectors = _document()["vectors"]
    types = {p["type"] for v in vectors for p in v.get("products", [])}
    assert types == {"tls-psk", "key", "password", "ed25519", "x25519"}
    lengths = {e["length"] for v in vectors for e in v.get("exports", [])}
    labels = {len(e["label"]) for v in vectors for e in v.get("exports", [])}
    assert {1, 255 * 32} <= lengths and {1, 255} <= labels
    assert {v["suite"] for v in vectors} == {1, 2}


def test_the_drbg_reference_reproduces_nist_cavp(vectors_dir):
    for case in json.loads((vectors_dir / "hmac-drbg-cavp.json").read_text())["cases"]:
        if "EntropyInputReseed" in case:
            continue  # the reference has no reseed (streams never reseed)
        seed = bytes.fromhex(case["EntropyInput"] + case["Nonce"])
        assert drbg_stream(seed, bytes.fromhex(case["PersonalizationString"]), [128, 128])[1].hex() \
            == case["ReturnedBits"]


def test_the_file_equals_the_independent_reference():
    for v in _document()["vectors"]:
        expected = reference(v)
        assert {k: v[k] for k in expected} == expected


def test_the_vectors_tool_reproduces_the_file():
    document = _document()
    assert compute_document(document) == document


def test_the_rfc_arithmetic_reproduces_rfc_8032_and_7748():
    # RFC 8032 7.1 TEST 1; RFC 7748 6.1 (Alice)
    assert ed25519_public(bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")).hex() \
        == "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
    assert x25519_public(bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")).hex() \
        == "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"


@st.composite
def export_requests(draw):
    label = draw(st.text(alphabet=[chr(c) for c in range(0x20, 0x7F)], min_size=1, max_size=255))
    return {"label": label, "context": draw(st.binary(max_size=300)).hex(),
            "length": draw(st.one_of(st.integers(1, 64), st.sampled_from([255 * 32])))}


@settings(max_examples=60, deadline=None)
@given(st.binary(min_size=32, max_size=32), st.lists(export_requests(), min_size=1, max_size=3))
def test_vectors_tool_matches_the_reference_on_random_requests(shared_secret, exports):
    v = dict(_document()["vectors"][0], shared_secret=shared_secret.hex(), exports=exports)
    for field in ("exported", "produced", "products"):
        v.pop(field, None)
    assert compute_protocol("vectors[0]", v)["exported"] == reference(v)["exported"]


def regenerate() -> None:
    """Fill every output of the file from the reference (and the packet outputs from protocol-v1)."""
    document = _document()
    document["vectors"] = [{k: merged[k] for k in PROTOCOL_ORDER if k in merged}
                           for merged in ({**v, **reference(v)} for v in document["vectors"])]
    FILE.write_text(json.dumps(document, indent=1) + "\n")


if __name__ == "__main__":
    sys.exit(regenerate())


def _cli(capsys, tmp_path, document, *extra):
    from grouptun.cli import main as cli
    path = tmp_path / "doc.json"
    path.write_text(json.dumps(document))
    code = cli.main(["vectors", *extra, str(path)])
    return (code, *capsys.readouterr())


def test_check_flags_a_wrong_export_and_a_wrong_product(capsys, tmp_path):
    document = _document()
    document["vectors"][1]["exported"][0] = "00" * 32
    document["vectors"][2]["produced"][0]["identity"] = "grouptun:x:y:1"
    code, out, err = _cli(capsys, tmp_path, document, "--check")
    assert code == 1 and json.loads(out) == _document()
    assert "vectors[1].exported" in err and "vectors[2].produced" in err


def test_outputs_absent_are_computed(capsys, tmp_path):
    document = _document()
    for v in document["vectors"]:
        del v["exported"], v["produced"]
    code, out, err = _cli(capsys, tmp_path, document)
    assert (code, err) == (0, "") and out == FILE.read_text()


@pytest.mark.parametrize("field, item, path", [
    ("exports", {"label": "", "context": "", "length": 1}, "exports[0].label"),
    ("exports", {"label": "a", "context": "0", "length": 1}, "exports[0].context"),
    ("exports", {"label": "a", "context": "", "length": 8161}, "exports[0].length"),
    ("products", {"type": "rsa", "name": "a", "group": "g", "context": ""}, "products[0].type"),
    ("products", {"type": "key", "name": "a b", "group": "g", "context": ""}, "products[0].name"),
    ("products", {"type": "tls-psk", "name": "a", "group": "g:h", "context": ""}, "products[0].group"),
])
def test_malformed_requests_name_the_field(capsys, tmp_path, field, item, path):
    document = {"version": 1, "vectors": [dict(_document()["vectors"][0], **{field: [item]})]}
    code, out, err = _cli(capsys, tmp_path, document)
    assert code == 2 and err.startswith(f"grouptun vectors: vectors[0].{path}:") and out == ""
