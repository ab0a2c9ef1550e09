"""Sealed data (grouptun extension, PROTOCOL.md "Sealed data"): the blob format, both directions.

A blob is ``header || chunk_0 || ... || chunk_{n-1}``::

    header  = "GTSD" | u8 version (1) | group_id (16) | data_id (16) | u32 chunk_size
              | u16 count | count * (u8 len(uid) | uid | wrapped key (1168))
    chunk_i = AES-256-GCM(data_key, nonce = 4 zero bytes || u64 i,
                          aad = "grouptun/1 sealed chunk" || SHA-256(header) || u64 i || u8 final)

Every chunk but the last carries exactly ``chunk_size`` plaintext bytes; the
last (``final`` = 1) carries 0..chunk_size, so an empty file is one empty
final chunk. The index and the final flag in the AAD make reordering,
dropping and truncation fail; the header digest binds every chunk to the
group, the DATA-ID and the recipient list. The data key is fresh per blob
(so counter nonces never repeat under one key) and is wrapped per recipient
with HPKE (X-Wing, :mod:`grouptun.core.capsule`) by the sealing member itself,
to the KEM keys of the signed archive: the provider sees neither the key nor
the plaintext.

Pure: the caller draws the data key and passes bytes in; only HPKE's
encapsulation draws randomness inside ``cryptography`` (as for capsules).
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from grouptun.core import capsule
from grouptun.core.keys import HEAP, SecretBuffer, SecretMemory
from grouptun.errors import SealedDataError

MAGIC = b"GTSD"
VERSION = 1
KEY_SIZE = 32
TAG_SIZE = 16
CHUNK_SIZE = 64 * 1024  # what `grouptun seal` writes; readers take the header's
CHUNK_MIN, CHUNK_MAX = 16, 1024 * 1024
MAX_RECIPIENTS = 1024
CHUNK_LABEL = b"grouptun/1 sealed chunk"
_FIXED = struct.Struct(">4sB16s16sIH")


@dataclass(frozen=True)
class Header:
    group_id: bytes
    data_id: bytes
    chunk_size: int
    recipients: tuple[tuple[str, bytes], ...]  # (member name, wrapped data key), in the order written

    def __post_init__(self) -> None:
        if len(self.group_id) != capsule.GROUP_ID_SIZE or len(self.data_id) != 16:
            raise SealedDataError("group_id and data_id must be 16 bytes each")
        if not CHUNK_MIN <= self.chunk_size <= CHUNK_MAX:
            raise SealedDataError(f"chunk size must be {CHUNK_MIN}..{CHUNK_MAX} bytes")
        if not 1 <= len(self.recipients) <= MAX_RECIPIENTS:
            raise SealedDataError(f"a blob has 1..{MAX_RECIPIENTS} recipients")
        names = [name for name, _ in self.recipients]
        if len(set(names)) != len(names):
            raise SealedDataError("a recipient is listed twice")

    def to_bytes(self) -> bytes:
        out = [_FIXED.pack(MAGIC, VERSION, self.group_id, self.data_id, self.chunk_size, len(self.recipients))]
        for name, wrapped in self.recipients:
            raw = name.encode("utf-8")
            out.append(bytes([len(raw)]) + raw + wrapped)
        return b"".join(out)

    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.recipients)

    def wrapped_for(self, name: str) -> bytes:
        for listed, wrapped in self.recipients:
            if listed == name:
                return wrapped
        raise SealedDataError(f"this blob is not sealed to {name!r}")


def parse_header(data: bytes) -> tuple[Header, int]:
    """The header at the start of ``data`` and its length; SealedDataError if ``data`` does not begin with one."""
    if len(data) < _FIXED.size:
        raise SealedDataError("blob too short for a sealed-data header")
    magic, version, group_id, data_id, chunk_size, count = _FIXED.unpack_from(data)
    if magic != MAGIC:
        raise SealedDataError("not sealed data (bad magic)")
    if version != VERSION:
        raise SealedDataError(f"sealed-data version {version} unknown (this build reads {VERSION})")
    offset, recipients = _FIXED.size, []
    for _ in range(count):
        if offset >= len(data):
            raise SealedDataError("sealed-data header truncated")
        size = data[offset]
        end = offset + 1 + size + capsule.CAPSULE_SIZE
        if size == 0 or end > len(data):
            raise SealedDataError("sealed-data header truncated or malformed")
        try:
            name = data[offset + 1:offset + 1 + size].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise SealedDataError("recipient name is not UTF-8") from exc
        recipients.append((name, bytes(data[offset + 1 + size:end])))
        offset = end
    return Header(group_id, data_id, chunk_size, tuple(recipients)), offset


def wrap_info(group_id: bytes, data_id: bytes, uid: str) -> bytes:
    """HPKE info of a wrapped data key: the capsule layout with label and DATA-ID in the epoch's place."""
    raw = uid.encode("utf-8")
    if not 1 <= len(raw) <= capsule.UID_MAX_BYTES:
        raise SealedDataError(f"member name must be 1..{capsule.UID_MAX_BYTES} UTF-8 bytes")
    return b"grouptun/1 sealed key" + group_id + data_id + bytes([len(raw)]) + raw


def wrap_key(kem_public: bytes, group_id: bytes, data_id: bytes, uid: str, data_key: bytes | SecretBuffer) -> bytes:
    return capsule.seal(kem_public, wrap_info(group_id, data_id, uid), bytes(data_key))


def unwrap_key(private: capsule.KemPrivateKey, header: Header, uid: str,
               secrets: SecretMemory = HEAP) -> SecretBuffer:
    """The data key wrapped for ``uid``; SealedDataError if it is not there or does not open with ``private``."""
    try:
        return capsule.open_sealed(private, wrap_info(header.group_id, header.data_id, uid),
                                   header.wrapped_for(uid), secrets)
    except capsule.CapsuleError as exc:
        raise SealedDataError("the data key does not open with this member's key (another key file?)") from exc


def header_size(names: list[str] | tuple[str, ...]) -> int:
    """The length of a header listing ``names`` (wrapped keys have a fixed size)."""
    return _FIXED.size + sum(1 + len(n.encode("utf-8")) + capsule.CAPSULE_SIZE for n in names)


def blob_size(header_size: int, plaintext_size: int, chunk_size: int = CHUNK_SIZE) -> int:
    chunks = max(1, -(-plaintext_size // chunk_size))
    return header_size + plaintext_size + chunks * TAG_SIZE


def _aad(header_digest: bytes, index: int, final: bool) -> bytes:
    return CHUNK_LABEL + header_digest + struct.pack(">QB", index, int(final))


def _nonce(index: int) -> bytes:
    return b"\0\0\0\0" + struct.pack(">Q", index)


class ChunkSealer:
    """Seals one chunk at a time, in order; the caller says which chunk is the final one."""

    def __init__(self, data_key: bytes | SecretBuffer, header: bytes) -> None:
        self._aead = AESGCM(bytes(data_key))
        self._digest = hashlib.sha256(header).digest()
        self.index, self.closed = 0, False

    def seal(self, plaintext: bytes, final: bool) -> bytes:
        if self.closed:
            raise SealedDataError("the final chunk was sealed already")
        out = self._aead.encrypt(_nonce(self.index), plaintext, _aad(self._digest, self.index, final))
        self.index += 1
        self.closed = final
        return out


class StreamOpener:
    """Opens the chunk stream that follows the header, fed in pieces of any size.

    ``feed`` returns the plaintext of every chunk known not to be the last
    (a chunk is the last only when no byte follows it, so one full chunk is
    held back); ``finish`` opens the last one as final. Any failure is a
    SealedDataError saying which chunk; a stream without its final chunk
    fails at ``finish`` ("truncated").
    """

    def __init__(self, data_key: bytes | SecretBuffer, header_bytes: bytes, chunk_size: int) -> None:
        self._aead = AESGCM(bytes(data_key))
        self._digest = hashlib.sha256(header_bytes).digest()
        self._block = chunk_size + TAG_SIZE
        self._pending = bytearray()
        self.index = 0

    def _open(self, chunk: bytes, final: bool) -> bytes:
        try:
            plain = self._aead.decrypt(_nonce(self.index), chunk, _aad(self._digest, self.index, final))
        except InvalidTag as exc:
            what = "truncated or its last chunk altered" if final else "altered, reordered or truncated"
            raise SealedDataError(f"sealed data {what} (chunk {self.index} does not authenticate)") from exc
        self.index += 1
        return plain

    def feed(self, data: bytes) -> bytes:
        self._pending += data
        out = []
        while len(self._pending) > self._block:  # strictly more: the chunk is not the last
            out.append(self._open(bytes(self._pending[:self._block]), False))
            del self._pending[:self._block]
        return b"".join(out)

    def finish(self) -> bytes:
        if len(self._pending) < TAG_SIZE:
            raise SealedDataError(f"sealed data truncated (chunk {self.index} incomplete)")
        plain = self._open(bytes(self._pending), True)
        self._pending.clear()
        return plain
