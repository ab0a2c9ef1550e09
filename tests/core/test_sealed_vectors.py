"""tests/vectors/sealed-v1.json: reproduced by `grouptun vectors`, and opened by an independent reading of
PROTOCOL.md 3.2 (struct, hashlib and cryptography's HPKE and AES-GCM; none of grouptun.core.sealeddata)."""

from __future__ import annotations

import hashlib
import json
import struct
import subprocess
import sys
from pathlib import Path

from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

REPO = Path(__file__).resolve().parents[2]
FILE = REPO / "tests/vectors/sealed-v1.json"
VECTORS = json.loads(FILE.read_text())["sealed"]


def vectors_cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "grouptun.cli.main", "vectors", *args], input=stdin, cwd=REPO,
                          capture_output=True, text=True, timeout=60, env={"PYTHONPATH": str(REPO)})


def test_grouptun_vectors_reproduces_the_file_byte_for_byte():
    proc = vectors_cli("--check", str(FILE))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == FILE.read_text()


def test_a_wrong_output_is_reported():
    doc = json.loads(FILE.read_text())
    doc["sealed"][0]["blob"] = doc["sealed"][0]["blob"][:-2] + "00"
    proc = vectors_cli("--check", "-", stdin=json.dumps(doc))
    assert proc.returncode == 1 and "sealed[0].blob: differs" in proc.stderr


def independent_open(v: dict) -> bytes:
    blob, uid = bytes.fromhex(v["blob"]), v["uid"].encode()
    magic, version, group_id, data_id, chunk_size, count = struct.unpack_from(">4sB16s16sIH", blob)
    assert (magic, version, count, chunk_size) == (b"GTSD", 1, 1, v["chunk_size"])
    offset = 4 + 1 + 16 + 16 + 4 + 2
    assert blob[offset] == len(uid) and blob[offset + 1:offset + 1 + len(uid)] == uid
    wrapped = blob[offset + 1 + len(uid):offset + 1 + len(uid) + 1168]
    end_of_header = offset + 1 + len(uid) + 1168
    private = hpke.MLKEM768X25519PrivateKey(mlkem.MLKEM768PrivateKey.from_seed_bytes(bytes.fromhex(v["kem_seed"])),
                                            x25519.X25519PrivateKey.from_private_bytes(bytes.fromhex(v["x25519_private"])))
    info = b"grouptun/1 sealed key" + group_id + data_id + bytes([len(uid)]) + uid
    suite = hpke.Suite(hpke.KEM.MLKEM768_X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)
    key = suite.decrypt(wrapped, private, info=info)
    assert key.hex() == v["data_key"]
    digest, aead = hashlib.sha256(blob[:end_of_header]).digest(), AESGCM(key)
    body = blob[end_of_header:]
    pieces = [body[i:i + chunk_size + 16] for i in range(0, len(body), chunk_size + 16)]
    return b"".join(aead.decrypt(b"\0" * 4 + struct.pack(">Q", i), c,
                                 b"grouptun/1 sealed chunk" + digest + struct.pack(">QB", i, i == len(pieces) - 1))
                    for i, c in enumerate(pieces))


def test_every_vector_opens_by_the_protocol_text_alone():
    for v in VECTORS:
        assert independent_open(v).hex() == v["plaintext"]
    assert {len(bytes.fromhex(v["plaintext"])) for v in VECTORS} == {0, 32, 40}  # empty, exact chunks, a short last
