"""The provider never sees the credential: join and salt requests over HTTP, and the move off a v1 keystore."""

from __future__ import annotations

import base64
import logging

import pytest

from grouptun.cli import main as cli

from grouptun.control import credmigrate

from grouptun.control import keystore
from grouptun.control import client as provider_client_mod
from grouptun.core.jointoken import JoinToken
from grouptun.errors import KeystoreError
from grouptun.control.client import ProviderClient

from .fakes import CREDENTIAL, FAST, FakeProvider, FakeTransport, legacy_keystore


def encodings(secret: bytes) -> list[bytes]:
    """How a secret could show up in a request: raw, base64 (both alphabets, unpadded too), hex."""
    b64, url = base64.b64encode(secret), base64.urlsafe_b64encode(secret)
    return [secret, b64, b64.rstrip(b"="), url, url.rstrip(b"="), secret.hex().encode()]


def leaked(transport: FakeTransport, secret: bytes) -> list[str]:
    """The requests (method and url) in which ``secret`` appears anywhere: url, headers or body."""
    hits = []
    for method, url, headers, body in transport.sent:
        text = url.encode() + b"\n" + b"\n".join(f"{k}: {v}".encode() for k, v in headers.items()) + b"\n" + body
        if any(form in text for form in encodings(secret)):
            hits.append(f"{method} {url}")
    return hits


def member_keystore(tmp_path, provider: FakeProvider, name: str = "alice", legacy: bool = False):
    """alice's keystore as join wrote it (v2) or as the old grouptun did (v1), and the provider's record."""
    path = tmp_path / "keys.enc"
    keys = provider.members[name]
    if legacy:
        keystore.write_atomic(path, legacy_keystore(keys, CREDENTIAL), 0o600)
        provider.secrets[name] = CREDENTIAL  # the old provider stored a hash of the credential itself
    else:
        provider.secrets[name] = bytes(keystore.save(path, keys, bytearray(CREDENTIAL), FAST))
    return path


def start(path, provider: FakeProvider, transport: FakeTransport, name: str = "alice"):
    """What a daemon start does up to its first sealed salt, over HTTP: keystore, proof, start, salt."""
    keys = keystore.load(path, bytearray(CREDENTIAL))
    proof = credmigrate.proof_for(path, bytearray(CREDENTIAL), keys)
    client = ProviderClient("https://127.0.0.1:1", "00" * 32, "lan", name, keys.signing_key,
                            session_factory=transport.session)
    client.start(bytes(32))
    return proof, proof.fetch_salt(client, provider.epoch)


def salt_bodies(transport: FakeTransport) -> list[bytes]:
    return [body for _m, url, _h, body in transport.sent if url.endswith("/salt")]


def test_salt_requests_carry_the_authenticator_never_the_credential(tmp_path):
    provider = FakeProvider(["alice", "bob"])
    path = member_keystore(tmp_path, provider)
    transport = FakeTransport(provider, "alice")
    proof, sealed = start(path, provider, transport)
    assert len(sealed) == 1168 and not proof.migrating
    (body,) = salt_bodies(transport)
    assert b'"authenticator"' in body and b'"credential"' not in body
    keys = keystore.load(path, bytearray(CREDENTIAL))
    blob = path.read_bytes()
    from grouptun.control import credkeys  # noqa: PLC0415
    keyfile_key = bytes(credkeys.derive(CREDENTIAL, blob[14:30], FAST).keyfile_key)
    assert leaked(transport, CREDENTIAL) == [] and leaked(transport, keyfile_key) == []
    assert provider.secrets["alice"] == keys.authenticator


def test_join_sends_the_authenticator_never_the_credential(tmp_path, monkeypatch):
    monkeypatch.setattr(keystore, "DEFAULT_COST", FAST)
    provider = FakeProvider(["bob"])
    transport = FakeTransport(provider)
    monkeypatch.setattr(provider_client_mod, "pinned_session", transport.session)
    token = JoinToken("https://127.0.0.1:8443", "ab" * 32, provider.keys.fingerprint(),
                      base64.urlsafe_b64encode(bytes(32)).rstrip(b"=").decode())
    cred = tmp_path / "cred"
    cred.write_bytes(CREDENTIAL + b"\n")
    assert cli.main(["join", str(token), "--member", "carol", "--config-dir", str(tmp_path / "etc"),
                     "--state-dir", str(tmp_path / "var"), "--run-dir", str(tmp_path / "run"),
                     "--credential-file", str(cred), "--endpoint", "192.0.2.7:51820"]) == 0
    assert [url for _m, url, _h, _b in transport.sent] == ["https://127.0.0.1:8443/v1/enroll"]
    assert leaked(transport, CREDENTIAL) == []
    keys = keystore.load(tmp_path / "var" / "lan" / "keys.enc", bytearray(CREDENTIAL))
    assert provider.secrets["carol"] == keys.authenticator


def test_an_old_form_member_migrates_at_its_next_start(tmp_path):
    provider = FakeProvider(["alice", "bob"])
    path = member_keystore(tmp_path, provider, legacy=True)
    transport = FakeTransport(provider, "alice")
    proof, sealed = start(path, provider, transport)
    assert len(sealed) == 1168 and not proof.migrating and provider.migrated == ["alice"]
    assert path.read_bytes()[4] == keystore.VERSION and not credmigrate.staged_path(path).exists()
    keys = keystore.load(path, bytearray(CREDENTIAL))
    assert keys.ed25519_public == provider.members["alice"].ed25519_public
    assert provider.secrets["alice"] == keys.authenticator
    (body,) = salt_bodies(transport)  # the one request that still shows the credential: the migration
    assert b'"new_authenticator"' in body

    again = FakeTransport(provider, "alice")
    start(path, provider, again)
    assert leaked(again, CREDENTIAL) == [] and provider.migrated == ["alice"]


class Crash(BaseException):
    """The process dies here (nothing after it runs, no handler sees it)."""


def test_a_crash_after_staging_resumes_with_the_same_authenticator(tmp_path):
    provider = FakeProvider(["alice", "bob"])
    path = member_keystore(tmp_path, provider, legacy=True)
    keys = keystore.load(path, bytearray(CREDENTIAL))
    credmigrate.proof_for(path, bytearray(CREDENTIAL), keys)  # step 1, then the process dies
    staged = credmigrate.staged_path(path)
    first = staged.read_bytes()
    assert path.read_bytes()[4] == keystore.LEGACY_VERSION and provider.secrets["alice"] == CREDENTIAL

    proof, _ = start(path, provider, FakeTransport(provider, "alice"))
    assert not proof.migrating and path.read_bytes() == first  # the staged file, not a new one
    assert provider.secrets["alice"] == keystore.load(path, bytearray(CREDENTIAL)).authenticator


def test_a_crash_after_the_provider_registered_does_not_lock_the_member_out(tmp_path, monkeypatch):
    provider = FakeProvider(["alice", "bob"])
    path = member_keystore(tmp_path, provider, legacy=True)

    def die(staged, path):
        raise Crash

    with monkeypatch.context() as patch:
        patch.setattr(credmigrate, "_commit", die)
        with pytest.raises(Crash):
            start(path, provider, FakeTransport(provider, "alice"))
    staged = credmigrate.staged_path(path)
    assert provider.migrated == ["alice"] and provider.secrets["alice"] != CREDENTIAL  # step 2 done
    assert path.read_bytes()[4] == keystore.LEGACY_VERSION and staged.exists()         # step 3 not

    proof, sealed = start(path, provider, FakeTransport(provider, "alice"))  # the next start
    assert len(sealed) == 1168 and not proof.migrating and not staged.exists()
    assert provider.secrets["alice"] == keystore.load(path, bytearray(CREDENTIAL)).authenticator
    later = FakeTransport(provider, "alice")
    start(path, provider, later)
    assert leaked(later, CREDENTIAL) == []


def test_a_failed_rename_is_retried_at_the_next_salt(tmp_path, monkeypatch, caplog):
    provider = FakeProvider(["alice", "bob"])
    path = member_keystore(tmp_path, provider, legacy=True)
    real_commit = credmigrate._commit
    calls = []

    def full_disk_once(staged, path):
        calls.append(staged)
        if len(calls) == 1:
            raise OSError(28, "No space left on device")
        real_commit(staged, path)

    monkeypatch.setattr(credmigrate, "_commit", full_disk_once)
    with caplog.at_level(logging.ERROR, logger="grouptun.control.credential"):
        proof, _ = start(path, provider, FakeTransport(provider, "alice"))
    assert proof.migrating and "No space left" in caplog.text
    client = ProviderClient("https://127.0.0.1:1", "00" * 32, "lan", "alice", provider.members["alice"].signing_key,
                            session_factory=FakeTransport(provider, "alice").session)
    proof.fetch_salt(client, provider.open_epoch())
    assert not proof.migrating and path.read_bytes()[4] == keystore.VERSION and len(calls) == 2


def test_a_wrong_credential_on_an_old_form_keystore_fails_as_before_and_stages_nothing(tmp_path):
    provider = FakeProvider(["alice", "bob"])
    path = member_keystore(tmp_path, provider, legacy=True)
    with pytest.raises(KeystoreError, match="wrong credential"):
        keystore.load(path, bytearray(b"not the credential"))
    assert not credmigrate.staged_path(path).exists()


def test_a_staged_file_with_other_keys_is_refused(tmp_path):
    provider = FakeProvider(["alice", "bob"])
    path = member_keystore(tmp_path, provider, legacy=True)
    keystore.save(credmigrate.staged_path(path), keystore.MemberKeys.generate(), bytearray(CREDENTIAL), FAST)
    with pytest.raises(KeystoreError, match="other keys"):
        credmigrate.proof_for(path, bytearray(CREDENTIAL), keystore.load(path, bytearray(CREDENTIAL)))
