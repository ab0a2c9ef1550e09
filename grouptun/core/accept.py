"""The acceptance order of a new epoch (PROTOCOL.md 2), as pure functions.

A member accepts an epoch only in this order; the first step that fails
raises ``EpochRejected(step)``:

    ===========  ====================================================
    step         check
    ===========  ====================================================
    signature    both signatures of the document verified
    group_id     the document's group_id is the group we joined
    epoch        epoch is a u32 newer than any epoch held or recorded
    indices      member indices form a permutation of 0..N-1, 2<=N<=65535
    capsule      our capsule opened (the caller passes SS, or None)
    data_id      head(16, SHA-256("grouptun/1 data-id" || SS)) matches
    salt         the sealed salt opened (salt, or None)
    key_check    HKDF-Expand(PRK, "grouptun/1 check" || ctx, 16) matches
    ===========  ====================================================

The first four need only the parsed document: :func:`check_document`. A
caller that opens capsules lazily calls it first and :func:`check_secrets`
after opening; :func:`accept_epoch` runs both. Comparisons of secret-derived
values are constant time. Nothing here keeps or wipes the secrets passed in:
the caller owns them.
"""

from __future__ import annotations

from hmac import compare_digest
from typing import Sequence

from grouptun.core.keys import HEAP, EpochKeys, SUITES, SecretMemory, data_id
from grouptun.core.sequence import GROUP_SIZE_MAX, GROUP_SIZE_MIN
from grouptun.errors import EpochRejected

EPOCH_MAX = 2**32 - 1


def check_document(*, signatures_ok: bool, expected_group_id: bytes, group_id: bytes,
                   epoch: int, highest_held: int | None, indices: Sequence[int],
                   group_size: int) -> None:
    """Steps signature, group_id, epoch, indices."""
    if signatures_ok is not True:
        raise EpochRejected("signature", "document signatures do not verify")
    if not compare_digest(bytes(expected_group_id), bytes(group_id)):
        raise EpochRejected("group_id", "document is for another group")
    if not isinstance(epoch, int) or not 0 <= epoch <= EPOCH_MAX:
        raise EpochRejected("epoch", f"epoch {epoch!r} is not a u32")
    if highest_held is not None and epoch <= highest_held:
        raise EpochRejected("epoch", f"epoch {epoch} is not newer than {highest_held}")
    if not GROUP_SIZE_MIN <= group_size <= GROUP_SIZE_MAX:
        raise EpochRejected("indices", f"group size {group_size} outside {GROUP_SIZE_MIN}..{GROUP_SIZE_MAX}")
    if len(indices) != group_size or sorted(indices) != list(range(group_size)):
        raise EpochRejected("indices", "member indices are not a permutation of 0..N-1")


def check_secrets(*, suite: int, group_id: bytes, epoch: int,
                  shared_secret: bytes | bytearray | None, data_id_expected: bytes,
                  salt: bytes | bytearray | None, key_check_expected: bytes,
                  secrets: SecretMemory = HEAP) -> None:
    """Steps capsule, data_id, salt, key_check (the PRK for the check is held in ``secrets``)."""
    if shared_secret is None or len(shared_secret) != 32:
        raise EpochRejected("capsule", "capsule did not open")
    if not compare_digest(data_id(shared_secret), bytes(data_id_expected)):
        raise EpochRejected("data_id", "data_id does not match the shared secret")
    if salt is None or len(salt) != 32:
        raise EpochRejected("salt", "sealed salt did not open")
    if suite not in SUITES:
        raise EpochRejected("key_check", f"unknown suite {suite!r}")
    keys = EpochKeys(suite, group_id, epoch, shared_secret, salt, secrets)
    try:
        ok = compare_digest(keys.key_check(), bytes(key_check_expected))
    finally:
        keys.wipe()
    if not ok:
        raise EpochRejected("key_check", "key_check does not match SS and salt")


def accept_epoch(*, signatures_ok: bool, expected_group_id: bytes, group_id: bytes, epoch: int,
                 highest_held: int | None, indices: Sequence[int], group_size: int, suite: int,
                 shared_secret: bytes | bytearray | None, data_id_expected: bytes,
                 salt: bytes | bytearray | None, key_check_expected: bytes) -> None:
    """Every step in order; returns None if the epoch may be installed."""
    check_document(signatures_ok=signatures_ok, expected_group_id=expected_group_id,
                   group_id=group_id, epoch=epoch, highest_held=highest_held,
                   indices=indices, group_size=group_size)
    check_secrets(suite=suite, group_id=group_id, epoch=epoch, shared_secret=shared_secret,
                  data_id_expected=data_id_expected, salt=salt, key_check_expected=key_check_expected)
