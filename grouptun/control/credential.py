"""Where the identification credential comes from.

In order: a file named on the command line, systemd's
``$CREDENTIALS_DIRECTORY/grouptun-<group>`` (or ``.../grouptun``) as set by
``LoadCredential=``/``LoadCredentialEncrypted=``, the config's
``paths.credential_file``, then a prompt on the controlling terminal. grouptun never
writes the credential anywhere, nor sends it (the provider gets a value
derived from it, :mod:`grouptun.control.credkeys`); it lives in a bytearray the
caller wipes (:func:`wipe`) once the keystore is open (a migration from an
old-form keystore keeps a copy until the provider took the new
authenticator, :mod:`grouptun.control.credmigrate`).

Limits: a trailing newline (one ``\\n`` or ``\\r\\n``) is stripped so that
``echo secret > file`` works; the credential is otherwise used byte for
byte and must be 8..1024 bytes.
"""

from __future__ import annotations

import getpass
import hmac
import os
import sys
from pathlib import Path
from typing import Callable

from grouptun.errors import CredentialError

MIN_LENGTH = 8
MAX_LENGTH = 1024


def wipe(buf: bytearray) -> None:
    for i in range(len(buf)):
        buf[i] = 0


def _clean(raw: bytearray, origin: str) -> bytearray:
    for ending in (b"\r\n", b"\n"):
        if raw.endswith(ending):
            del raw[-len(ending):]
            break
    if not MIN_LENGTH <= len(raw) <= MAX_LENGTH:
        n = len(raw)
        wipe(raw)
        raise CredentialError(f"credential from {origin} must be {MIN_LENGTH}..{MAX_LENGTH} bytes, got {n}")
    return raw


def read_file(path: Path) -> bytearray:
    """The credential stored in ``path`` (read into a bytearray, nothing cached)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise CredentialError(f"cannot read credential file {path}: {exc.strerror}") from exc
    buf = bytearray(MAX_LENGTH + 3)
    try:
        with os.fdopen(fd, "rb", buffering=0) as f:
            n = f.readinto(buf)
    except OSError as exc:
        wipe(buf)
        raise CredentialError(f"cannot read credential file {path}: {exc.strerror}") from exc
    out = bytearray(buf[:n])
    wipe(buf)
    return _clean(out, str(path))


def from_systemd(group: str, environ: dict | None = None) -> bytearray | None:
    """The credential systemd handed over, or None when there is none."""
    env = os.environ if environ is None else environ
    directory = env.get("CREDENTIALS_DIRECTORY")
    if not directory:
        return None
    for name in (f"grouptun-{group}", "grouptun"):
        path = Path(directory) / name
        if path.exists():
            return read_file(path)
    return None


def prompt(text: str = "Identification credential: ", confirm: bool = False,
           ask: Callable[[str], str] = getpass.getpass, interactive: bool | None = None) -> bytearray:
    """Ask on the terminal; ``confirm`` asks twice (used when setting it at join)."""
    if interactive is None:
        interactive = sys.stdin.isatty()
    if not interactive:
        raise CredentialError("no credential: give --credential-file, set $CREDENTIALS_DIRECTORY, or run on a terminal")
    first = bytearray(ask(text).encode("utf-8"))
    if confirm:
        second = bytearray(ask("Repeat credential: ").encode("utf-8"))
        same = hmac.compare_digest(first, second)
        wipe(second)
        if not same:
            wipe(first)
            raise CredentialError("the two credentials differ")
    return _clean(first, "prompt")


def obtain(group: str, explicit_file: Path | None = None, config_file: Path | None = None, *,
           confirm: bool = False, environ: dict | None = None,
           ask: Callable[[str], str] = getpass.getpass, interactive: bool | None = None) -> bytearray:
    """The credential from the first source that has one.

    A file named on the command line wins; then systemd's credentials
    directory; then ``paths.credential_file`` from the config; then a prompt.
    """
    if explicit_file is not None:
        return read_file(Path(explicit_file))
    cred = from_systemd(group, environ)
    if cred is not None:
        return cred
    if config_file is not None:
        return read_file(Path(config_file))
    return prompt(confirm=confirm, ask=ask, interactive=interactive)
