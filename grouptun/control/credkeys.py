"""Two independent values from the identification credential.

::

    root          = Argon2id(credential, salt, cost)                  32 bytes
    keyfile_key   = HKDF-Expand(root, "grouptun/1 keyfile key", 32)    opens keys.enc (AES-256-GCM)
    authenticator = HKDF-Expand(root, "grouptun/1 provider authenticator", 32)
                                                                      what the provider checks

The provider sees the authenticator (at enrollment, at every salt fetch)
and stores an Argon2id hash of it; it never sees the credential, the root
or the key-file key. The two outputs are HKDF-Expand of one PRK under
different labels, so one tells nothing about the other: from the
authenticator, the key-file key comes only by guessing the credential, at
one member-side Argon2id per guess -- and that needs the salt too.

The salt (16 random bytes) and the cost are in the keystore header: the
member reads them before it contacts the provider, they stay fixed for the
life of the keystore (a re-sealed keystore keeps them, or the authenticator
changes), and the provider never learns them. A salt derived from group id
and member name would be public and fixed before enrollment, so a provider
could precompute guesses for a member before it ever joined; a random one
in the header cannot be attacked before the key file itself is stolen.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

KEYFILE_LABEL = b"grouptun/1 keyfile key"
AUTHENTICATOR_LABEL = b"grouptun/1 provider authenticator"
SIZE = 32


@dataclass(frozen=True)
class Cost:
    """Argon2id cost; the default follows RFC 9106's second recommendation (64 MiB, t=3)."""

    memory_kib: int = 64 * 1024
    iterations: int = 3
    lanes: int = 4


@dataclass
class Derived:
    """The two values; :meth:`wipe` overwrites them."""

    keyfile_key: bytearray
    authenticator: bytearray

    def wipe(self) -> None:
        wipe(self.keyfile_key)
        wipe(self.authenticator)


def wipe(buf: bytearray) -> None:
    for i in range(len(buf)):
        buf[i] = 0


def argon2id(secret: bytes | bytearray, salt: bytes, cost: Cost) -> bytearray:
    kdf = Argon2id(salt=salt, length=SIZE, iterations=cost.iterations, lanes=cost.lanes,
                   memory_cost=cost.memory_kib)
    return bytearray(kdf.derive(bytes(secret)))


def _expand(root: bytearray, label: bytes) -> bytearray:
    return bytearray(HKDFExpand(hashes.SHA256(), SIZE, label).derive(bytes(root)))


def derive(credential: bytes | bytearray, salt: bytes, cost: Cost) -> Derived:
    """Both values from one Argon2id run (the member pays the KDF once per start)."""
    root = argon2id(credential, salt, cost)
    try:
        return Derived(_expand(root, KEYFILE_LABEL), _expand(root, AUTHENTICATOR_LABEL))
    finally:
        wipe(root)
