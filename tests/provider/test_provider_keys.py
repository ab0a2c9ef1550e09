"""Provider keys at rest (mode 0600, optional passphrase), TLS certificate, state dir checks."""

from __future__ import annotations

import datetime
import hashlib
import ssl
import stat

import pytest

from provider.errors import SchemaError, StateDirError
from provider.keys import PASSPHRASE_CREDENTIAL, PASSPHRASE_ENV, Signer, passphrase, StatePaths, make_tls, read_config, tls_fingerprint
from sqlalchemy import insert
from sqlalchemy.exc import DBAPIError

from provider.store import Store
from provider.tables import SCHEMA_VERSION, groups, members
from provider_helpers import STORE_KINDS, fresh_store


def test_keys_saved_0600_and_reload_identically(tmp_path):
    paths = StatePaths(tmp_path)
    signer = Signer.generate()
    signer.save(paths)
    for path in (paths.ed25519, paths.mldsa65):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert b"PRIVATE KEY" in path.read_bytes()
    assert stat.S_IMODE(paths.ed25519.parent.stat().st_mode) == 0o700
    assert Signer.load(paths).public == signer.public


def test_passphrase_encrypts_keys_and_is_required(tmp_path, monkeypatch):
    paths = StatePaths(tmp_path)
    monkeypatch.setenv(PASSPHRASE_ENV, "correct horse")
    signer = Signer.generate()
    signer.save(paths)
    assert b"ENCRYPTED PRIVATE KEY" in paths.ed25519.read_bytes()
    assert Signer.load(paths).public == signer.public
    monkeypatch.setenv(PASSPHRASE_ENV, "wrong")
    with pytest.raises(StateDirError, match=PASSPHRASE_ENV):
        Signer.load(paths)
    monkeypatch.delenv(PASSPHRASE_ENV)
    with pytest.raises(StateDirError):
        Signer.load(paths)


def test_group_readable_key_is_refused(tmp_path):
    paths = StatePaths(tmp_path)
    Signer.generate().save(paths)
    paths.mldsa65.chmod(0o644)
    with pytest.raises(StateDirError, match="0600"):
        Signer.load(paths)


def test_tls_certificate_fingerprint_and_key_mode(tmp_path):
    paths = StatePaths(tmp_path)
    fingerprint = make_tls(paths, "https://127.0.0.1:8443", datetime.datetime.now(datetime.timezone.utc))
    der = ssl.PEM_cert_to_DER_cert(paths.tls_cert.read_text())
    assert fingerprint == hashlib.sha256(der).hexdigest() == tls_fingerprint(paths)
    assert stat.S_IMODE(paths.tls_key.stat().st_mode) == 0o600


def test_state_dir_and_schema_checks(tmp_path):
    with pytest.raises(StateDirError, match="not an initialised"):
        read_config(StatePaths(tmp_path))
    store = Store(str(tmp_path / "x.db"))
    with pytest.raises(StateDirError):
        store.check_schema()
    store.create_schema()
    store.check_schema()
    with store.write() as conn:
        conn.exec_driver_sql("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(SchemaError, match="99"):
        store.check_schema()
    with store.read() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    store.close()


def test_passphrase_from_systemd_credential(tmp_path, monkeypatch):
    """LoadCredential= hands the passphrase in $CREDENTIALS_DIRECTORY; it wins over the environment."""
    paths = StatePaths(tmp_path / "state")
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / PASSPHRASE_CREDENTIAL).write_bytes(b"from credential\n")
    monkeypatch.delenv(PASSPHRASE_ENV, raising=False)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    signer = Signer.generate()
    signer.save(paths)
    assert b"ENCRYPTED PRIVATE KEY" in paths.ed25519.read_bytes()
    assert passphrase() == b"from credential"  # one trailing newline stripped
    monkeypatch.setenv(PASSPHRASE_ENV, "ignored, the credential wins")
    assert Signer.load(paths).public == signer.public
    monkeypatch.delenv("CREDENTIALS_DIRECTORY")
    with pytest.raises(StateDirError, match=PASSPHRASE_CREDENTIAL):
        Signer.load(paths)
    monkeypatch.setenv(PASSPHRASE_ENV, "from credential")  # the same passphrase via the environment
    assert Signer.load(paths).public == signer.public


def test_missing_credential_falls_back_to_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))  # directory without our credential
    monkeypatch.setenv(PASSPHRASE_ENV, "env")
    assert passphrase() == b"env"
    monkeypatch.delenv(PASSPHRASE_ENV)
    assert passphrase() is None


@pytest.mark.parametrize("kind", STORE_KINDS)
def test_schema_1_database_is_migrated_in_place(kind, request):
    """A database from before members.instance (schema 1) gets the column, NULL, and version 2."""
    store = fresh_store(kind, request)
    with store.write() as conn:
        group_pk = conn.execute(insert(groups).values(
            name="lan", group_id=bytes(16), cidr="10.77.0.0/24", suite=1, mtu=1420, rekey_after_seconds=600,
            rekey_after_packets=1024, switch_delay=2, grace=30, created_at=0, epoch_hw=0, version=0)).inserted_primary_key[0]
        conn.execute(insert(members).values(group=group_pk, name="alice", ed25519_public=bytes(32),
                                            kem_public=bytes(1216), credential_hash="h", addr4="10.77.0.1/24",
                                            enrolled_at=0))
        conn.exec_driver_sql('ALTER TABLE members DROP COLUMN "instance"')
        conn.exec_driver_sql("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    with pytest.raises(DBAPIError):
        with store.read() as conn:
            conn.execute(members.select())  # schema 1 has no instance column
    store.check_schema()
    with store.read() as conn:
        assert conn.exec_driver_sql("SELECT value FROM meta WHERE key = 'schema_version'").scalar() == str(SCHEMA_VERSION)
        rows = list(conn.execute(members.select()))
    assert [(r.name, r.instance) for r in rows] == [("alice", None)]
    store.check_schema()  # already current: nothing to do
    store.close()


@pytest.mark.parametrize("kind", STORE_KINDS)
def test_schema_2_database_gets_the_replicas_shared_tables(kind, request):
    """Schema 2 (before replicas shared state) gains nonces, starts and buckets, empty, in place."""
    from sqlalchemy import inspect  # noqa: PLC0415

    store = fresh_store(kind, request)
    with store.write() as conn:
        for table in ("buckets", "starts", "nonces"):
            conn.exec_driver_sql(f'DROP TABLE "{table}"')
        conn.exec_driver_sql("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    store.check_schema()
    with store.read() as conn:
        assert {"nonces", "starts", "buckets"} <= set(inspect(conn).get_table_names())
        assert conn.exec_driver_sql("SELECT count(*) FROM starts").scalar() == 0
        assert conn.exec_driver_sql("SELECT value FROM meta WHERE key = 'schema_version'").scalar() == str(SCHEMA_VERSION)
    store.close()
