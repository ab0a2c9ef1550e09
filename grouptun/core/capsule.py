"""Capsules and sealed salts: HPKE base mode with X-Wing (PROTOCOL.md 2).

Suite: KEM ``MLKEM768_X25519`` (0x647A), KDF ``HKDF_SHA256``, AEAD
``AES_256_GCM``. A capsule is ``enc || ciphertext`` as
``cryptography``'s ``hpke.Suite.encrypt`` returns it: 1168 bytes for a
32-byte plaintext. Both the provider (sealing) and the daemon (opening)
use this module, so the info strings exist exactly once.

Limits: the member name (uid) is 1..64 bytes of UTF-8; plaintexts are the
32-byte shared secret or salt. Sealing draws its randomness inside
``cryptography`` (the KEM's encapsulation); that is the one place the core
lets a library use the CSPRNG, because HPKE offers no way to pass it in.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hpke, serialization
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519

from grouptun.core.keys import HEAP, SecretBuffer, SecretMemory
from grouptun.errors import CapsuleError

MLKEM768_PUBLIC_SIZE = 1184
X25519_PUBLIC_SIZE = 32
KEM_PUBLIC_SIZE = MLKEM768_PUBLIC_SIZE + X25519_PUBLIC_SIZE  # 1216
MLKEM_SEED_SIZE = 64
X25519_PRIVATE_SIZE = 32
SECRET_SIZE = 32
CAPSULE_SIZE = 1168
GROUP_ID_SIZE = 16
UID_MAX_BYTES = 64

CAPSULE_LABEL = b"grouptun/1 capsule"
SALT_LABEL = b"grouptun/1 salt"

_SUITE = hpke.Suite(hpke.KEM.MLKEM768_X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)


def _uid_bytes(uid: str) -> bytes:
    raw = uid.encode("utf-8")
    if not 1 <= len(raw) <= UID_MAX_BYTES:
        raise CapsuleError(f"member name must be 1..{UID_MAX_BYTES} UTF-8 bytes, got {len(raw)}")
    return raw


def _info(label: bytes, group_id: bytes, epoch: int, uid: str) -> bytes:
    if len(group_id) != GROUP_ID_SIZE:
        raise CapsuleError(f"group_id must be {GROUP_ID_SIZE} bytes, got {len(group_id)}")
    if not 0 <= epoch < 2**32:
        raise CapsuleError(f"epoch {epoch} out of u32 range")
    raw = _uid_bytes(uid)
    return label + group_id + struct.pack(">IB", epoch, len(raw)) + raw


def capsule_info(group_id: bytes, epoch: int, uid: str) -> bytes:
    """``"grouptun/1 capsule" || group_id || u32(epoch) || u8(len(uid)) || uid``."""
    return _info(CAPSULE_LABEL, group_id, epoch, uid)


def salt_info(group_id: bytes, epoch: int, uid: str) -> bytes:
    """Same layout as :func:`capsule_info` with the label ``"grouptun/1 salt"``."""
    return _info(SALT_LABEL, group_id, epoch, uid)


@dataclass(frozen=True)
class KemPrivateKey:
    """A member's hybrid KEM private key, kept as its two seeds.

    ``mlkem_seed`` (64 bytes) and ``x25519_private`` (32 bytes) are what a
    keystore stores (encrypted); everything else is derived from them.
    """

    mlkem_seed: bytes | SecretBuffer
    x25519_private: bytes | SecretBuffer

    def __post_init__(self) -> None:
        if len(self.mlkem_seed) != MLKEM_SEED_SIZE:
            raise CapsuleError(f"ML-KEM seed must be {MLKEM_SEED_SIZE} bytes")
        if len(self.x25519_private) != X25519_PRIVATE_SIZE:
            raise CapsuleError(f"X25519 private key must be {X25519_PRIVATE_SIZE} bytes")

    @classmethod
    def from_random(cls, random_bytes: bytes) -> "KemPrivateKey":
        """Build a key from 96 random bytes the caller drew (seed || x25519)."""
        if len(random_bytes) != MLKEM_SEED_SIZE + X25519_PRIVATE_SIZE:
            raise CapsuleError("need 96 random bytes for a KEM key")
        return cls(random_bytes[:MLKEM_SEED_SIZE], random_bytes[MLKEM_SEED_SIZE:])

    def _parts(self) -> tuple[mlkem.MLKEM768PrivateKey, x25519.X25519PrivateKey]:
        return (
            mlkem.MLKEM768PrivateKey.from_seed_bytes(self.mlkem_seed),
            x25519.X25519PrivateKey.from_private_bytes(self.x25519_private),
        )

    def hpke_key(self) -> hpke.MLKEM768X25519PrivateKey:
        return hpke.MLKEM768X25519PrivateKey(*self._parts())

    def public_bytes(self) -> bytes:
        """The 1216-byte wire form: ML-KEM-768 public key || X25519 public key."""
        ml, xk = self._parts()
        raw = serialization.Encoding.Raw, serialization.PublicFormat.Raw
        return ml.public_key().public_bytes(*raw) + xk.public_key().public_bytes(*raw)


def load_kem_public(public: bytes) -> hpke.MLKEM768X25519PublicKey:
    """Parse the 1216-byte wire form; raises CapsuleError if it is not one."""
    if len(public) != KEM_PUBLIC_SIZE:
        raise CapsuleError(f"KEM public key must be {KEM_PUBLIC_SIZE} bytes, got {len(public)}")
    try:
        ml = mlkem.MLKEM768PublicKey.from_public_bytes(public[:MLKEM768_PUBLIC_SIZE])
        xk = x25519.X25519PublicKey.from_public_bytes(public[MLKEM768_PUBLIC_SIZE:])
    except ValueError as exc:
        raise CapsuleError(f"invalid KEM public key: {exc}") from exc
    return hpke.MLKEM768X25519PublicKey(ml, xk)


def seal(kem_public: bytes, info: bytes, plaintext: bytes) -> bytes:
    """Seal ``plaintext`` (32 bytes) for the holder of ``kem_public``."""
    if len(plaintext) != SECRET_SIZE:
        raise CapsuleError(f"capsule plaintext must be {SECRET_SIZE} bytes")
    return _SUITE.encrypt(plaintext, load_kem_public(kem_public), info=info)


def open_sealed(private: KemPrivateKey, info: bytes, sealed: bytes, secrets: SecretMemory = HEAP) -> SecretBuffer:
    """Open a capsule or sealed salt; returns a buffer of ``secrets`` that the caller frees there.

    HPKE has no decrypt-into: its ``bytes`` plaintext is copied into the
    buffer and dropped at once, but cannot be overwritten.
    """
    if len(sealed) != CAPSULE_SIZE:
        raise CapsuleError(f"capsule must be {CAPSULE_SIZE} bytes, got {len(sealed)}")
    try:
        plaintext = _SUITE.decrypt(sealed, private.hpke_key(), info=info)
    except (InvalidTag, ValueError) as exc:
        raise CapsuleError("capsule does not open with this member's key") from exc
    if len(plaintext) != SECRET_SIZE:
        raise CapsuleError("capsule plaintext has the wrong size")
    out = secrets.alloc(SECRET_SIZE)
    out[:] = plaintext
    return out
