"""The credential split: two independent values, the v2 keystore, and the v1 file written by the old code."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from grouptun.control import credkeys

from grouptun.control import keystore
from grouptun.errors import KeystoreError

from .fakes import FAST

CRED = b"correct horse battery"
SALT = bytes(range(16))

# Known answers for derive(CRED, SALT, Cost(64, 1, 1)): a change of label, KDF or order shows here.
KAT_KEYFILE_KEY = "77bd715c8c8c4a52020de1c59b78a9bfcf6e959d965f416d12a109e8075d7ea8"
KAT_AUTHENTICATOR = "a9aa54b8e4b895f618b30f508ce407302a46904ca72d3f165d0d4e47bdd6e8b2"

# A keystore written by grouptun before the split (c761f0e's keystore.seal), credential b"old form credential".
LEGACY_CREDENTIAL = b"old form credential"
LEGACY_ED25519_PUBLIC = "b183133d2ab24de7afb7abdc48c561ecd40da2cee71c5f8f09e76bdbee8cfe2a"
LEGACY_BLOB = bytes.fromhex(
    "47544b5301000000400000000101c3f1ed575e51346b56e2101ca4a0a96e941696783ffad9bbf3746aa7b5ef8457aa9ee5"
    "86289b511c90e585b77fcf4dd73dbb0597c565ba4f0eeef686418c14120746bf9ae3a7545fb5661048a513ca12e911fb78"
    "341e55cb7baf5e01eeb12b27ee225f37a8bb6f06c79d151546d9c9875ac25f1738de160038f696540e379a67dd4ef5880b"
    "6c1b1904d2845e61d7ab0e309a55cdf3e908296bd9aa151d20c9b613fc4ba29b9934c8b96a661c")


def test_known_answers():
    derived = credkeys.derive(CRED, SALT, FAST)
    assert derived.keyfile_key.hex() == KAT_KEYFILE_KEY
    assert derived.authenticator.hex() == KAT_AUTHENTICATOR


def test_each_value_is_hkdf_expand_of_the_argon2id_root_under_its_own_label():
    # HKDF-Expand for 32 bytes of SHA-256 is T(1) = HMAC(PRK, info || 0x01) (RFC 5869): computed apart here
    root = bytes(credkeys.argon2id(CRED, SALT, FAST))
    derived = credkeys.derive(CRED, SALT, FAST)
    for label, value in ((credkeys.KEYFILE_LABEL, derived.keyfile_key),
                         (credkeys.AUTHENTICATOR_LABEL, derived.authenticator)):
        assert bytes(value) == hmac.new(root, label + b"\x01", hashlib.sha256).digest()
    assert credkeys.KEYFILE_LABEL != credkeys.AUTHENTICATOR_LABEL
    assert derived.keyfile_key != derived.authenticator
    assert root not in (bytes(derived.keyfile_key), bytes(derived.authenticator))
    assert bytes(derived.authenticator) != CRED[:32]


def test_salt_and_credential_change_both_values():
    base = credkeys.derive(CRED, SALT, FAST)
    for other in (credkeys.derive(CRED, bytes(16), FAST), credkeys.derive(CRED + b"!", SALT, FAST)):
        assert other.keyfile_key != base.keyfile_key and other.authenticator != base.authenticator


def test_v2_keystore_opens_under_the_keyfile_key_and_gives_the_authenticator(tmp_path):
    keys = keystore.MemberKeys.generate()
    path = tmp_path / "keys.enc"
    authenticator = keystore.save(path, keys, bytearray(CRED), FAST)
    blob = path.read_bytes()
    assert blob[4] == keystore.VERSION == 2
    again = keystore.load(path, bytearray(CRED))
    assert again.authenticator == authenticator and len(authenticator) == 32
    salt = blob[14:30]
    derived = credkeys.derive(CRED, salt, FAST)
    assert derived.authenticator == authenticator
    # the key-file key, not Argon2id(credential) as in version 1, is what opens the file
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: PLC0415
    plain = AESGCM(bytes(derived.keyfile_key)).decrypt(blob[30:42], blob[42:], blob[:42])
    assert plain[:32] == bytes(keys._ed_raw)
    again.wipe()
    assert again.authenticator == bytearray(32)


def test_a_v1_file_from_the_old_code_still_opens_without_an_authenticator():
    keys = keystore.unseal(LEGACY_BLOB, bytearray(LEGACY_CREDENTIAL))
    assert keys.ed25519_public.hex() == LEGACY_ED25519_PUBLIC
    assert keys.authenticator is None  # the daemon migrates it (test_credmigrate)


@pytest.mark.parametrize("blob", [LEGACY_BLOB, None], ids=["v1", "v2"])
def test_a_wrong_credential_fails_as_before(blob):
    blob = blob or keystore.seal(keystore.MemberKeys.generate(), CRED, FAST).blob
    with pytest.raises(KeystoreError, match="wrong credential"):
        keystore.unseal(blob, bytearray(b"not the credential"))


def test_an_unknown_version_is_refused():
    blob = bytearray(LEGACY_BLOB)
    blob[4] = 3
    with pytest.raises(KeystoreError, match="bad magic or version"):
        keystore.unseal(bytes(blob), bytearray(LEGACY_CREDENTIAL))
