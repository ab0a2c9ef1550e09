"""The packet header, and the only place that knows its layout (PROTOCOL.md 5).

::

    0        1        2                4                               12
    +--------+--------+----------------+-------------------------------+
    |0x1|type| flags  | epoch (u16)    | stream sequence s (u64)       |
    +--------+--------+----------------+-------------------------------+
    | ciphertext (same length as the plaintext) ...  | tag (16 bytes)  |
    +------------------------------------------------+-----------------+

All integers big-endian. The whole header is the AEAD's associated data
(suite 1) or the start of the HMAC input (suite 2), so :func:`encode` output
and the received bytes are used as they are, never re-encoded.

:func:`decode` checks the length first (a datagram shorter than header plus
tag is dropped before anything else is read), then version, type and flags.
Every failure is one :class:`~grouptun.errors.WireFormatError` whose
``reason`` attribute is one of :data:`REASON_SHORT`, :data:`REASON_TYPE`,
:data:`REASON_FLAGS`, so the session can count it without string parsing.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from grouptun.errors import WireFormatError

VERSION = 1
TYPE_DATA = 1
TYPE_KEEPALIVE = 2
TYPES = frozenset((TYPE_DATA, TYPE_KEEPALIVE))

OFFSET_VERSION_TYPE = 0
OFFSET_FLAGS = 1
OFFSET_EPOCH = 2
OFFSET_SEQUENCE = 4
HEADER_SIZE = 12
TAG_SIZE = 16
OVERHEAD = HEADER_SIZE + TAG_SIZE  # 28
MIN_DATAGRAM = OVERHEAD
# A keepalive's plaintext is u16(j), the index of the member it is sent to (PROTOCOL.md 5): a copy
# of it sent to another member names the wrong index there.
KEEPALIVE_BODY = struct.Struct(">H")
KEEPALIVE_SIZE = OVERHEAD + KEEPALIVE_BODY.size  # 30

EPOCH_WIRE_MASK = 0xFFFF
SEQUENCE_MAX = 2**64 - 1

# byte 0 of the two valid packet kinds, precomputed for the receive path
BYTE0_DATA = (VERSION << 4) | TYPE_DATA  # 0x11
BYTE0_KEEPALIVE = (VERSION << 4) | TYPE_KEEPALIVE  # 0x12

HEADER = struct.Struct(">BBHQ")  # byte0, flags, epoch u16, s u64
assert HEADER.size == HEADER_SIZE

REASON_SHORT = "short"
REASON_TYPE = "version_type"
REASON_FLAGS = "flags"


class Header(NamedTuple):
    """A decoded header. ``epoch`` is the wire value (epoch mod 2^16)."""

    type: int
    epoch: int
    sequence: int
    flags: int = 0


def wire_epoch(epoch: int) -> int:
    """The u16 that stands for ``epoch`` on the wire."""
    return epoch & EPOCH_WIRE_MASK


def _fail(reason: str, message: str) -> WireFormatError:
    exc = WireFormatError(message)
    exc.reason = reason  # type: ignore[attr-defined]
    return exc


def encode(header: Header) -> bytes:
    """The 12 header bytes; raises WireFormatError on out-of-range fields."""
    if header.type not in TYPES:
        raise _fail(REASON_TYPE, f"unknown packet type {header.type!r}")
    if header.flags != 0:
        raise _fail(REASON_FLAGS, "flags must be 0 in protocol version 1")
    if not 0 <= header.epoch <= EPOCH_WIRE_MASK:
        raise WireFormatError(f"wire epoch {header.epoch!r} out of u16 range")
    if not 0 <= header.sequence <= SEQUENCE_MAX:
        raise WireFormatError(f"stream sequence {header.sequence!r} out of u64 range")
    return HEADER.pack((VERSION << 4) | header.type, 0, header.epoch, header.sequence)


def keepalive_body(receiver_index: int) -> bytes:
    """The plaintext of a keepalive sent to the member with index ``receiver_index``."""
    return KEEPALIVE_BODY.pack(receiver_index)


def pack_into(buffer: bytearray | memoryview, type_: int, epoch: int, sequence: int) -> None:
    """Write a header at offset 0 of ``buffer`` (send path; values already valid)."""
    HEADER.pack_into(buffer, 0, (VERSION << 4) | type_, 0, epoch, sequence)


def decode(datagram: bytes | bytearray | memoryview) -> Header:
    """Parse and check the header of a whole datagram (header, body, tag).

    Raises WireFormatError (with ``reason``) for a datagram shorter than
    :data:`MIN_DATAGRAM`, a version other than 1, an unknown type, or any
    flag set. Nothing else is judged here: epoch and sequence need the
    epoch state.
    """
    if len(datagram) < MIN_DATAGRAM:
        raise _fail(REASON_SHORT, f"datagram of {len(datagram)} bytes, need at least {MIN_DATAGRAM}")
    byte0, flags, epoch, sequence = HEADER.unpack_from(datagram, 0)
    if byte0 >> 4 != VERSION or (byte0 & 0x0F) not in TYPES:
        raise _fail(REASON_TYPE, f"unknown version/type byte 0x{byte0:02x}")
    if flags != 0:
        raise _fail(REASON_FLAGS, f"flags 0x{flags:02x} set")
    return Header(byte0 & 0x0F, epoch, sequence, 0)
