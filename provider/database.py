"""Which database the provider uses, and opening it with errors that name the setting.

The URL comes from the first of these that is set (every command)::

    --database-url URL                     the flag
    GROUPTUN_PROVIDER_DATABASE_URL=URL     the environment
    "database_url": "URL"                  STATE/provider.json (``init`` records the URL it used, without password)
    (none)                                 SQLite STATE/provider.db, the embedded default

A URL is ``postgresql+psycopg://USER[:PASSWORD]@HOST[:PORT]/DB[?host=/socket/dir&...]``
(``postgresql://`` means the same: psycopg 3 is the one driver). The password,
first found: in the URL (the flag or the environment only: provider.json holds
no secret); ``?password_file=PATH`` in the URL, that file's content; the
systemd credential ``$CREDENTIALS_DIRECTORY/grouptun-provider-db``
(``LoadCredential=`` / ``LoadCredentialEncrypted=``). One trailing newline is
stripped. No message shows a password: URLs are shown with ``***`` in its place
and driver messages pass through :meth:`DatabaseSetting.redact`.

Bad input names its source and writes nothing: an unparseable URL or unknown
driver is a DatabaseUrlError (exit 78); an unreachable database, a missing
SQLite file, a newer schema or another provider's database a StateDirError.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, quote_plus

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from provider.errors import DatabaseUrlError, ProviderFault, StateDirError
from provider.keys import StatePaths, read_credential, read_secret_file
from provider.store import Store

URL_FLAG = "--database-url"
URL_ENV = "GROUPTUN_PROVIDER_DATABASE_URL"
URL_KEY = "database_url"
PASSWORD_CREDENTIAL = "grouptun-provider-db"
PASSWORD_FILE_PARAM = "password_file"
DRIVERS = ("postgresql", "postgresql+psycopg")
MAX_PASSWORD_BYTES = 4096
SHAPE = "postgresql+psycopg://USER@HOST[:PORT]/DB"


@dataclass(frozen=True)
class DatabaseSetting:
    """The chosen database: ``url`` (password filled in) or, when None, SQLite at ``sqlite_path``."""

    source: str  # the setting it came from, as the user wrote it: flag, variable or provider.json key
    url: URL | None
    sqlite_path: Path
    recordable: str | None = None  # the URL as given, less any password in it (what provider.json may hold)

    @property
    def shown(self) -> str:
        return str(self.sqlite_path) if self.url is None else self.url.render_as_string(hide_password=True)

    def describe(self) -> str:
        return f"database {self.shown} (from {self.source})"

    def redact(self, text: str) -> str:
        """``text`` with the password (plain and URL-quoted) replaced by ``***``."""
        secret = None if self.url is None else self.url.password
        if secret:
            for form in {secret, quote(secret, safe=""), quote_plus(secret)}:
                text = text.replace(form, "***")
        return text

    def to_config(self) -> dict:
        """What ``init`` records in provider.json: the URL without its password (nothing for SQLite)."""
        return {} if self.recordable is None else {URL_KEY: self.recordable}

    def fail(self, exc: ProviderFault) -> ProviderFault:
        """``exc`` again, its reason prefixed with which database and which setting, password redacted."""
        return type(exc)(f"{self.describe()}: {self.redact(' '.join(exc.reason.split()))}")  # one line

    def store(self, *, must_exist: bool = True, application: str | None = None) -> Store:
        if self.url is None:
            if must_exist and not self.sqlite_path.exists():
                raise StateDirError(f"{self.sqlite_path} does not exist; a provider on PostgreSQL needs "
                                    f"{URL_FLAG}, {URL_ENV} or provider.json's {URL_KEY}")
            return Store(str(self.sqlite_path))
        try:
            return Store(None, url=self.url, application=application)
        except ImportError as exc:
            raise DatabaseUrlError(self.source, "PostgreSQL needs psycopg 3: pip install 'grouptun[postgres]'") from exc


def resolve(flag: str | None, environ, config: dict, paths: StatePaths) -> DatabaseSetting:
    """The database per flag > environment > provider.json > SQLite default (see the module docstring)."""
    for source, value, secret_allowed in ((URL_FLAG, flag, True), (URL_ENV, environ.get(URL_ENV), True),
                                          (f"provider.json key '{URL_KEY}'", config.get(URL_KEY), False)):
        if value is None or value == "":
            continue
        if not isinstance(value, str):
            raise DatabaseUrlError(source, f"must be a string like {SHAPE}, not {type(value).__name__}")
        url, recordable = _parse(source, value, secret_allowed)
        return DatabaseSetting(source, url, paths.db, recordable)
    return DatabaseSetting("default: SQLite in the state dir", None, paths.db)


def _parse(source: str, text: str, secret_allowed: bool) -> tuple[URL, str]:
    """The URL to connect with (password filled in) and the URL as given less its password."""
    try:
        url = make_url(text)
    except (ArgumentError, ValueError) as exc:  # their messages may quote the URL, password and all
        raise DatabaseUrlError(source, f"not a database URL like {SHAPE}") from exc
    if url.drivername not in DRIVERS:
        hint = " (SQLite is the default: give no URL)" if url.drivername.startswith("sqlite") else ""
        raise DatabaseUrlError(source, f"unknown driver {url.drivername!r}: use {SHAPE}{hint}")
    if not url.database:
        raise DatabaseUrlError(source, f"names no database: use {SHAPE}")
    if url.port is not None and not 0 < url.port < 65536:
        raise DatabaseUrlError(source, f"port {url.port} is out of range")
    if url.password is not None and not secret_allowed:
        raise DatabaseUrlError(source, f"holds a password; provider.json holds no secret: use ?{PASSWORD_FILE_PARAM}="
                                       f" or the credential {PASSWORD_CREDENTIAL}")
    url = url.set(drivername="postgresql+psycopg")
    recordable = URL.create(url.drivername, url.username, None, url.host, url.port, url.database, url.query)
    password_file = url.query.get(PASSWORD_FILE_PARAM)
    url = url.difference_update_query([PASSWORD_FILE_PARAM])
    if url.password is not None:
        if password_file is not None:
            raise DatabaseUrlError(source, f"gives a password and {PASSWORD_FILE_PARAM}: give it once")
    else:
        password = _password(source, password_file)
        url = url if password is None else url.set(password=password)
    return url, recordable.render_as_string(hide_password=False)


def _password(source: str, password_file) -> str | None:
    if password_file is not None:
        if not isinstance(password_file, str) or not os.path.isabs(password_file):
            raise DatabaseUrlError(source, f"{PASSWORD_FILE_PARAM} must be one absolute path")
        try:
            raw = read_secret_file(Path(password_file), MAX_PASSWORD_BYTES)
        except FileNotFoundError as exc:
            raise DatabaseUrlError(source, f"{PASSWORD_FILE_PARAM} {password_file} does not exist") from exc
        except StateDirError as exc:
            raise DatabaseUrlError(source, f"{PASSWORD_FILE_PARAM}: {exc.reason}") from exc
    else:
        raw = read_credential(PASSWORD_CREDENTIAL, MAX_PASSWORD_BYTES)
    if not raw:
        return None
    try:
        return raw.decode()
    except UnicodeDecodeError as exc:
        raise DatabaseUrlError(source, "the database password is not UTF-8") from exc


def open_store(setting: DatabaseSetting, config: dict, application: str | None = None) -> Store:
    """The store, reachable, of this provider's schema version and of this state dir's provider keys
    (``application``: the name its PostgreSQL connections show)."""
    store = setting.store(application=application)
    try:
        store.check_schema()
        held = store.identity().get("provider_keys")
    except ProviderFault as exc:
        store.close()
        raise setting.fail(exc) from exc
    if held is not None and config.get("provider_keys") is not None and held != canonical_keys(config["provider_keys"]):
        store.close()
        raise setting.fail(StateDirError("holds another provider's keys than this state dir's provider.json"))
    return store


def canonical_keys(provider_keys: dict) -> str:
    """The provider's public keys as the text the database's ``meta`` row holds."""
    return json.dumps(provider_keys, sort_keys=True, separators=(",", ":"))
