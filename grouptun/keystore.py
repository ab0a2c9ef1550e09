"""The member's long-term private keys at rest.

One file (mode 0600) holds the Ed25519 signing key and the hybrid KEM key
(ML-KEM-768 seed + X25519), encrypted with AES-256-GCM under a key that
Argon2id derives from the identification credential. Without the
credential the file is useless; with a wrong one it fails to open and
nothing is returned.

Layout (all authenticated: the header is the AAD)::

    magic "GTKS" | u8 version=1 | u32 memory KiB | u32 iterations | u8 lanes
    | salt (16) | nonce (12) | AES-GCM(ed25519 (32) || mlkem seed (64) || x25519 (32)) + tag (16)

Limits: key material inside ``cryptography``'s own objects (the Ed25519
key, the HPKE key made per capsule) cannot be overwritten from Python; what
this module holds (the decrypted blob, the derived key, the Ed25519 and KEM
seeds) lives in bytearrays that :meth:`MemberKeys.wipe` overwrites. Argon2id cost is read from the file
but bounded, so a crafted file cannot make ``load`` allocate gigabytes.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

from grouptun.core.capsule import KemPrivateKey
from grouptun.errors import KeystoreError, KeystoreLocked

MAGIC = b"GTKS"
VERSION = 1
_HEADER = struct.Struct(">4sBIIB16s12s")
PLAINTEXT_SIZE = 32 + 64 + 32
FILE_SIZE = _HEADER.size + PLAINTEXT_SIZE + 16


@dataclass(frozen=True)
class KdfCost:
    """Argon2id cost; the default follows RFC 9106's second recommendation (64 MiB, t=3)."""

    memory_kib: int = 64 * 1024
    iterations: int = 3
    lanes: int = 4


DEFAULT_COST = KdfCost()
MAX_MEMORY_KIB = 1024 * 1024
MAX_ITERATIONS = 64


class MemberKeys:
    """The two private keys in memory; :meth:`wipe` overwrites what can be overwritten."""

    def __init__(self, ed25519_raw: bytes | bytearray, kem: KemPrivateKey) -> None:
        self._ed_raw = bytearray(ed25519_raw)
        self.signing_key = Ed25519PrivateKey.from_private_bytes(bytes(self._ed_raw))
        self.kem = kem

    @classmethod
    def generate(cls) -> "MemberKeys":
        """Fresh keys from the kernel CSPRNG."""
        seed = bytearray(os.urandom(32 + 96))
        try:
            return cls(seed[:32], KemPrivateKey(seed[32:96], seed[96:]))  # slices are new bytearrays
        finally:
            _wipe(seed)

    @property
    def ed25519_public(self) -> bytes:
        raw = serialization.Encoding.Raw, serialization.PublicFormat.Raw
        return self.signing_key.public_key().public_bytes(*raw)

    @property
    def kem_public(self) -> bytes:
        return self.kem.public_bytes()

    def _plaintext(self) -> bytearray:
        return bytearray(self._ed_raw) + self.kem.mlkem_seed + self.kem.x25519_private

    def wipe(self) -> None:
        """Overwrite the seeds this object holds (the KEM seeds are bytearrays for this reason)."""
        _wipe(self._ed_raw)
        for part in (self.kem.mlkem_seed, self.kem.x25519_private):
            if isinstance(part, bytearray):
                _wipe(part)


def _wipe(buf: bytearray) -> None:
    for i in range(len(buf)):
        buf[i] = 0


def _derive(credential: bytes | bytearray, salt: bytes, cost: KdfCost) -> bytearray:
    kdf = Argon2id(salt=salt, length=32, iterations=cost.iterations, lanes=cost.lanes,
                   memory_cost=cost.memory_kib)
    return bytearray(kdf.derive(bytes(credential)))


def seal(keys: MemberKeys, credential: bytes | bytearray, cost: KdfCost | None = None) -> bytes:
    """The encrypted file contents for ``keys`` under ``credential`` (cost: DEFAULT_COST)."""
    cost = cost or DEFAULT_COST
    if not credential:
        raise KeystoreError("empty credential")
    salt, nonce = os.urandom(16), os.urandom(12)
    header = _HEADER.pack(MAGIC, VERSION, cost.memory_kib, cost.iterations, cost.lanes, salt, nonce)
    key = _derive(credential, salt, cost)
    plain = keys._plaintext()  # noqa: SLF001 - the keystore is the one reader
    try:
        return header + AESGCM(bytes(key)).encrypt(nonce, bytes(plain), header)
    finally:
        _wipe(key)
        _wipe(plain)


def unseal(blob: bytes, credential: bytes | bytearray) -> MemberKeys:
    """Decrypt a keystore blob; KeystoreError if corrupt or the credential is wrong."""
    if len(blob) != FILE_SIZE:
        raise KeystoreError(f"keystore has {len(blob)} bytes, expected {FILE_SIZE}")
    magic, version, mem, iters, lanes, salt, nonce = _HEADER.unpack_from(blob)
    if magic != MAGIC or version != VERSION:
        raise KeystoreError("not a grouptun keystore (bad magic or version)")
    if not (8 * lanes <= mem <= MAX_MEMORY_KIB and 1 <= iters <= MAX_ITERATIONS and 1 <= lanes <= 16):
        raise KeystoreError("keystore KDF parameters out of bounds")
    key = _derive(credential, salt, KdfCost(mem, iters, lanes))
    try:
        plain = bytearray(AESGCM(bytes(key)).decrypt(nonce, blob[_HEADER.size:], blob[:_HEADER.size]))
    except InvalidTag:
        raise KeystoreLocked("keystore does not open: wrong credential or corrupted file") from None
    finally:
        _wipe(key)
    try:
        return MemberKeys(plain[:32], KemPrivateKey(plain[32:96], plain[96:]))  # bytearray slices: wipeable
    finally:
        _wipe(plain)


def write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to ``path`` via a same-directory temp file, fsync and rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)  # the umask must not widen or narrow what we ask for
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    try:
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def save(path: Path, keys: MemberKeys, credential: bytes | bytearray, cost: KdfCost | None = None) -> None:
    """Encrypt and store ``keys`` at ``path`` with mode 0600."""
    try:
        write_atomic(Path(path), seal(keys, credential, cost), 0o600)
    except OSError as exc:
        raise KeystoreError(f"cannot write keystore {path}: {exc.strerror}") from exc


def load(path: Path, credential: bytes | bytearray) -> MemberKeys:
    """Read and decrypt the keystore; refuses a file others can read or write."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError as exc:
        raise KeystoreError(f"cannot open keystore {path}: {exc.strerror}") from exc
    try:
        st = os.fstat(fd)
        if st.st_mode & 0o077:
            raise KeystoreError(f"keystore {path} has mode {st.st_mode & 0o777:o}; must be 0600")
        if st.st_uid != os.geteuid():
            raise KeystoreError(f"keystore {path} is not owned by this user")
        blob = os.read(fd, FILE_SIZE + 1)
    finally:
        os.close(fd)
    return unseal(blob, credential)
