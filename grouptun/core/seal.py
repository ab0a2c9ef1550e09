"""Seal and open one packet under one sender's key (PROTOCOL.md 5).

Per-packet IV (96 bits; the last 4 bytes of nonce_common are unused)::

    IV = head(12, nonce_common) XOR (0x00000000 || u64(s))

Suite 1, ``aes-256-gcm``: ``ciphertext || tag = AES-256-GCM(enc_key, IV,
plaintext, aad = header)``.

Suite 2, ``aes-256-ctr-hmac-sha256``: ``ciphertext = plaintext XOR
AES-256-CTR(enc_key, IV || 0x00000000)`` and ``tag = head(16,
HMAC-SHA-256(mac_key, header || ciphertext))``; the tag is compared in
constant time before anything is decrypted.

A cipher object is made once per (epoch, sender) and reused for every
packet: the AESGCM / CTR contexts and the keyed HMAC state are built once.
Its ``run`` (set by :func:`sender_cipher`) seals and opens whole runs for
:mod:`grouptun.core.run`: the native ``RunKey`` (:mod:`grouptun.native`), or
:class:`ReferenceRun`, the same calls on this object.

``seal`` / ``open`` (whole bytes) are the plain reference forms;
``seal_at`` / ``open_into`` write into buffers the caller reuses (what
:class:`ReferenceRun` calls per datagram).

Limits: one object must not be used from two threads at once (the CTR
context is reused); a packet is < 2^32 AES blocks (UDP makes it < 2^12).
"""

from __future__ import annotations

import struct
from hmac import compare_digest

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from grouptun.core.keys import SUITE_AES_CTR_HMAC, SUITE_AES_GCM, EpochKeys
from grouptun.core.wire import HEADER_SIZE, OVERHEAD, TAG_SIZE
from grouptun.errors import AuthenticationError

IV_SIZE = 12
_IV = struct.Struct(">IQ")
_CTR_TAIL = bytes(4)  # suite 2: block counter starts at 0 after the 96-bit IV
_SHA256 = hashes.SHA256()


class IvMaker:
    """Computes ``IV(s)`` from the first 12 bytes of nonce_common."""

    __slots__ = ("_hi", "_lo")

    def __init__(self, nonce_common: bytes | bytearray) -> None:
        if len(nonce_common) < IV_SIZE:
            raise ValueError("nonce_common must be at least 12 bytes")
        self._hi, self._lo = _IV.unpack_from(nonce_common, 0)

    def make(self, sequence: int) -> bytes:
        """IV(s); hot paths hold the bound method (cheaper than calling the instance)."""
        return _IV.pack(self._hi, self._lo ^ sequence)

    __call__ = make

    def wipe(self) -> None:
        self._hi = self._lo = 0


class Suite1Cipher:
    """aes-256-gcm for one sender key."""

    __slots__ = ("_aead", "run")
    suite = SUITE_AES_GCM

    def __init__(self, enc_key: bytes | bytearray) -> None:
        self._aead = AESGCM(enc_key)
        self.run = None

    @property
    def aead(self) -> AESGCM:
        """The AES-GCM object, for run-wise callers that hold its bound encrypt_into/decrypt_into."""
        return self._aead

    def seal(self, header: bytes, iv: bytes, plaintext: bytes | bytearray | memoryview) -> bytes:
        """``header || ciphertext || tag``."""
        return header + self._aead.encrypt(iv, plaintext, header)

    def seal_at(self, view: memoryview, off: int, iv: bytes, plaintext: bytes | bytearray | memoryview) -> int:
        """Batch form: the header is already at ``view[off:off + 12]``; returns the packet length."""
        end = off + HEADER_SIZE + len(plaintext) + TAG_SIZE
        self._aead.encrypt_into(iv, plaintext, view[off:off + HEADER_SIZE], view[off + HEADER_SIZE:end])
        return end - off

    def open_into(self, packet: memoryview, iv: bytes, out: memoryview) -> int:
        """Decrypt a whole packet into ``out`` (room for its plaintext); returns the plaintext length.

        Raises AuthenticationError if the tag does not verify (``out`` then holds nothing useful).
        """
        size = len(packet) - OVERHEAD
        try:
            self._aead.decrypt_into(iv, packet[HEADER_SIZE:], packet[:HEADER_SIZE], out[:size])
        except InvalidTag:
            raise AuthenticationError("tag does not verify") from None
        return size

    def open(self, packet: bytes | bytearray | memoryview, iv: bytes) -> bytes:
        """Plaintext of a whole packet (header || ciphertext || tag).

        Raises AuthenticationError if the tag does not verify. The caller
        has checked ``len(packet) >= OVERHEAD``.
        """
        view = memoryview(packet)
        try:
            return self._aead.decrypt(iv, view[HEADER_SIZE:], view[:HEADER_SIZE])
        except InvalidTag:
            raise AuthenticationError("tag does not verify") from None


class Suite2Cipher:
    """aes-256-ctr-hmac-sha256 for one sender key."""

    __slots__ = ("_ctr", "_mac", "run")
    suite = SUITE_AES_CTR_HMAC

    def __init__(self, enc_key: bytes | bytearray, mac_key: bytes | bytearray) -> None:
        self.run = None
        # One CTR context per key, re-pointed with reset_nonce for each packet.
        self._ctr = Cipher(algorithms.AES(enc_key), modes.CTR(bytes(16))).encryptor()
        self._mac = hmac.HMAC(mac_key, _SHA256)

    def _encrypt(self, iv: bytes, plaintext: bytes | bytearray | memoryview) -> bytes:
        if not len(plaintext):
            return b""
        self._ctr.reset_nonce(iv + _CTR_TAIL)
        return self._ctr.update(plaintext)

    def _tag(self, header: bytes | memoryview, ciphertext: bytes | memoryview) -> bytes:
        mac = self._mac.copy()
        mac.update(header)
        mac.update(ciphertext)
        return mac.finalize()[:TAG_SIZE]

    def seal(self, header: bytes, iv: bytes, plaintext: bytes | bytearray | memoryview) -> bytes:
        ciphertext = self._encrypt(iv, plaintext)
        return header + ciphertext + self._tag(header, ciphertext)

    def seal_at(self, view: memoryview, off: int, iv: bytes, plaintext: bytes | bytearray | memoryview) -> int:
        """Batch form: the header is already at ``view[off:off + 12]``; returns the packet length."""
        size = len(plaintext)
        body = off + HEADER_SIZE
        if size:
            self._ctr.reset_nonce(iv + _CTR_TAIL)
            self._ctr.update_into(plaintext, view[body:body + size + TAG_SIZE])  # needs size + 15 of room
        view[body + size:body + size + TAG_SIZE] = self._tag(view[off:body], view[body:body + size])
        return size + OVERHEAD

    def open_into(self, packet: memoryview, iv: bytes, out: memoryview) -> int:
        """Check the tag (constant time), then decrypt into ``out``; ``out`` needs plaintext + 15 bytes of room."""
        end = len(packet) - TAG_SIZE
        mac = self._mac.copy()
        mac.update(packet[:end])
        if not compare_digest(mac.finalize()[:TAG_SIZE], packet[end:]):
            raise AuthenticationError("tag does not verify")
        size = end - HEADER_SIZE
        if size:
            self._ctr.reset_nonce(iv + _CTR_TAIL)
            if len(out) >= size + 15:
                self._ctr.update_into(packet[HEADER_SIZE:end], out[:size + 15])
            else:
                out[:size] = self._ctr.update(packet[HEADER_SIZE:end])
        return size

    def open(self, packet: bytes | bytearray | memoryview, iv: bytes) -> bytes:
        view = memoryview(packet)
        end = len(view) - TAG_SIZE
        mac = self._mac.copy()
        mac.update(view[:end])
        if not compare_digest(mac.finalize()[:TAG_SIZE], view[end:]):
            raise AuthenticationError("tag does not verify")
        return self._encrypt(iv, view[HEADER_SIZE:end])


PacketCipher = Suite1Cipher | Suite2Cipher


class ReferenceRun:
    """The reference implementation of the native ``RunKey`` calls: same signatures, same bytes.

    One ``cryptography`` call per datagram (both suites); headers written with :data:`wire.HEADER`
    and IVs by :class:`IvMaker`. tests/native checks that the C code gives what this gives. The
    caller (:mod:`grouptun.core.run`) has bounded every offset and length already.
    """

    __slots__ = ("_cipher", "_iv")

    def __init__(self, cipher: PacketCipher, iv_maker: IvMaker) -> None:
        self._cipher, self._iv = cipher, iv_maker.make

    def seal_run(self, src, src_offset: int, src_stride: int, out, out_offset: int, out_stride: int, count: int,
                 size: int, last_size: int, head: int, first: int, step: int) -> None:
        src, out = memoryview(src), memoryview(out)
        seal_at, iv = self._cipher.seal_at, self._iv
        last = count - 1
        for j in range(count):
            at, s, base = out_offset + j * out_stride, first + j * step, src_offset + j * src_stride
            _HEAD.pack_into(out, at, head, s)
            seal_at(out, at, iv(s), src[base:base + (size if j != last else last_size)])

    def open_run(self, data, data_offset: int, data_stride: int, out, out_offset: int, out_stride: int,
                 count: int, size: int, last_size: int, first: int, step: int, ok) -> int:
        data, out = memoryview(data), memoryview(out)
        open_into, iv = self._cipher.open_into, self._iv
        good, last = 0, count - 1
        for j in range(count):
            at, dst = data_offset + j * data_stride, out_offset + j * out_stride
            length = size if j != last else last_size
            try:
                open_into(data[at:at + length], iv(first + j * step), out[dst:])
                ok[j] = 1
                good += 1
            except AuthenticationError:
                ok[j] = 0
                out[dst:dst + length - OVERHEAD] = bytes(length - OVERHEAD)
        return good


_HEAD = struct.Struct(">IQ")  # u32(byte0, flags, epoch) || u64(s): the header as the run calls take it


def sender_cipher(keys: EpochKeys, index: int, run_key=None) -> PacketCipher:
    """The cipher object for sender ``index`` of an epoch; ``run_key``: the native RunKey type, or None.

    Its ``run`` seals and opens whole runs: the native RunKey, or :class:`ReferenceRun` on the same keys.
    """
    mac_key = keys.mac_key(index) if keys.suite == SUITE_AES_CTR_HMAC else None
    if keys.suite == SUITE_AES_GCM:
        cipher: PacketCipher = Suite1Cipher(keys.enc_key(index))
    else:
        cipher = Suite2Cipher(keys.enc_key(index), mac_key)
    iv = keys.nonce_common[:IV_SIZE]
    cipher.run = ReferenceRun(cipher, IvMaker(iv)) if run_key is None else run_key(keys.suite, keys.enc_key(index),
                                                                                 mac_key, iv)
    return cipher
