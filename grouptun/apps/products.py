"""Requests for crypto-products and how they are written out (``grouptun export``).

The products themselves are derived in :mod:`grouptun.core.exporter`; this
module checks a request (the CLI before it asks the daemon, the daemon again
when it answers) and renders a product in one of the formats its type has:

=========  ===========================  ===============================================
type       formats (first: default)     what is printed
=========  ===========================  ===============================================
tls-psk    hex, base64, openssl-psk     the 32-byte PSK; openssl-psk prints
                                        ``-psk_identity ID -psk HEX`` for s_server/s_client
key        hex, base64                  the raw key (``--length`` bytes, default 32)
password   text                         the password (``--length`` letters, default 24)
ed25519    pem, hex, base64             PKCS#8 private key PEM then the public key PEM;
x25519                                  hex/base64: the private key line, the public key line
=========  ===========================  ===============================================
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, x25519

from grouptun.core import exporter
from grouptun.errors import UsageError

FORMATS: dict[str, tuple[str, ...]] = {
    "tls-psk": ("hex", "base64", "openssl-psk"),
    "key": ("hex", "base64"),
    "password": ("text",),
    "ed25519": ("pem", "hex", "base64"),
    "x25519": ("pem", "hex", "base64"),
}
ALL_FORMATS = ("hex", "base64", "pem", "openssl-psk", "text")
EPOCHS = ("current", "previous")
_OPTIONS = {"name": "--label", "length": "--length", "context": "--context", "count": "--count"}  # core argument -> CLI option
_PRIVATE = {"ed25519": ed25519.Ed25519PrivateKey, "x25519": x25519.X25519PrivateKey}


@dataclass(frozen=True)
class ExportRequest:
    type: str
    name: str
    context: bytes
    length: int | None
    format: str
    epoch: str
    count: int | None = None     # a stream of products (core.exporter.derive_stream)

    def to_json(self) -> dict:
        return {"type": self.type, "name": self.name, "context": self.context.hex(),
                "length": self.length, "format": self.format, "epoch": self.epoch, "count": self.count}


def check_request(type_: str, name: str, context: bytes, length: int | None = None,
                  format_: str | None = None, epoch: str = "current", count: int | None = None) -> ExportRequest:
    """A valid request, or UsageError saying what is wrong (unknown type, bad label, ...)."""
    if type_ not in FORMATS:
        raise UsageError(f"unknown type {type_!r}; known: {', '.join(FORMATS)}")
    chosen = format_ or FORMATS[type_][0]
    if chosen not in FORMATS[type_]:
        raise UsageError(f"format {chosen!r} does not apply to type {type_}; "
                         f"choose one of: {', '.join(FORMATS[type_])}")
    if epoch not in EPOCHS:
        raise UsageError(f"epoch {epoch!r} unknown; choose one of: {', '.join(EPOCHS)}")
    try:
        exporter.product_label(type_, name)
        exporter.check_length(type_, length)
        if len(context) > exporter.CONTEXT_MAX:
            raise exporter.ArgumentError("context", f"context is {len(context)} bytes, at most {exporter.CONTEXT_MAX}")
        if count is not None:
            exporter.check_count(type_, count)
    except exporter.ArgumentError as exc:
        raise UsageError(f"bad {_OPTIONS.get(exc.argument, exc.argument)}: {exc}") from None
    return ExportRequest(type_, name, bytes(context), length, chosen, epoch, count)


def request_from_json(raw: dict) -> ExportRequest:
    """The daemon's side: a request as ``ExportRequest.to_json`` sent it, checked again."""
    try:
        context = bytes.fromhex(raw.get("context", ""))
        length, count = raw.get("length"), raw.get("count")
        for field, value in (("length", length), ("count", count)):
            if value is not None and type(value) is not int:  # noqa: E721 - no bool, no float
                raise ValueError(f"{field} must be an integer")
        return check_request(str(raw["type"]), str(raw["name"]), context, length,
                             raw.get("format"), str(raw.get("epoch", "current")), count)
    except (KeyError, TypeError, ValueError) as exc:
        raise UsageError(f"malformed export request: {exc}") from None


def render(product: exporter.Product, format_: str) -> str:
    """The product as text in ``format_`` (one of ``FORMATS[product.type]``)."""
    if product.type == "password":
        return product.password
    if product.type in _PRIVATE:
        return _render_pair(product, format_)
    if format_ == "openssl-psk":
        return f"-psk_identity {product.identity} -psk {product.secret.hex()}"
    return _encode(bytes(product.secret), format_)


def _encode(data: bytes, format_: str) -> str:
    return data.hex() if format_ == "hex" else base64.b64encode(data).decode("ascii")


def _render_pair(product: exporter.Product, format_: str) -> str:
    if format_ != "pem":
        return f"{_encode(bytes(product.secret), format_)}\n{_encode(product.public, format_)}"
    private = _PRIVATE[product.type].from_private_bytes(bytes(product.secret))
    private_pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption())
    public_pem = private.public_key().public_bytes(serialization.Encoding.PEM,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo)
    return (private_pem + public_pem).decode("ascii").rstrip("\n")
