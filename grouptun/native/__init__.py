"""The native run cipher: whole runs sealed or opened in one C call (``_runcipher``, OpenSSL 3 EVP).

``pip install`` builds ``_runcipher.c`` against the system libcrypto when gcc and libssl-dev are
there; otherwise it is left out and everything runs on the reference path: the numpy run code of
:class:`grouptun.core.seal.ReferenceRun`, one ``cryptography`` call per datagram. Both give the same bytes
(tests/native). Which one runs is chosen once, by :func:`choose`, from a setting:

- ``"auto"`` (default): native if it loaded, else reference;
- ``"native"``: native, or ConfigError naming the setting if it did not load;
- ``"reference"``: reference, even if native loaded.

The daemon reads the setting from ``[daemon] cipher``; ``grouptun vectors`` from ``--cipher``,
else the environment variable ``GROUPTUN_CIPHER`` (:data:`ENV`). The chosen maker goes to the
Session, which hands it to each epoch's ciphers (:func:`grouptun.core.seal.sender_cipher`).
"""

from __future__ import annotations

from typing import NamedTuple

from grouptun.errors import ConfigError

SETTINGS = ("auto", "native", "reference")
ENV = "GROUPTUN_CIPHER"

try:
    from grouptun.native._runcipher import OPENSSL_VERSION, RunKey
except ModuleNotFoundError:  # not built: gcc or libssl-dev were missing at install
    RunKey = None
    OPENSSL_VERSION = ""
    UNAVAILABLE: str | None = "the native run cipher is not built (install gcc and libssl-dev, then pip install again)"
except ImportError as exc:  # built, but not loadable here (e.g. libcrypto.so.3 missing)
    RunKey = None
    OPENSSL_VERSION = ""
    UNAVAILABLE = f"the native run cipher is not loadable ({exc})"
else:
    UNAVAILABLE = None


class Choice(NamedTuple):
    """``maker``: RunKey (the native type) or None for the reference path; ``describe``: one line."""

    maker: type | None
    describe: str

    @property
    def name(self) -> str:
        return "reference" if self.maker is None else "native"


def choose(setting: str, key: str = "daemon.cipher") -> Choice:
    """The run cipher for ``setting`` (one of :data:`SETTINGS`); ConfigError naming ``key`` otherwise."""
    if setting not in SETTINGS:
        raise ConfigError(key, f"must be one of {', '.join(SETTINGS)}, not {setting!r}")
    if setting == "native" and RunKey is None:
        raise ConfigError(key, f"'native' asked for, but {UNAVAILABLE}")
    if setting == "reference" or RunKey is None:
        why = "forced by the setting" if setting == "reference" else UNAVAILABLE
        return Choice(None, f"reference (numpy runs, one cryptography call per datagram; {why})")
    return Choice(RunKey, f"native (one C call per run, GIL released; {OPENSSL_VERSION})")
