"""What the member shows the provider for a sealed salt, and the move off the old keystore.

A version-2 keystore gives the authenticator (:mod:`grouptun.control.credkeys`);
each salt request carries it, never the credential.

A version-1 keystore (its AES key is Argon2id of the credential, and the
provider holds an Argon2id hash of the credential itself) is migrated at
the member's next start, without re-enrolling, in three steps:

1. Stage: seal the same keys as version 2 (fresh salt, same cost) into
   ``keys.enc.migrating`` (atomic write, 0600). A staged file left by an
   earlier start is reused, so its authenticator is the one offered.
2. Register: the first salt request of the run carries the credential and
   the new authenticator (``ProviderClient.salt(..., old_credential=)``).
   The provider checks the request signature, then the credential against
   its hash, and only then stores a hash of the authenticator; a request
   whose authenticator it already holds is accepted unchanged, so a retry
   after a lost answer or a crash succeeds.
3. Commit: rename the staged file over ``keys.enc`` (fsync of the
   directory); from then on only the authenticator is sent.

A crash between any two steps leaves a state that the next start carries
on from: before 2 the provider still knows the credential; after 2 it
knows the staged authenticator, which step 1 reuses. The credential stays
in memory only until step 3.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable

from grouptun.control import credkeys

from grouptun.control import keystore
from grouptun.errors import KeystoreError

log = logging.getLogger("grouptun.control.credential")

STAGED_SUFFIX = ".migrating"


def staged_path(path: Path) -> Path:
    return Path(path).with_name(Path(path).name + STAGED_SUFFIX)


class SaltProof:
    """The member's side of a salt request; :meth:`wipe` overwrites the secrets it holds."""

    def __init__(self, authenticator: bytearray, old_credential: bytearray | None = None,
                 commit: Callable[[], None] | None = None) -> None:
        self._authenticator = authenticator
        self._old_credential = old_credential
        self._commit = commit

    @property
    def migrating(self) -> bool:
        return self._old_credential is not None

    def fetch_salt(self, client, epoch: int) -> bytes:
        """The sealed salt of ``epoch``; the first success of a migrating proof commits the migration."""
        if self._old_credential is None:
            return client.salt(epoch, bytes(self._authenticator))
        sealed = client.salt(epoch, bytes(self._authenticator), old_credential=bytes(self._old_credential))
        try:
            self._commit()
        except OSError as exc:  # the provider accepts the same registration again: retried at the next salt
            log.error("keystore migration: cannot replace the keystore (%s); retrying at the next epoch",
                      exc.strerror or exc)
            return sealed
        credkeys.wipe(self._old_credential)
        self._old_credential = None
        log.info("keystore migrated: the provider now checks the derived authenticator, not the credential")
        return sealed

    def wipe(self) -> None:
        credkeys.wipe(self._authenticator)
        if self._old_credential is not None:
            credkeys.wipe(self._old_credential)


def proof_for(path: Path, credential: bytearray, keys: keystore.MemberKeys) -> SaltProof:
    """The proof for the keystore at ``path`` (opened as ``keys``), staging its migration if it is version 1."""
    staged = staged_path(path)
    if keys.authenticator is not None:
        if staged.exists():  # a copy left by a migration that committed (or by hand): the live file rules
            staged.unlink()
        return SaltProof(bytearray(keys.authenticator))
    authenticator = _staged_authenticator(path, staged, credential, keys)
    log.info("keystore %s is in the old form: it moves to the derived key-file key once the provider "
             "has registered the new authenticator", path)
    return SaltProof(authenticator, bytearray(credential), lambda: _commit(staged, Path(path)))


def _staged_authenticator(path: Path, staged: Path, credential: bytearray,
                          keys: keystore.MemberKeys) -> bytearray:
    if staged.exists():
        try:
            again = keystore.load(staged, credential)
        except KeystoreError as exc:
            raise KeystoreError(f"{staged}, left by an interrupted keystore migration, does not open ({exc}); "
                                f"{path} still does") from exc
        try:
            if again.ed25519_public != keys.ed25519_public or again.kem_public != keys.kem_public:
                raise KeystoreError(f"{staged} holds other keys than {path}; remove one of them")
            return bytearray(again.authenticator)
        finally:
            again.wipe()
    sealed = keystore.seal(keys, credential, keystore.cost_of(keystore.read(path)))
    try:
        keystore.write_atomic(staged, sealed.blob, 0o600)
    except OSError as exc:
        credkeys.wipe(sealed.authenticator)
        raise KeystoreError(f"cannot write {staged}: {exc.strerror}") from exc
    return sealed.authenticator


def _commit(staged: Path, path: Path) -> None:
    os.replace(staged, path)
    keystore.sync_dir(path)
