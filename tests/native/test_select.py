"""Choosing the run cipher, and the protocol vectors through both paths."""

from __future__ import annotations

import json

import pytest

from grouptun import native

from grouptun.cli import main as cli

from grouptun.cli import vectors as cmd_vectors
from grouptun.errors import ConfigError
from grouptun.vectors import compute_document, mismatches

needs_native = pytest.mark.skipif(native.RunKey is None, reason=native.UNAVAILABLE or "")


@needs_native
@pytest.mark.parametrize("setting", ["native", "reference"])
def test_protocol_vectors_through_each_path(vectors_dir, setting):
    document = json.loads((vectors_dir / "protocol-v1.json").read_text())
    computed = compute_document(document, native.choose(setting).maker)
    assert mismatches(document, computed) == []
    assert computed == document
    suites = {v["suite"] for v in document["vectors"]}
    assert suites == {1, 2}  # both suites are in the file, so both go through the chosen path


@needs_native
@pytest.mark.parametrize("flag", ["native", "reference", "auto"])
def test_vectors_cli_cipher_flag_reproduces_the_file(vectors_dir, capsys, flag):
    path = vectors_dir / "protocol-v1.json"
    assert cli.main(["vectors", "--cipher", flag, "--check", str(path)]) == 0
    assert capsys.readouterr().out == path.read_text()


@pytest.mark.parametrize("env, expected", [(None, "auto"), ("reference", "reference"), ("Native", "native")])
def test_vectors_cli_honours_the_environment(vectors_dir, capsys, monkeypatch, env, expected):
    seen = []
    monkeypatch.setattr(native, "choose", lambda setting, key: seen.append((setting, key)) or native.Choice(None, ""))
    if env is None:
        monkeypatch.delenv(native.ENV, raising=False)
    else:
        monkeypatch.setenv(native.ENV, env)
    assert cli.main(["vectors", str(vectors_dir / "protocol-v1.json")]) == 0
    assert seen == [(expected, native.ENV)]
    monkeypatch.setenv(native.ENV, "reference")
    assert cli.main(["vectors", "--cipher", "native", str(vectors_dir / "protocol-v1.json")]) == 0
    assert seen[-1] == ("native", "--cipher")  # the flag wins over the environment


def test_vectors_cli_refuses_a_bad_environment_value(vectors_dir, capsys, monkeypatch):
    monkeypatch.setenv(native.ENV, "fastest")
    code = cli.main(["vectors", str(vectors_dir / "protocol-v1.json")])
    assert code == ConfigError.exit_code and native.ENV in capsys.readouterr().err


def test_choose(monkeypatch):
    if native.RunKey is not None:
        assert native.choose("auto").maker is native.RunKey and native.choose("auto").name == "native"
        assert native.choose("native").maker is native.RunKey
    reference = native.choose("reference")
    assert reference.maker is None and reference.name == "reference" and "forced" in reference.describe
    with pytest.raises(ConfigError) as info:
        native.choose("quick", "daemon.cipher")
    assert info.value.key == "daemon.cipher"
    # where the extension did not build or load: auto falls back, native is an error naming the setting
    monkeypatch.setattr(native, "RunKey", None)
    monkeypatch.setattr(native, "UNAVAILABLE", "the native run cipher is not built (test)")
    fallback = native.choose("auto")
    assert fallback.maker is None and "not built (test)" in fallback.describe
    with pytest.raises(ConfigError, match="not built") as info:
        native.choose("native", "daemon.cipher")
    assert info.value.key == "daemon.cipher"


def test_cmd_vectors_documents_the_setting():
    assert native.ENV in cmd_vectors.__doc__ and "--cipher" in cmd_vectors.__doc__
