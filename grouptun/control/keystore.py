"""The member's long-term private keys at rest.

One file (mode 0600) holds the Ed25519 signing key and the hybrid KEM key
(ML-KEM-768 seed + X25519), encrypted with AES-256-GCM under the key-file
key that :mod:`grouptun.control.credkeys` derives from the identification
credential (Argon2id, then HKDF-Expand with its own label; the same run
gives the provider authenticator, :attr:`MemberKeys.authenticator`).
Without the credential the file is useless; with a wrong one it fails to
open and nothing is returned.

Layout (all authenticated: the header is the AAD)::

    magic "GTKS" | u8 version | u32 memory KiB | u32 iterations | u8 lanes
    | salt (16) | nonce (12) | AES-GCM(ed25519 (32) || mlkem seed (64) || x25519 (32)) + tag (16)

Version 2: the AES key is the key-file key. Version 1 (written before the
credential was split): the AES key is Argon2id(credential) itself, and the
member sent the credential to the provider; such a file is still read
(:attr:`MemberKeys.authenticator` is then None) and
:mod:`grouptun.control.credmigrate` replaces it at the next start.

Limits: key material inside ``cryptography``'s own objects (the Ed25519
key, the HPKE key made per capsule) cannot be overwritten from Python; what
this module holds (the decrypted blob, the Ed25519 and KEM seeds) lives in
buffers of the :class:`~grouptun.core.keys.SecretMemory` passed to
:func:`load` (the daemon's locked arena, :mod:`grouptun.secmem`) that
:meth:`MemberKeys.wipe` overwrites and gives back; the derived file key is a
bytearray wiped after use. Argon2id cost is read from the file
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

from grouptun.control import credkeys
from grouptun.core.capsule import KemPrivateKey
from grouptun.control.credkeys import Cost as KdfCost
from grouptun.core.keys import HEAP, SecretBuffer, SecretMemory
from grouptun.errors import KeystoreError, KeystoreLocked

MAGIC = b"GTKS"
VERSION = 2
LEGACY_VERSION = 1  # the credential itself was the Argon2id input of the AES key and the provider's secret
_HEADER = struct.Struct(">4sBIIB16s12s")
PLAINTEXT_SIZE = 32 + 64 + 32
FILE_SIZE = _HEADER.size + PLAINTEXT_SIZE + 16


DEFAULT_COST = KdfCost()
MAX_MEMORY_KIB = 1024 * 1024
MAX_ITERATIONS = 64


class MemberKeys:
    """The two private keys in memory; :meth:`wipe` overwrites what can be overwritten.

    ``authenticator``: what the member shows the provider, derived with the
    key-file key when the keystore was opened; None for keys just generated
    or read from a version-1 file. The seeds are copied into buffers of
    ``secrets``; the caller wipes what it passed in.
    """

    def __init__(self, ed25519_raw: bytes | SecretBuffer, kem: KemPrivateKey,
                 authenticator: bytearray | None = None, secrets: SecretMemory = HEAP) -> None:
        self._secrets = secrets
        self._ed_raw = _hold(secrets, ed25519_raw)
        self.kem = KemPrivateKey(_hold(secrets, kem.mlkem_seed), _hold(secrets, kem.x25519_private))
        self.signing_key = Ed25519PrivateKey.from_private_bytes(self._ed_raw)
        self.authenticator = authenticator
        self._wiped = False

    @classmethod
    def generate(cls) -> "MemberKeys":
        """Fresh keys from the kernel CSPRNG."""
        seed = bytearray(os.urandom(32 + 96))
        view = memoryview(seed)  # slices of a view copy nothing
        try:
            return cls(view[:32], KemPrivateKey(view[32:96], view[96:]))
        finally:
            view.release()
            _wipe(seed)

    @property
    def ed25519_public(self) -> bytes:
        raw = serialization.Encoding.Raw, serialization.PublicFormat.Raw
        return self.signing_key.public_key().public_bytes(*raw)

    @property
    def kem_public(self) -> bytes:
        return self.kem.public_bytes()

    def _plaintext(self) -> bytearray:
        plain = bytearray(PLAINTEXT_SIZE)  # filled in place: no unwiped intermediate concatenations
        plain[:32], plain[32:96], plain[96:] = self._ed_raw, self.kem.mlkem_seed, self.kem.x25519_private
        return plain

    def wipe(self) -> None:
        """Overwrite the seeds this object holds and give their buffers back (idempotent)."""
        if self._wiped:
            return
        self._wiped = True
        for part in (self._ed_raw, self.kem.mlkem_seed, self.kem.x25519_private):
            self._secrets.free(part)
        if self.authenticator is not None:
            _wipe(self.authenticator)


def _hold(secrets: SecretMemory, value: bytes | SecretBuffer) -> SecretBuffer:
    buffer = secrets.alloc(len(value))
    buffer[:] = value
    return buffer


_wipe = credkeys.wipe


@dataclass
class Sealed:
    """A keystore's file contents and the authenticator derived with its key (the caller wipes it)."""

    blob: bytes
    authenticator: bytearray


def seal(keys: MemberKeys, credential: bytes | bytearray, cost: KdfCost | None = None) -> Sealed:
    """The version-2 file contents for ``keys`` under ``credential`` (cost: DEFAULT_COST), fresh salt."""
    cost = cost or DEFAULT_COST
    if not credential:
        raise KeystoreError("empty credential")
    salt, nonce = os.urandom(16), os.urandom(12)
    header = _HEADER.pack(MAGIC, VERSION, cost.memory_kib, cost.iterations, cost.lanes, salt, nonce)
    derived = credkeys.derive(credential, salt, cost)
    plain = keys._plaintext()  # noqa: SLF001 - the keystore is the one reader
    try:
        blob = header + AESGCM(bytes(derived.keyfile_key)).encrypt(nonce, plain, header)
        return Sealed(blob, bytearray(derived.authenticator))
    finally:
        derived.wipe()
        _wipe(plain)


def cost_of(blob: bytes) -> KdfCost:
    """The Argon2id cost a keystore blob names; KeystoreError if malformed or out of bounds."""
    if len(blob) != FILE_SIZE:
        raise KeystoreError(f"keystore has {len(blob)} bytes, expected {FILE_SIZE}")
    magic, version, mem, iters, lanes, _salt, _nonce = _HEADER.unpack_from(blob)
    if magic != MAGIC or version not in (VERSION, LEGACY_VERSION):
        raise KeystoreError("not a grouptun keystore (bad magic or version)")
    if not (8 * lanes <= mem <= MAX_MEMORY_KIB and 1 <= iters <= MAX_ITERATIONS and 1 <= lanes <= 16):
        raise KeystoreError("keystore KDF parameters out of bounds")
    return KdfCost(mem, iters, lanes)


def _file_key(blob: bytes, credential: bytes | bytearray) -> tuple[bytearray, bytearray | None]:
    """(AES key, authenticator or None for a version-1 file)."""
    cost = cost_of(blob)
    _magic, version, _mem, _iters, _lanes, salt, _nonce = _HEADER.unpack_from(blob)
    if version == LEGACY_VERSION:
        return credkeys.argon2id(credential, salt, cost), None
    derived = credkeys.derive(credential, salt, cost)
    return derived.keyfile_key, derived.authenticator


def unseal(blob: bytes, credential: bytes | bytearray, secrets: SecretMemory = HEAP) -> MemberKeys:
    """Decrypt a keystore blob (the keys held in ``secrets``); KeystoreError if corrupt or the credential is wrong."""
    key, authenticator = _file_key(blob, credential)
    nonce = _HEADER.unpack_from(blob)[-1]
    plain = secrets.alloc(PLAINTEXT_SIZE)
    try:
        try:
            AESGCM(bytes(key)).decrypt_into(nonce, blob[_HEADER.size:], blob[:_HEADER.size], plain)
        except InvalidTag:
            if authenticator is not None:
                _wipe(authenticator)
            raise KeystoreLocked("keystore does not open: wrong credential or corrupted file") from None
        finally:
            _wipe(key)
        view = memoryview(plain)  # slices of a view copy nothing
        try:
            return MemberKeys(view[:32], KemPrivateKey(view[32:96], view[96:]), authenticator, secrets)
        finally:
            view.release()
    finally:
        secrets.free(plain)


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
    sync_dir(path)


def sync_dir(path: Path) -> None:
    """fsync the directory holding ``path``, so a rename or unlink in it survives a crash."""
    dir_fd = os.open(Path(path).parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def save(path: Path, keys: MemberKeys, credential: bytes | bytearray, cost: KdfCost | None = None) -> bytearray:
    """Encrypt and store ``keys`` at ``path`` with mode 0600; returns the authenticator (caller wipes)."""
    sealed = seal(keys, credential, cost)
    try:
        write_atomic(Path(path), sealed.blob, 0o600)
    except OSError as exc:
        _wipe(sealed.authenticator)
        raise KeystoreError(f"cannot write keystore {path}: {exc.strerror}") from exc
    return sealed.authenticator


def load(path: Path, credential: bytes | bytearray, secrets: SecretMemory = HEAP) -> MemberKeys:
    """Read and decrypt the keystore (the keys held in ``secrets``); refuses a file others can read or write."""
    return unseal(read(path), credential, secrets)


def read(path: Path) -> bytes:
    """The keystore file's bytes; refuses a file others can read or write."""
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
        return os.read(fd, FILE_SIZE + 1)
    finally:
        os.close(fd)
