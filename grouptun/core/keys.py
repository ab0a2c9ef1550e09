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
:mod:`grouptun.core.exporter`. Key material we hold lives in ``bytearray`` objects written by
``derive_into`` so that :meth:`EpochKeys.wipe` can overwrite it. Limits:
``cryptography`` keeps its own copy of a key inside each cipher object (freed,
and cleared by OpenSSL, when the object goes away), and the HMAC / hash
``finalize`` behind PRK and nonce_common returns an immutable ``bytes`` that
we copy into a bytearray and drop at once; Python cannot overwrite those.
"""

from __future__ import annotations

import struct

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


def wipe(buffer: bytearray | None) -> None:
    """Overwrite a bytearray with zeros in place (no-op for None)."""
    if buffer is not None:
        buffer[:] = bytes(len(buffer))


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


def derive_prk(shared_secret: bytes | bytearray, salt: bytes | bytearray) -> bytearray:
    """HKDF-Extract(salt, SS) = HMAC-SHA-256(salt, SS), into a wipeable bytearray.

    Done with HMAC directly because ``HKDF.extract`` insists on an
    immutable ``bytes`` salt, and the salt is secret.
    """
    _check_len("shared_secret", shared_secret, SECRET_SIZE)
    _check_len("salt", salt, SALT_SIZE)
    mac = hmac.HMAC(salt, _SHA256)
    mac.update(shared_secret)
    return bytearray(mac.finalize())


def expand(prk: bytes | bytearray, info: bytes, length: int) -> bytearray:
    out = bytearray(length)
    HKDFExpand(_SHA256, length, info).derive_into(prk, out)
    return out


class EpochKeys:
    """Every key of one epoch, derived from PRK on demand.

    Per-sender keys are derived when first asked for (a group may have
    65535 members, most of them silent) and kept until :meth:`wipe`.
    After ``wipe`` every method raises ValueError.
    """

    __slots__ = ("suite", "group_id", "epoch", "_ctx", "_prk", "nonce_common", "_enc", "_mac",
                 "_exporter")

    def __init__(self, suite: int, group_id: bytes, epoch: int,
                 shared_secret: bytes | bytearray, salt: bytes | bytearray) -> None:
        self._ctx = context(suite, group_id, epoch)
        self.suite = suite
        self.group_id = bytes(group_id)
        self.epoch = epoch
        self._prk: bytearray | None = derive_prk(shared_secret, salt)
        self.nonce_common = bytearray(_sha256(self._prk)[:NONCE_COMMON_SIZE])
        self._enc: dict[int, bytearray] = {}
        self._mac: dict[int, bytearray] = {}
        self._exporter: bytearray | None = None

    @property
    def prk(self) -> bytearray:
        if self._prk is None:
            raise ValueError("epoch keys were wiped")
        return self._prk

    def key_check(self) -> bytes:
        return bytes(expand(self.prk, LABEL_CHECK + self._ctx, KEY_CHECK_SIZE))

    def enc_key(self, index: int) -> bytearray:
        key = self._enc.get(index)
        if key is None:
            key = self._enc[index] = expand(self.prk, LABEL_KEY + self._ctx + _u32(index), KEY_SIZE)
        return key

    def mac_key(self, index: int) -> bytearray:
        """The sender's HMAC key (suite 2 only; ValueError for suite 1)."""
        if self.suite != SUITE_AES_CTR_HMAC:
            raise ValueError("suite 1 has no mac_key")
        key = self._mac.get(index)
        if key is None:
            key = self._mac[index] = expand(self.prk, LABEL_MAC + self._ctx + _u32(index), KEY_SIZE)
        return key

    def exporter_secret(self) -> bytearray:
        """The root of the products handed to applications (PROTOCOL.md 3.1), never a packet key."""
        if self._exporter is None:
            self._exporter = expand(self.prk, LABEL_EXPORTER + self._ctx, EXPORTER_SECRET_SIZE)
        return self._exporter

    def wipe(self) -> None:
        """Overwrite PRK, nonce_common, the exporter secret and every derived key."""
        wipe(self._prk)
        self._prk = None
        wipe(self._exporter)
        self._exporter = None
        wipe(self.nonce_common)
        for table in (self._enc, self._mac):
            for key in table.values():
                wipe(key)
            table.clear()


def _sha256(*parts: bytes | bytearray) -> bytes:
    digest = hashes.Hash(_SHA256)
    for part in parts:
        digest.update(part)
    return digest.finalize()


def _u32(value: int) -> bytes:
    if not 0 <= value <= INDEX_MAX:
        raise ValueError(f"member index {value!r} out of u32 range")
    return struct.pack(">I", value)


def _check_len(name: str, value: bytes | bytearray, size: int) -> None:
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise TypeError(f"{name} must be bytes, got {type(value).__name__}")
    if len(value) != size:
        raise ValueError(f"{name} must be {size} bytes, got {len(value)}")
