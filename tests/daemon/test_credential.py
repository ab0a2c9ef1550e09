"""Credential sources: explicit file, systemd directory, config file, prompt; never written."""

from __future__ import annotations

import pytest

from grouptun.control import credential
from grouptun.errors import CredentialError


def test_file_strips_one_trailing_newline(tmp_path):
    f = tmp_path / "cred"
    f.write_bytes(b"s3cret-value\n")
    assert credential.read_file(f) == bytearray(b"s3cret-value")
    f.write_bytes(b"s3cret-value\r\n")
    assert credential.read_file(f) == bytearray(b"s3cret-value")


def test_file_bounds_and_absence(tmp_path):
    f = tmp_path / "cred"
    f.write_bytes(b"short")
    with pytest.raises(CredentialError, match="8..1024"):
        credential.read_file(f)
    f.write_bytes(b"x" * 2000)
    with pytest.raises(CredentialError, match="8..1024"):
        credential.read_file(f)
    with pytest.raises(CredentialError, match="cannot read"):
        credential.read_file(tmp_path / "absent")


def test_systemd_directory_prefers_group_specific_name(tmp_path):
    (tmp_path / "grouptun").write_bytes(b"generic-credential")
    env = {"CREDENTIALS_DIRECTORY": str(tmp_path)}
    assert credential.from_systemd("lan", env) == bytearray(b"generic-credential")
    (tmp_path / "grouptun-lan").write_bytes(b"lan-credential")
    assert credential.from_systemd("lan", env) == bytearray(b"lan-credential")
    assert credential.from_systemd("lan", {}) is None


def test_order_explicit_then_systemd_then_config_then_prompt(tmp_path):
    explicit, conf, sysd = tmp_path / "e", tmp_path / "c", tmp_path / "sd"
    explicit.write_bytes(b"explicit-cred")
    conf.write_bytes(b"config-cred!")
    sysd.mkdir()
    (sysd / "grouptun-lan").write_bytes(b"systemd-cred")
    env = {"CREDENTIALS_DIRECTORY": str(sysd)}
    never = lambda _: pytest.fail("must not prompt")  # noqa: E731
    assert credential.obtain("lan", explicit, conf, environ=env, ask=never) == b"explicit-cred"
    assert credential.obtain("lan", None, conf, environ=env, ask=never) == b"systemd-cred"
    assert credential.obtain("lan", None, conf, environ={}, ask=never) == b"config-cred!"
    got = credential.obtain("lan", None, None, environ={}, ask=lambda _: "typed-credential", interactive=True)
    assert got == b"typed-credential"


def test_prompt_confirm_must_match_and_needs_a_terminal():
    answers = iter(["first-answer", "other-answer"])
    with pytest.raises(CredentialError, match="differ"):
        credential.prompt(confirm=True, ask=lambda _: next(answers), interactive=True)
    with pytest.raises(CredentialError, match="no credential"):
        credential.prompt(interactive=False)


def test_wipe_zeroes():
    buf = bytearray(b"secret-secret")
    credential.wipe(buf)
    assert buf == bytearray(len(buf))
