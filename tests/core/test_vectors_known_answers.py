"""Known answers: tests/vectors/protocol-v1.json and capsules-v1.json, field by field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from grouptun.core import capsule, keys, seal, sequence, wire
from grouptun.errors import AuthenticationError

# The same place tests/conftest.py's vectors_dir fixture points to; read at
# collection time so each vector is its own test case.
_DIR = Path(__file__).resolve().parents[1] / "vectors"
PROTOCOL = json.loads((_DIR / "protocol-v1.json").read_text())["vectors"] if _DIR.is_dir() else []
CAPSULES = json.loads((_DIR / "capsules-v1.json").read_text())["capsules"] if _DIR.is_dir() else []


def test_vector_files_present(vectors_dir):
    assert vectors_dir == _DIR
    assert len(PROTOCOL) >= 12 and len(CAPSULES) >= 3
    assert {v["suite"] for v in PROTOCOL} == {1, 2}


def _epoch_keys(v) -> keys.EpochKeys:
    return keys.EpochKeys(v["suite"], bytes.fromhex(v["group_id"]), v["epoch"],
                          bytes.fromhex(v["shared_secret"]), bytes.fromhex(v["salt"]))


@pytest.mark.parametrize("v", PROTOCOL, ids=lambda v: f"suite{v['suite']}-N{v['group_size']}-n{v['n']}")
def test_protocol_vector_reproduced(v):
    k = _epoch_keys(v)
    index = v["member_index"]
    assert keys.data_id(bytes.fromhex(v["shared_secret"])).hex() == v["data_id"]
    assert k.prk.hex() == v["prk"]
    assert k.key_check().hex() == v["key_check"]
    assert k.nonce_common.hex() == v["nonce_common"]
    assert k.enc_key(index).hex() == v["enc_key"]
    assert (k.mac_key(index).hex() if v["suite"] == 2 else "") == v["mac_key"]
    s = sequence.stream_sequence(v["nonce_start"], v["group_size"], index, v["n"])
    assert s == v["stream_sequence"]
    iv = seal.IvMaker(k.nonce_common)(s)
    assert iv.hex() == v["iv"]
    header = wire.encode(wire.Header(v["type"], wire.wire_epoch(v["epoch"]), s))
    assert header.hex() == v["header"]
    packet = seal.sender_cipher(k, index).seal(header, iv, bytes.fromhex(v["payload"]))
    assert packet.hex() == v["packet"]


def _open(v, packet: bytes):
    """Open as a receiver would: header, (i, n) from s, then the sender's key."""
    header = wire.decode(packet)
    assert header.epoch == v["epoch"] % 65536
    recovered = sequence.recover(v["nonce_start"], v["group_size"], header.sequence)
    assert recovered is not None
    index, n = recovered
    k = _epoch_keys(v)
    plaintext = seal.sender_cipher(k, index).open(packet, seal.IvMaker(k.nonce_common)(header.sequence))
    return header, index, n, bytes(plaintext)


@pytest.mark.parametrize("v", PROTOCOL, ids=lambda v: f"suite{v['suite']}-n{v['n']}")
def test_protocol_vector_opens(v):
    header, index, n, plaintext = _open(v, bytes.fromhex(v["packet"]))
    assert (header.type, index, n, plaintext.hex()) == (v["type"], v["member_index"], v["n"], v["payload"])


@pytest.mark.parametrize("v", PROTOCOL, ids=lambda v: f"suite{v['suite']}-n{v['n']}")
def test_protocol_vector_every_bit_flip_rejected(v):
    packet = bytes.fromhex(v["packet"])
    k = _epoch_keys(v)
    for bit in range(len(packet) * 8):
        flipped = bytearray(packet)
        flipped[bit // 8] ^= 1 << (bit % 8)
        # A receiver of this epoch: header checks, sequence recovery, then the tag.
        try:
            header = wire.decode(flipped)
        except wire.WireFormatError:
            continue
        recovered = sequence.recover(v["nonce_start"], v["group_size"], header.sequence)
        if header.epoch != v["epoch"] % 65536 or recovered is None:
            continue
        cipher = seal.sender_cipher(k, recovered[0])
        with pytest.raises(AuthenticationError):
            cipher.open(flipped, seal.IvMaker(k.nonce_common)(header.sequence))


@pytest.mark.parametrize("c", CAPSULES, ids=lambda c: c["uid"])
def test_capsule_vector(c):
    private = capsule.KemPrivateKey(bytes.fromhex(c["kem_seed"]), bytes.fromhex(c["x25519_private"]))
    assert private.public_bytes().hex() == c["kem_public"]
    group_id, epoch, uid = bytes.fromhex(c["group_id"]), c["epoch"], c["uid"]
    assert capsule.capsule_info(group_id, epoch, uid).hex() == c["capsule_info"]
    assert capsule.salt_info(group_id, epoch, uid).hex() == c["salt_info"]
    ss = capsule.open_sealed(private, bytes.fromhex(c["capsule_info"]), bytes.fromhex(c["capsule"]))
    assert ss.hex() == c["shared_secret"]
    assert keys.data_id(ss).hex() == c["data_id"]
    salt = capsule.open_sealed(private, bytes.fromhex(c["salt_info"]), bytes.fromhex(c["salt_capsule"]))
    assert salt.hex() == c["salt"]
