"""The exporter and the typed products built on it (PROTOCOL.md 3.1).

::

    exporter_secret = HKDF-Expand(PRK, "grouptun/1 exporter" || ctx, 32)     (keys.EpochKeys)
    export(label, context, L) =
        HKDF-Expand(exporter_secret,
                    u8(len(label)) || label || u32(len(context)) || context || u16(L), L)

``label`` is 1..255 bytes of printable ASCII (0x20..0x7e), ``context``
0..2^16 bytes, ``1 <= L <= 255*32``. The label, context and length are all
in the HKDF info, each with its length in front, so two different requests
never share output bytes (a 16-byte key is not the head of a 32-byte one).

Typed products use the label ``"grouptun/1 " || type || " " || name``. The
name is 1..64 characters of ``[A-Za-z0-9._-]`` (narrower than a label: it
appears in the TLS identity, which uses ``:`` as separator, and in file
names). Per type:

- ``tls-psk``: ``export(label, context, 32)``; identity
  ``"grouptun:" || group || ":" || name || ":" || decimal epoch``.
- ``key``: ``export(label, context, L)``, L bytes (default 32).
- ``password``: n characters (default 24, 1..256) of the 62-letter alphabet
  ``A-Za-z0-9``, read from ``export(label, context, 2n + 32)`` by rejection
  sampling: a byte b < 248 (= 4 * 62) gives ``alphabet[b mod 62]``, a byte
  >= 248 is skipped. Every character is uniform and independent, so the
  entropy is ``n * log2(62)`` (5.95 bits a character), at most 256 bits
  (the exporter secret's). The 32 spare bytes make running out less likely
  than 2^-128 for every n (tests/core/test_exporter.py computes the bound);
  if it happened all members would fail alike, with ValueError.
- ``ed25519`` / ``x25519``: the 32-byte private key is
  ``export(label, context, 32)`` (RFC 8032 seed, RFC 7748 scalar), the public
  key follows from it.

Streams (a project extension; seed 001's appendix, not in PROTOCOL.md):
``count`` products of one type and name, e.g. one-time keys. The stream's
label is the product label followed by ``" stream"`` (a label no single
product has: names hold no space). An SP 800-90A HMAC_DRBG
(:mod:`grouptun.core.drbg`) is instantiated with entropy input and nonce
``export(stream label, context, 48)`` split 32 + 16 and the stream label as
personalization string; product i is made of the i-th ``Generate`` of the
size the product takes (32 bytes for a key pair, L for a key, 2n + 32 for a
password). ``tls-psk`` has no stream (its identity names one PSK).

The secret of a :class:`Product` is a bytearray its owner wipes when done.
"""

from __future__ import annotations

import math
import re
import struct
import string
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, x25519

from grouptun.core import drbg, keys

LABEL_MAX = 255
CONTEXT_MAX = 2**16
LENGTH_MAX = 255 * 32
PRODUCT_TYPES = ("tls-psk", "key", "password", "ed25519", "x25519")
PRODUCT_PREFIX = "grouptun/1 "
NAME_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,64}")
PSK_SIZE = 32
KEY_DEFAULT = 32
PASSWORD_ALPHABET = string.ascii_uppercase + string.ascii_lowercase + string.digits
PASSWORD_DEFAULT = 24
PASSWORD_MAX = 256
PASSWORD_SPARE = 32
_ACCEPT_BELOW = 256 - 256 % len(PASSWORD_ALPHABET)  # 248: every letter gets 4 byte values
SEED_SIZE = 32
STREAM_SUFFIX = " stream"   # no product name has a space: a stream's label is no single product's
STREAM_MAX = 1000
ENTROPY_CAP = 8 * keys.EXPORTER_SECRET_SIZE
_FIXED_SIZES = {"tls-psk": PSK_SIZE, "ed25519": SEED_SIZE, "x25519": SEED_SIZE}
_RAW = (serialization.Encoding.Raw, serialization.PublicFormat.Raw)


class ArgumentError(ValueError):
    """A request outside PROTOCOL.md 3.1's limits; ``argument`` names the argument at fault."""

    def __init__(self, argument: str, message: str) -> None:
        self.argument = argument
        super().__init__(message)


def export(exporter_secret: bytes | bytearray, label: str | bytes, context: bytes | bytearray,
           length: int) -> bytearray:
    """``export(label, context, L)``; ValueError naming the argument that breaks 3.1's limits."""
    label_bytes = check_label(label)
    if not isinstance(context, (bytes, bytearray)):
        raise TypeError(f"context must be bytes, got {type(context).__name__}")
    if len(context) > CONTEXT_MAX:
        raise ArgumentError("context", f"context is {len(context)} bytes, at most {CONTEXT_MAX}")
    if type(length) is not int or not 1 <= length <= LENGTH_MAX:  # noqa: E721 - no bool
        raise ArgumentError("length", f"length must be an integer in 1..{LENGTH_MAX}, got {length!r}")
    info = (struct.pack(">B", len(label_bytes)) + label_bytes + struct.pack(">I", len(context))
            + bytes(context) + struct.pack(">H", length))
    return keys.expand(exporter_secret, info, length)


def check_label(label: str | bytes) -> bytes:
    """The label's bytes; ValueError unless 1..255 bytes of printable ASCII."""
    if isinstance(label, str):
        if not label.isascii():
            raise ArgumentError("label", "label must be printable ASCII")
        label = label.encode("ascii")
    if not isinstance(label, bytes):
        raise TypeError(f"label must be str or bytes, got {type(label).__name__}")
    if not 1 <= len(label) <= LABEL_MAX:
        raise ArgumentError("label", f"label must be 1..{LABEL_MAX} bytes, got {len(label)}")
    if any(not 0x20 <= byte <= 0x7E for byte in label):
        raise ArgumentError("label", "label must be printable ASCII (0x20..0x7e)")
    return label


def product_label(type_: str, name: str) -> str:
    """``"grouptun/1 " || type || " " || name``; ValueError for an unknown type or a bad name."""
    if type_ not in PRODUCT_TYPES:
        raise ArgumentError("type", f"type {type_!r} unknown; known: {', '.join(PRODUCT_TYPES)}")
    if not isinstance(name, str) or NAME_PATTERN.fullmatch(name) is None:
        raise ArgumentError("name", f"name {name!r} must be 1..64 characters of A-Z a-z 0-9 . _ -")
    return f"{PRODUCT_PREFIX}{type_} {name}"


def tls_psk_identity(group: str, name: str, epoch: int) -> str:
    """``"grouptun:" || group || ":" || name || ":" || decimal epoch``."""
    if not isinstance(group, str) or not group or not group.isascii() or ":" in group \
            or not group.isprintable():
        raise ArgumentError("group", f"group {group!r} must be printable ASCII without ':'")
    return f"grouptun:{group}:{name}:{epoch:d}"


def check_length(type_: str, length: int | None) -> int:
    """The length a product of ``type_`` uses (bytes; characters for a password)."""
    fixed = _FIXED_SIZES.get(type_)
    if fixed is not None:
        if length not in (None, fixed):
            raise ArgumentError("length", f"length: a {type_} product is always {fixed} bytes")
        return fixed
    high, default = (PASSWORD_MAX, PASSWORD_DEFAULT) if type_ == "password" else (LENGTH_MAX, KEY_DEFAULT)
    if length is None:
        return default
    if type(length) is not int or not 1 <= length <= high:  # noqa: E721 - no bool
        raise ArgumentError("length", f"length must be an integer in 1..{high} for {type_}, got {length!r}")
    return length


def password_from(stream: bytes | bytearray, length: int) -> str:
    """The first ``length`` accepted letters of ``stream`` (rejection sampling, see above)."""
    letters = [PASSWORD_ALPHABET[byte % len(PASSWORD_ALPHABET)] for byte in stream if byte < _ACCEPT_BELOW]
    if len(letters) < length:
        raise ArgumentError("password", f"password: the exported stream gave {len(letters)} of {length} letters")
    return "".join(letters[:length])


def password_entropy_bits(length: int) -> float:
    return min(length * math.log2(len(PASSWORD_ALPHABET)), ENTROPY_CAP)


@dataclass
class Product:
    """One typed product. ``secret``: the PSK, key or private key (a bytearray to wipe)."""

    type: str
    label: str
    secret: bytearray
    entropy_bits: float
    public: bytes = b""          # ed25519 / x25519
    identity: str = ""           # tls-psk
    password: str = ""           # password

    def wipe(self) -> None:
        keys.wipe(self.secret)


def derive_product(exporter_secret: bytes | bytearray, type_: str, name: str, context: bytes = b"",
                   length: int | None = None, group: str = "", epoch: int = 0) -> Product:
    """The product ``type_`` named ``name``; ArgumentError naming what is wrong with a request."""
    label = product_label(type_, name)
    size = check_length(type_, length)
    raw = export(exporter_secret, label, context, _export_size(type_, size))
    return _product(type_, label, raw, size, group, name, epoch)


def derive_stream(exporter_secret: bytes | bytearray, type_: str, name: str, count: int,
                  context: bytes = b"", length: int | None = None) -> list[Product]:
    """``count`` products of one stream: an HMAC_DRBG seeded from ``export(label || " stream", context, 48)``."""
    label = product_label(type_, name) + STREAM_SUFFIX
    check_count(type_, count)
    size = check_length(type_, length)
    seed = export(exporter_secret, label, context, drbg.MIN_ENTROPY + drbg.MIN_NONCE)
    generator = drbg.HmacDrbg(seed[:drbg.MIN_ENTROPY], seed[drbg.MIN_ENTROPY:], label.encode("ascii"))
    try:
        return [_product(type_, label, generator.generate(_export_size(type_, size)), size, "", name, 0)
                for _ in range(count)]
    finally:
        generator.wipe()
        keys.wipe(seed)


def check_count(type_: str, count: int) -> None:
    """ArgumentError unless ``type_`` has streams and ``count`` is 1..STREAM_MAX."""
    if type_ == "tls-psk":
        raise ArgumentError("count", "count: a tls-psk product has one identity, so no stream")
    if type(count) is not int or not 1 <= count <= STREAM_MAX:  # noqa: E721 - no bool
        raise ArgumentError("count", f"count must be an integer in 1..{STREAM_MAX}, got {count!r}")


def _export_size(type_: str, size: int) -> int:
    return 2 * size + PASSWORD_SPARE if type_ == "password" else size


def _product(type_: str, label: str, raw: bytearray, size: int, group: str, name: str, epoch: int) -> Product:
    """The product made of ``raw`` (the exported or generated bytes, wiped here for a password)."""
    if type_ == "password":
        try:
            text = password_from(raw, size)
        finally:
            keys.wipe(raw)
        return Product(type_, label, bytearray(text.encode("ascii")), password_entropy_bits(size), password=text)
    product = Product(type_, label, raw, float(min(8 * size, ENTROPY_CAP)))
    if type_ == "tls-psk":
        product.identity = tls_psk_identity(group, name, epoch)
    elif type_ == "ed25519":
        product.public = ed25519.Ed25519PrivateKey.from_private_bytes(bytes(raw)).public_key().public_bytes(*_RAW)
    elif type_ == "x25519":
        product.public = x25519.X25519PrivateKey.from_private_bytes(bytes(raw)).public_key().public_bytes(*_RAW)
    return product
