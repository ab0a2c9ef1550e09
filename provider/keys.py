"""Provider key material in the state directory.

Layout (created by ``grouptun-provider init``; directory mode 0700)::

    STATE/provider.json          url, created_at, provider_keys (public); audit_keep_days,
                                 audit_keep_rows (audit retention, see retention.py; editable);
                                 public_urls (optional: every URL members may use, in order;
                                 join tokens and signed archives carry it, see public_urls())
    STATE/provider.db            the database (store.py), mode 0600
    STATE/keys/ed25519.pem       archive signing key, PKCS#8, mode 0600
    STATE/keys/mldsa65.pem       archive signing key, PKCS#8, mode 0600
    STATE/keys/admin-ID.pem      a provider-admin key (Ed25519, PKCS#8, mode 0600; provider/admin.py)
    STATE/tls/key.pem            TLS key (ECDSA P-256), mode 0600
    STATE/tls/cert.pem           self-signed TLS certificate (public)

At rest the private keys are protected by file mode 0600 in a 0700
directory owned by the provider's user. If a passphrase is given at
``init``, both signing keys (and the provider-admin keys) are PKCS#8-encrypted with it
(``BestAvailableEncryption``) and every later command needs the same one.
The TLS key stays unencrypted (uvicorn loads it from a file).

Where the passphrase comes from (first found wins, see :func:`passphrase`):

1. ``$CREDENTIALS_DIRECTORY/grouptun-provider-passphrase`` -- a systemd
   credential (``LoadCredential=`` / ``LoadCredentialEncrypted=`` in the
   unit): systemd hands the service a private, read-only copy, so the
   passphrase is in neither the unit file nor the process environment
   (which ``/proc/PID/environ`` and child processes could show). One
   trailing newline is stripped.
2. the environment variable ``GROUPTUN_PROVIDER_PASSPHRASE`` (admin CLI,
   tests).

An empty passphrase counts as none.
Limits: no HSM, no key rotation (a new provider key means new join tokens).
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import json
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, mldsa
from cryptography.x509.oid import NameOID

import dataclasses

from grouptun.core.archive import Archive, sign_archive
from grouptun.core.envelope import ProviderKeys
from grouptun.core.jointoken import check_urls
from grouptun.control.reqsign import sign_headers
from grouptun.core.vouch import Vouch, sign_vouch
from grouptun.errors import ConfigError
from provider.errors import StateDirError

PASSPHRASE_ENV = "GROUPTUN_PROVIDER_PASSPHRASE"
PASSPHRASE_CREDENTIAL = "grouptun-provider-passphrase"
MAX_PASSPHRASE_BYTES = 4096


@dataclass(frozen=True)
class StatePaths:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "provider.json"

    @property
    def db(self) -> Path:
        return self.root / "provider.db"

    @property
    def ed25519(self) -> Path:
        return self.root / "keys" / "ed25519.pem"

    @property
    def mldsa65(self) -> Path:
        return self.root / "keys" / "mldsa65.pem"

    @property
    def tls_key(self) -> Path:
        return self.root / "tls" / "key.pem"

    @property
    def tls_cert(self) -> Path:
        return self.root / "tls" / "cert.pem"


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def read_secret_file(path: Path, max_bytes: int) -> bytes:
    """A small secret file's bytes, one trailing newline stripped.

    FileNotFoundError passes through; StateDirError when it cannot be read or
    is over ``max_bytes``.
    """
    try:
        with open(path, "rb") as f:
            raw = f.read(max_bytes + 1)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise StateDirError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if len(raw) > max_bytes:
        raise StateDirError(f"{path} is over {max_bytes} bytes")
    return raw[:-1] if raw.endswith(b"\n") else raw


def read_credential(name: str, max_bytes: int) -> bytes | None:
    """The systemd credential ``$CREDENTIALS_DIRECTORY/name`` (see read_secret_file); None if absent.

    A credential that exists but cannot be read raises: a broken unit must not silently fall back.
    """
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    if not directory:
        return None
    try:
        return read_secret_file(Path(directory) / name, max_bytes)
    except FileNotFoundError:
        return None


def passphrase() -> bytes | None:
    """The key passphrase: systemd credential first, then the environment; None when neither is set."""
    raw = read_credential(PASSPHRASE_CREDENTIAL, MAX_PASSPHRASE_BYTES)
    if raw:
        return raw
    value = os.environ.get(PASSPHRASE_ENV)
    return value.encode() if value else None


def _encryption() -> serialization.KeySerializationEncryption:
    secret = passphrase()
    if secret:
        return serialization.BestAvailableEncryption(secret)
    return serialization.NoEncryption()


def _pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, _encryption())


def save_private_key(path: Path, key) -> None:
    """A new private key file as the signing keys are kept: PKCS#8, mode 0600, encrypted with the
    passphrase when there is one (the provider-admin keys, provider/admin.py)."""
    _write_private(path, _pem(key))


PUBLIC_URLS = "public_urls"
MAX_PUBLIC_URLS_CHARS = 600  # all URLs together: a join token stays below its 2048 characters


def checked_public_urls(urls, what: str) -> tuple[str, ...]:
    """A public URL list (1..8 distinct https://HOST[:PORT]); ConfigError(``what``) names the setting."""
    checked = check_urls(urls, what)
    if sum(map(len, checked)) > MAX_PUBLIC_URLS_CHARS:
        raise ConfigError(what, f"the URLs together must be at most {MAX_PUBLIC_URLS_CHARS} characters")
    return checked


def public_urls(config: dict) -> tuple[str, ...]:
    """provider.json's ``public_urls``: every URL members may use (replicas, or one provider under
    several addresses), in the order they try them; () when absent (tokens and archives then carry
    only ``url``, and archives leave the members' lists alone)."""
    if PUBLIC_URLS not in config:
        return ()
    return checked_public_urls(config[PUBLIC_URLS], f"provider.json {PUBLIC_URLS}")


class Signer:
    """The provider's two archive signing keys (private); every archive it signs carries ``urls``
    (provider.json ``public_urls``) as its ``provider_urls`` when there are any."""

    def __init__(self, ed: ed25519.Ed25519PrivateKey, ml: mldsa.MLDSA65PrivateKey,
                 urls: tuple[str, ...] = ()) -> None:
        self._ed, self._ml, self.urls = ed, ml, tuple(urls)
        raw = serialization.Encoding.Raw, serialization.PublicFormat.Raw
        self.public = ProviderKeys(ed.public_key().public_bytes(*raw), ml.public_key().public_bytes_raw())

    @classmethod
    def generate(cls) -> "Signer":
        return cls(ed25519.Ed25519PrivateKey.generate(), mldsa.MLDSA65PrivateKey.generate())

    def sign(self, archive: Archive, compact: bool = False) -> bytes:
        """The signed envelope of ``archive`` (with ``compact``: of its compact form, PROTOCOL.md 2.2)."""
        if self.urls:
            archive = dataclasses.replace(archive, provider_urls=self.urls)
        return sign_archive(archive, self._ed, self._ml, compact)

    def sign_forms(self, archive: Archive) -> dict[str, bytes]:
        """The ``groups`` columns of one version: the full archive and its compact form, each signed
        under its own label."""
        return {"archive": self.sign(archive), "compact": self.sign(archive, compact=True)}

    def sign_vouch(self, vouch: Vouch) -> bytes:
        """A voucher for a linked provider's keys (PROTOCOL.md 8), for this provider's own members."""
        return sign_vouch(vouch, self._ed, self._ml)

    def sign_request(self, method: str, url: str, headers: dict, body: bytes, extra: tuple[str, ...]) -> None:
        """RFC 9421-sign a request to a linked provider (keyid: this provider's id, PROTOCOL.md 8)."""
        sign_headers(method, url, headers, body, self.public.fingerprint(), self._ed, extra=extra)

    def save(self, paths: StatePaths) -> None:
        _write_private(paths.ed25519, _pem(self._ed))
        _write_private(paths.mldsa65, _pem(self._ml))

    @classmethod
    def load(cls, paths: StatePaths, urls: tuple[str, ...] = ()) -> "Signer":
        password = passphrase()
        keys = []
        for path, kind in ((paths.ed25519, ed25519.Ed25519PrivateKey), (paths.mldsa65, mldsa.MLDSA65PrivateKey)):
            _check_mode(path)
            try:
                key = serialization.load_pem_private_key(path.read_bytes(), password)
            except (OSError, ValueError, TypeError) as exc:
                hint = ""
                if isinstance(exc, (TypeError, ValueError)):
                    hint = f" (wrong or missing passphrase: credential {PASSPHRASE_CREDENTIAL} or {PASSPHRASE_ENV})"
                raise StateDirError(f"cannot load {path}: {type(exc).__name__}{hint}") from exc
            if not isinstance(key, kind):
                raise StateDirError(f"{path} holds the wrong kind of key")
            keys.append(key)
        return cls(*keys, urls=urls)


def _check_mode(path: Path) -> None:
    try:
        mode = path.stat().st_mode & 0o777
    except OSError as exc:
        raise StateDirError(f"cannot read {path}: {exc.strerror}") from exc
    if mode & 0o077:
        raise StateDirError(f"{path} has mode {mode:o}; private keys must be 0600")


def make_tls(paths: StatePaths, url: str, now: datetime.datetime) -> str:
    """Create a TLS key and a 10-year self-signed certificate for the URL's host; return its fingerprint."""
    host = urlsplit(url).hostname or "localhost"
    key = ec.generate_private_key(ec.SECP256R1())
    try:
        san: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        san = x509.DNSName(host)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"grouptun provider {host}"[:64])])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=3650))
            .add_extension(x509.SubjectAlternativeName([san]), critical=False)
            .sign(key, hashes.SHA256()))
    _write_private(paths.tls_key, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                    serialization.NoEncryption()))
    paths.tls_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return tls_fingerprint(paths)


def tls_fingerprint(paths: StatePaths) -> str:
    """SHA-256 of the certificate's DER encoding, lowercase hex (what join tokens pin)."""
    try:
        cert = x509.load_pem_x509_certificate(paths.tls_cert.read_bytes())
    except (OSError, ValueError) as exc:
        raise StateDirError(f"cannot read TLS certificate {paths.tls_cert}: {exc}") from exc
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def read_config(paths: StatePaths) -> dict:
    try:
        return json.loads(paths.config.read_text())
    except FileNotFoundError as exc:
        raise StateDirError(f"{paths.root} is not an initialised provider state dir (run init)") from exc
    except (OSError, ValueError) as exc:
        raise StateDirError(f"cannot read {paths.config}: {exc}") from exc
