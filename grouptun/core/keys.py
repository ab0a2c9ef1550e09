"""The key schedule (PROTOCOL.md 3) and ``data_id`` (section 2).

::

    PRK          = HKDF-Extract(salt = salt, IKM = SS)
    nonce_common = head(16, SHA-256(PRK))
    ctx          = u8(suite) || group_id || u32(epoch)
    key_check    = HKDF-Expand(PRK, "grouptun/1 check" || ctx, 16)
    enc_key[i]   = HKDF-Expand(PRK, "grouptun/1 key" || ctx || u32(i), 32)
    mac_key[i]   = HKDF-Expand(PRK, "grouptun/1 mac" || ctx || u32(i), 32)   (suite 2)
    exporter_secret = HKDF-Expand(PRK, "grouptun/1 exporter" || ctx, 32)   (section 3.1)

The exporter's own formula and the typed products built on it are in
:mod:`grouptun.core.exporter`. Key material we hold lives in buffers taken from a :class:`SecretMemory`
that the caller passes in (the daemon's is locked, non-dumpable memory,
:mod:`grouptun.secmem`; the default :data:`HEAP` hands out plain
bytearrays, for pure tests), written in place by ``derive_into``, and given
back -- overwritten -- by :meth:`EpochKeys.wipe`. Limits: ``cryptography``
keeps its own copy of a key inside each cipher object (freed, and cleared
by OpenSSL, when the object goes away), and the HMAC / hash ``finalize``
behind PRK and nonce_common returns an immutable ``bytes`` that we copy
into our buffer and drop at once; Python cannot overwrite those.
"""

from __future__ import annotations

import struct
from typing import Protocol

from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

SUITE_AES_GCM = 1
SUITE_AES_CTR_HMAC = 2
SUITES = {SUITE_AES_GCM: "aes-256-gcm", SUITE_AES_CTR_HMAC: "aes-256-ctr-hmac-sha256"}

SECRET_SIZE = 32
SALT_SIZE = 32
GROUP_ID_SIZE = 16
PRK_SIZE = 32
KEY_SIZE = 32
KEY_CHECK_SIZE = 16
DATA_ID_SIZE = 16
NONCE_COMMON_SIZE = 16
EPOCH_MAX = 2**32 - 1
INDEX_MAX = 2**32 - 1

LABEL_DATA_ID = b"grouptun/1 data-id"
LABEL_CHECK = b"grouptun/1 check"
LABEL_KEY = b"grouptun/1 key"
LABEL_MAC = b"grouptun/1 mac"
LABEL_EXPORTER = b"grouptun/1 exporter"
EXPORTER_SECRET_SIZE = 32

_SHA256 = hashes.SHA256()


SecretBuffer = bytearray | memoryview


def wipe(buffer: SecretBuffer | None) -> None:
    """Overwrite a bytearray (or writable memoryview) with zeros in place (no-op for None)."""
    if buffer is not None:
        buffer[:] = bytes(len(buffer))


class SecretMemory(Protocol):
    """Where key material is kept: injected like time and randomness, so the core stays pure.

    ``alloc(size)`` returns a zero-filled writable buffer of exactly ``size``
    bytes; ``free(buffer)`` overwrites it and takes it back (the buffer must
    not be used afterwards). Callable from any thread.
    """

    def alloc(self, size: int) -> SecretBuffer: ...
    def free(self, buffer: SecretBuffer) -> None: ...


class HeapSecrets:
    """Plain bytearrays (the default): wiped on free, but neither locked nor kept out of core dumps."""

    def alloc(self, size: int) -> SecretBuffer:
        return bytearray(size)

    def free(self, buffer: SecretBuffer) -> None:
        wipe(buffer)


HEAP = HeapSecrets()


def data_id(shared_secret: bytes | bytearray) -> bytes:
    """``head(16, SHA-256("grouptun/1 data-id" || SS))``."""
    _check_len("shared_secret", shared_secret, SECRET_SIZE)
    return _sha256(LABEL_DATA_ID, shared_secret)[:DATA_ID_SIZE]


def context(suite: int, group_id: bytes, epoch: int) -> bytes:
    """``ctx = u8(suite) || group_id || u32(epoch)``."""
    if suite not in SUITES:
        raise ValueError(f"unknown suite {suite!r}")
    _check_len("group_id", group_id, GROUP_ID_SIZE)
    if not 0 <= epoch <= EPOCH_MAX:
        raise ValueError(f"epoch {epoch!r} out of u32 range")
    return struct.pack(">B", suite) + bytes(group_id) + struct.pack(">I", epoch)


def derive_prk(shared_secret: bytes | SecretBuffer, salt: bytes | SecretBuffer,
               out: SecretBuffer | None = None) -> SecretBuffer:
    """HKDF-Extract(salt, SS) = HMAC-SHA-256(salt, SS), into ``out`` (a new bytearray if None).

    Done with HMAC directly because ``HKDF.extract`` insists on an
    immutable ``bytes`` salt, and the salt is secret.
    """
    _check_len("shared_secret", shared_secret, SECRET_SIZE)
    _check_len("salt", salt, SALT_SIZE)
    out = bytearray(PRK_SIZE) if out is None else out
    mac = hmac.HMAC(salt, _SHA256)
    mac.update(shared_secret)
    out[:] = mac.finalize()
    return out


def expand(prk: bytes | SecretBuffer, info: bytes, length: int, out: SecretBuffer | None = None) -> SecretBuffer:
    """HKDF-Expand(prk, info, length), into ``out`` (a new bytearray if None)."""
    out = bytearray(length) if out is None else out
    HKDFExpand(_SHA256, length, info).derive_into(prk, out)
    return out


class EpochKeys:
    """Every key of one epoch, derived from PRK on demand.

    Per-sender keys are derived when first asked for (a group may have
    65535 members, most of them silent) and kept until :meth:`wipe`, all in
    buffers of ``secrets``. After ``wipe`` every method raises ValueError
    (a buffer from :data:`HEAP` reads as zeros; one from a locked arena is
    released and raises on use).
    """

    __slots__ = ("suite", "group_id", "epoch", "_ctx", "_prk", "nonce_common", "_enc", "_mac", "_secrets",
                 "_exporter")

    def __init__(self, suite: int, group_id: bytes, epoch: int,
                 shared_secret: bytes | SecretBuffer, salt: bytes | SecretBuffer,
                 secrets: SecretMemory = HEAP) -> None:
        self._ctx = context(suite, group_id, epoch)
        self.suite = suite
        self.group_id = bytes(group_id)
        self.epoch = epoch
        self._secrets = secrets
        self._enc: dict[int, SecretBuffer] = {}
        self._mac: dict[int, SecretBuffer] = {}
        prk = secrets.alloc(PRK_SIZE)
        try:
            derive_prk(shared_secret, salt, prk)
            self.nonce_common = secrets.alloc(NONCE_COMMON_SIZE)
        except BaseException:
            secrets.free(prk)
            raise
        self.nonce_common[:] = _sha256(prk)[:NONCE_COMMON_SIZE]
        self._prk: SecretBuffer | None = prk
        self._exporter: SecretBuffer | None = None

    @property
    def prk(self) -> SecretBuffer:
        if self._prk is None:
            raise ValueError("epoch keys were wiped")
        return self._prk

    def key_check(self) -> bytes:
        return bytes(expand(self.prk, LABEL_CHECK + self._ctx, KEY_CHECK_SIZE))

    def enc_key(self, index: int) -> SecretBuffer:
        key = self._enc.get(index)
        if key is None:
            key = self._enc[index] = self._derive(LABEL_KEY + self._ctx + _u32(index))
        return key

    def mac_key(self, index: int) -> SecretBuffer:
        """The sender's HMAC key (suite 2 only; ValueError for suite 1)."""
        if self.suite != SUITE_AES_CTR_HMAC:
            raise ValueError("suite 1 has no mac_key")
        key = self._mac.get(index)
        if key is None:
            key = self._mac[index] = self._derive(LABEL_MAC + self._ctx + _u32(index))
        return key

    def _derive(self, info: bytes, size: int = KEY_SIZE) -> SecretBuffer:
        prk = self.prk
        key = self._secrets.alloc(size)
        try:
            return expand(prk, info, size, key)
        except BaseException:
            self._secrets.free(key)
            raise

    def exporter_secret(self) -> SecretBuffer:
        """The root of the products handed to applications (PROTOCOL.md 3.1), never a packet key."""
        if self._exporter is None:
            self._exporter = self._derive(LABEL_EXPORTER + self._ctx, EXPORTER_SECRET_SIZE)
        return self._exporter

    def wipe(self) -> None:
        """Overwrite PRK, nonce_common, the exporter secret and every derived key, and give their buffers
        back (idempotent)."""
        if self._prk is None:
            return
        free = self._secrets.free
        free(self._prk)
        self._prk = None
        free(self.nonce_common)
        if self._exporter is not None:
            free(self._exporter)
            self._exporter = None
        for table in (self._enc, self._mac):
            for key in table.values():
                free(key)
            table.clear()


def _sha256(*parts: bytes | SecretBuffer) -> bytes:
    digest = hashes.Hash(_SHA256)
    for part in parts:
        digest.update(part)
    return digest.finalize()


def _u32(value: int) -> bytes:
    if not 0 <= value <= INDEX_MAX:
        raise ValueError(f"member index {value!r} out of u32 range")
    return struct.pack(">I", value)


def _check_len(name: str, value: bytes | SecretBuffer, size: int) -> None:
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise TypeError(f"{name} must be bytes, got {type(value).__name__}")
    if len(value) != size:
        raise ValueError(f"{name} must be {size} bytes, got {len(value)}")
