"""CLI commands without a real provider: join (fake enroll), status/down against a live daemon."""

from __future__ import annotations

import base64
import os
import stat
import types

import pytest

from grouptun import config

from grouptun.cli import main as cli

from grouptun.control import keystore
from grouptun.core.jointoken import JoinToken
from grouptun.control.client import EnrollResult, ProviderClient

from .fakes import CREDENTIAL, FakeProvider


@pytest.fixture
def fake_enroll(monkeypatch):
    # join's Argon2id cost is the real default elsewhere (test_keystore checks it); cheap here
    monkeypatch.setattr(keystore, "DEFAULT_COST", keystore.KdfCost(64, 1, 1))
    provider = FakeProvider(["bob", "carol"])
    calls = []

    def enroll(token, name, signing_key, kem_public, authenticator, endpoints):
        ed25519_public = signing_key.public_key().public_bytes_raw()  # join hands over the private key
        calls.append(dict(token=token, name=name, authenticator=authenticator, endpoints=endpoints,
                          ed=ed25519_public, kem=kem_public))
        provider.members[name] = types.SimpleNamespace(ed25519_public=ed25519_public, kem_public=kem_public)
        provider.open_epoch()
        return EnrollResult("lan", name, 1, provider.addresses[name], provider.keys, provider.signed)

    monkeypatch.setattr(ProviderClient, "enroll", staticmethod(enroll))
    token = JoinToken("https://127.0.0.1:8443", "ab" * 32, provider.keys.fingerprint(),
                      base64.urlsafe_b64encode(bytes(32)).rstrip(b"=").decode())
    return provider, calls, str(token)


def join_args(tmp_path, token, *extra):
    cred = tmp_path / "cred"
    cred.write_bytes(CREDENTIAL + b"\n")
    return ["join", token, "--member", "carol", "--config-dir", str(tmp_path / "etc"),
            "--state-dir", str(tmp_path / "var"), "--run-dir", str(tmp_path / "run"),
            "--credential-file", str(cred), *extra]


def test_join_writes_config_and_encrypted_keys(tmp_path, fake_enroll, capsys):
    provider, calls, token = fake_enroll
    assert cli.main(join_args(tmp_path, token, "--endpoint", "192.0.2.7:51820")) == 0
    (call,) = calls
    assert call["name"] == "carol"
    assert call["endpoints"] == ["192.0.2.7:51820"]
    cfg = config.load(tmp_path / "etc" / "lan.toml")
    assert cfg.group.member == "carol" and cfg.group.group_id == provider.group_id
    assert cfg.group.addresses == provider.addresses["carol"]
    assert cfg.provider.keys_hash == provider.keys.fingerprint()
    assert cfg.paths.control_socket == tmp_path / "run" / "lan.sock"
    assert cfg.network.endpoints == ("192.0.2.7:51820",)
    keys_path = tmp_path / "var" / "lan" / "keys.enc"
    assert stat.S_IMODE(os.stat(keys_path).st_mode) == 0o600
    keys = keystore.load(keys_path, bytearray(CREDENTIAL))
    assert keys.ed25519_public == call["ed"] and keys.kem_public == call["kem"]
    assert call["authenticator"] == keys.authenticator  # what the key file derives; not the credential
    for path in (keys_path, tmp_path / "etc" / "lan.toml"):
        assert CREDENTIAL not in path.read_bytes()
    assert "grouptun up lan" in capsys.readouterr().out


def test_join_refuses_an_existing_name_before_spending_the_token(tmp_path, fake_enroll, capsys):
    provider, calls, token = fake_enroll
    assert cli.main(join_args(tmp_path, token, "--name", "lan")) == 0
    assert cli.main(join_args(tmp_path, token, "--name", "lan")) == 78
    assert len(calls) == 1 and "already configured" in capsys.readouterr().err


def test_join_writes_the_advertised_routes(tmp_path, fake_enroll):
    provider, calls, token = fake_enroll
    assert cli.main(join_args(tmp_path, token, "--advertise-route", "192.168.5.0/24",
                              "--advertise-route", "fd99:5::/64")) == 0
    assert config.load(tmp_path / "etc" / "lan.toml").network.advertise_routes == ("192.168.5.0/24", "fd99:5::/64")


def test_join_default_endpoint_is_our_address_towards_the_provider(tmp_path, fake_enroll):
    provider, calls, token = fake_enroll
    assert cli.main(join_args(tmp_path, token, "--listen-port", "51999")) == 0
    assert calls[0]["endpoints"] == ["127.0.0.1:51999"]


@pytest.mark.parametrize("extra,code", [(["--endpoint", "nope"], 78), (["--listen-port", "0"], 78),
                                        (["--name", "bad name"], 78), (["--listen-address", "nope"], 78),
                                        (["--advertise-route", "192.168.5.1/24"], 78)])
def test_join_bad_arguments_spend_nothing(tmp_path, fake_enroll, extra, code):
    provider, calls, token = fake_enroll
    assert cli.main(join_args(tmp_path, token, *extra)) == code
    assert calls == [] and not (tmp_path / "etc").exists()


def test_status_and_down_without_daemon(tmp_path, capsys):
    assert cli.main(["status", "--run-dir", str(tmp_path)]) == 3
    assert cli.main(["down", "lan", "--run-dir", str(tmp_path)]) == 3
    assert "no grouptun daemon" in capsys.readouterr().err


def test_join_under_another_local_name_keeps_the_provider_group_for_its_urls(tmp_path, fake_enroll):
    from grouptun.daemon import _default_client

    provider, calls, token = fake_enroll
    assert cli.main(join_args(tmp_path, token, "--name", "home")) == 0
    cfg = config.load(tmp_path / "etc" / "home.toml")
    assert cfg.group.name == "home" and cfg.group.interface == "gt-home"
    assert cfg.provider_group == "lan"  # the group's name at the provider (EnrollResult.group)
    keys = keystore.load(cfg.keystore_path, bytearray(CREDENTIAL))
    client = _default_client(cfg, keys)
    assert client.group == "lan" and client._path == "/v1/groups/lan"


def test_up_with_a_wrong_credential_exits_77_which_the_units_do_not_retry(tmp_path, fake_enroll, capsys):
    from grouptun.ops import logsetup
    provider, calls, token = fake_enroll
    assert cli.main(join_args(tmp_path, token)) == 0
    wrong = tmp_path / "wrong"
    wrong.write_bytes(b"not the credential\n")
    try:
        code = cli.main(["up", "lan", "--config-dir", str(tmp_path / "etc"), "--credential-file", str(wrong)])
    finally:
        logsetup.teardown_logging()
    assert code == 77 and "keystore does not open" in capsys.readouterr().err
    unit = (config.Path(__file__).resolve().parents[2] / "systemd" / "grouptun@.service").read_text()
    prevent = next(line for line in unit.splitlines() if line.startswith("RestartPreventExitStatus="))
    assert "77" in prevent.split("=", 1)[1].split()


# --- the join token from a file or stdin (issue 17: out of ps and shell history) ------------------------


def _without_token(args):
    return [a for a in args if not a.startswith("gtjoin1-")]


def test_join_reads_the_token_from_a_file(tmp_path, fake_enroll):
    provider, calls, token = fake_enroll
    path = tmp_path / "token"
    path.write_text(token + "\n")
    assert cli.main(_without_token(join_args(tmp_path, token)) + ["--token-file", str(path)]) == 0
    assert [c["name"] for c in calls] == ["carol"] and str(calls[0]["token"]) == token


def test_join_reads_the_token_from_stdin(tmp_path, fake_enroll, monkeypatch):
    import io

    provider, calls, token = fake_enroll
    monkeypatch.setattr("sys.stdin", io.StringIO(token + "\n"))
    assert cli.main(_without_token(join_args(tmp_path, token)) + ["--token-file", "-"]) == 0
    assert [c["name"] for c in calls] == ["carol"]


@pytest.mark.parametrize("how", ["both", "neither", "empty", "missing"])
def test_join_token_file_mistakes_name_the_option_and_spend_nothing(tmp_path, fake_enroll, capsys, how):
    provider, calls, token = fake_enroll
    empty = tmp_path / "empty"
    empty.write_text("\n")
    args = {"both": join_args(tmp_path, token) + ["--token-file", str(empty)],
            "neither": _without_token(join_args(tmp_path, token)),
            "empty": _without_token(join_args(tmp_path, token)) + ["--token-file", str(empty)],
            "missing": _without_token(join_args(tmp_path, token)) + ["--token-file", str(tmp_path / "nope")]}[how]
    assert cli.main(args) == 78
    assert "--token-file" in capsys.readouterr().err and calls == []
