"""Request and answer bodies of the member API (pydantic), and shared route constants.

Field limits here are the first line of input validation; ``provider.service``
checks meaning (names, endpoints, keys) again.
"""

from __future__ import annotations

import base64
import binascii

from fastapi import Path
from pydantic import BaseModel, ConfigDict, Field, model_validator

from provider.errors import InvalidInput

GROUP_PATH = Path(pattern=r"^[a-z0-9][a-z0-9_-]{0,31}$", max_length=32)
ARCHIVE_MEDIA = "application/json"
SEALED_MEDIA = "application/octet-stream"
B64 = r"^[A-Za-z0-9+/]*={0,2}$"
# exactly 32 bytes in base64 (grouptun.control.credkeys): 42 chars, one whose low 4 bits are zero, "="
AUTHENTICATOR = {"min_length": 44, "max_length": 44, "pattern": r"^[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=$"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EnrollRequest(_Strict):
    secret: str = Field(min_length=43, max_length=43, pattern=r"^[A-Za-z0-9_-]+$")
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    ed25519_public: str = Field(min_length=44, max_length=44, pattern=B64)
    kem_public: str = Field(min_length=1624, max_length=1624, pattern=B64)
    authenticator: str = Field(**AUTHENTICATOR)
    endpoints: list[str] = Field(default_factory=list, max_length=8)
    proof: str = Field(min_length=88, max_length=88, pattern=B64)  # Ed25519 over jointoken.enroll_message


class ProviderKeysModel(BaseModel):
    ed25519: str
    mldsa65: str


class EnrollAnswer(BaseModel):
    group: str
    member_name: str
    index: int
    addresses: list[str]
    provider_keys: ProviderKeysModel
    archive: str
    vouch: str | None = None  # a group a linked provider owns: the voucher for its keys (PROTOCOL.md 8)


class StartRequest(_Strict):
    challenge: str = Field(pattern=r"^[0-9a-f]{64}$")


class SaltRequest(_Strict):
    """``authenticator``; or ``credential`` (a member in the old form), optionally registering ``new_authenticator``."""

    authenticator: str | None = Field(None, **AUTHENTICATOR)
    credential: str | None = Field(None, min_length=12, max_length=1368, pattern=B64)
    new_authenticator: str | None = Field(None, **AUTHENTICATOR)

    @model_validator(mode="after")
    def _one_proof(self) -> "SaltRequest":
        if (self.authenticator is None) == (self.credential is None):
            raise ValueError("give exactly one of authenticator and credential")
        if self.new_authenticator is not None and self.credential is None:
            raise ValueError("new_authenticator registers in place of a credential: give the credential")
        return self


class ReportRequest(_Strict):
    endpoints: list[str] = Field(default_factory=list, max_length=8)
    packets_sent: dict[str, int] = Field(default_factory=dict, max_length=16)  # sessions keep ~10 epochs


class RekeyRequest(_Strict):
    reason: str = Field(default="member", max_length=64, pattern=r"^[A-Za-z0-9:_. -]*$")


class RekeyAnswer(BaseModel):
    opened: bool


def b64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInput(f"{what}: not base64") from exc


class ForwardedMember(_Strict):
    """A linked provider's member's public keys (provider/linked.py); the member's name is in ``gt-member``."""

    ed25519_public: str = Field(min_length=44, max_length=44, pattern=B64)
    kem_public: str = Field(min_length=1624, max_length=1624, pattern=B64)
    endpoints: list[str] = Field(default_factory=list, max_length=8)


class ForwardedRemoval(_Strict):
    """A home provider removing its member (named in ``gt-member``) from the owner's group: no fields."""


class RemovalAnswer(BaseModel):
    group: str
    removed: str
    epoch: int | None
    version: int


class ForwardedAnswer(BaseModel):
    group: str
    member_name: str
    index: int
    addresses: list[str]
    archive: str
