"""Keystore: round trip, wrong credential refused, tampering refused, file mode 0600."""

from __future__ import annotations

import os
import stat

import pytest

from grouptun.control import keystore
from grouptun.errors import KeystoreError

FAST = keystore.KdfCost(memory_kib=64, iterations=1, lanes=1)
CRED = bytearray(b"correct horse battery")


def test_round_trip_gives_the_same_keys(tmp_path):
    keys = keystore.MemberKeys.generate()
    path = tmp_path / "keys.enc"
    keystore.save(path, keys, CRED, FAST)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    again = keystore.load(path, CRED)
    assert again.ed25519_public == keys.ed25519_public
    assert again.kem_public == keys.kem_public
    msg = b"signed request"
    keys.signing_key.public_key().verify(again.signing_key.sign(msg), msg)


def test_file_holds_no_plaintext_key(tmp_path):
    keys = keystore.MemberKeys.generate()
    path = tmp_path / "keys.enc"
    keystore.save(path, keys, CRED, FAST)
    blob = path.read_bytes()
    assert keys.kem.mlkem_seed not in blob and keys.kem.x25519_private not in blob
    assert bytes(keys._ed_raw) not in blob


def test_wrong_credential_is_refused(tmp_path):
    path = tmp_path / "keys.enc"
    keystore.save(path, keystore.MemberKeys.generate(), CRED, FAST)
    with pytest.raises(KeystoreError, match="wrong credential"):
        keystore.load(path, bytearray(b"not the credential"))


@pytest.mark.parametrize("offset", [0, 5, 20, 40, keystore.FILE_SIZE - 1])
def test_any_flipped_byte_is_refused(tmp_path, offset):
    blob = bytearray(keystore.seal(keystore.MemberKeys.generate(), CRED, FAST).blob)
    blob[offset] ^= 0x01
    with pytest.raises(KeystoreError):
        keystore.unseal(bytes(blob), CRED)


def test_truncated_and_absurd_cost_are_refused():
    blob = keystore.seal(keystore.MemberKeys.generate(), CRED, FAST).blob
    with pytest.raises(KeystoreError, match="bytes"):
        keystore.unseal(blob[:-1], CRED)
    huge = bytearray(blob)
    huge[5:9] = (keystore.MAX_MEMORY_KIB + 1).to_bytes(4, "big")
    with pytest.raises(KeystoreError, match="out of bounds"):
        keystore.unseal(bytes(huge), CRED)


def test_loose_file_mode_is_refused(tmp_path):
    path = tmp_path / "keys.enc"
    keystore.save(path, keystore.MemberKeys.generate(), CRED, FAST)
    os.chmod(path, 0o644)
    with pytest.raises(KeystoreError, match="mode 644"):
        keystore.load(path, CRED)


def test_missing_file_and_empty_credential(tmp_path):
    with pytest.raises(KeystoreError, match="cannot open"):
        keystore.load(tmp_path / "none", CRED)
    with pytest.raises(KeystoreError, match="empty"):
        keystore.seal(keystore.MemberKeys.generate(), b"", FAST)


def test_wipe_overwrites_every_seed(tmp_path):
    for keys in (keystore.MemberKeys.generate(),
                 keystore.unseal(keystore.seal(keystore.MemberKeys.generate(), CRED, FAST).blob, CRED)):
        keys.wipe()
        assert keys._ed_raw == bytearray(32)
        assert keys.kem.mlkem_seed == bytearray(64) and keys.kem.x25519_private == bytearray(32)


def test_loaded_keys_live_in_the_locked_arena_and_a_refused_load_leaves_nothing_there(tmp_path):
    from grouptun.secmem import SecretArena

    keys = keystore.MemberKeys.generate()
    path = tmp_path / "keys.enc"
    keystore.save(path, keys, CRED, FAST)
    arena = SecretArena()
    try:
        with pytest.raises(KeystoreError):
            keystore.load(path, bytearray(b"wrong credential"), arena)
        assert arena.status()["slots_in_use"] == 0  # the decryption buffer was zeroed and given back
        again = keystore.load(path, CRED, arena)
        assert arena.status()["slots_in_use"] == 3  # Ed25519 seed, ML-KEM seed, X25519 key; not the blob
        assert again.kem_public == keys.kem_public and again.ed25519_public == keys.ed25519_public
        assert arena.status()["locked_bytes"] > 0
        again.wipe()
        again.wipe()  # idempotent
        assert arena.status()["slots_in_use"] == 0 and arena.status()["regions"] == 0
    finally:
        arena.close()


def test_write_atomic_leaves_no_temp_and_replaces(tmp_path):
    path = tmp_path / "f"
    keystore.write_atomic(path, b"one", 0o600)
    keystore.write_atomic(path, b"two", 0o640)
    assert path.read_bytes() == b"two"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]


def test_default_cost_is_rfc9106_second_choice():
    assert keystore.DEFAULT_COST == keystore.KdfCost(64 * 1024, 3, 4)
