"""[export] files: typed config, atomic 0600 files per epoch with the previous one during its grace, values never
logged; the daemon keeps them as the same products `grouptun export` gives."""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import os
import stat
import tomllib

import pytest

from grouptun import config

from grouptun.cli import main as cli

from grouptun.ops import ctlsocket as control

from grouptun.apps import exportfiles
from grouptun.errors import ConfigError
from grouptun.apps.products import check_request

from .fakes import FakeProvider
from .test_daemon import Member, start_pair

BASE = {"group": {"name": "lan", "member": "alice", "group_id": "00" * 16},
        "provider": {"url": "https://127.0.0.1:1", "tls_fingerprint": "00" * 32, "keys_hash": "00" * 32,
                     "ed25519_public": base64.b64encode(bytes(32)).decode(),
                     "mldsa65_public": base64.b64encode(bytes(1952)).decode()}}


@pytest.mark.parametrize("export, key, problem", [
    ({"files": [{"label": "web", "type": "rsa"}]}, "export.files[0]", "unknown type 'rsa'"),
    ({"files": [{"label": "we b"}]}, "export.files[0]", "bad --label"),
    ({"files": [{"label": "web", "type": "password", "format": "hex"}]}, "export.files[0]", "does not apply"),
    ({"files": [{"label": "web", "colour": "red"}]}, "export.files[0].colour", "unknown key"),
    ({"files": [{"type": "key"}]}, "export.files[0]", "label is required"),
    ({"files": [{"label": "a"}, {"label": "a", "type": "key"}]}, "export.files", "same type and label"),
    ({"dir": "relative/dir"}, "export.dir", "absolute path"),
    ({"owner": "no-such-user-gt"}, "export.owner", "no such user"),
    ({"group": 4_000_000_000}, "export.group", "no such group"),
    ({"mode": "0644"}, "export.mode", "unknown key"),
])
def test_bad_export_config_names_the_key(export, key, problem):
    with pytest.raises(ConfigError) as exc:
        config.parse({**BASE, "export": export})
    assert exc.value.key == key and problem in str(exc.value)


def test_export_config_is_typed_and_renders_back():
    parsed = config.parse({**BASE, "export": {"dir": "/run/x", "owner": 0, "files": [
        {"label": "web", "type": "tls-psk", "format": "openssl-psk"}, {"label": "b", "length": 16, "context": "c"}]}})
    assert parsed.export.files == (check_request("tls-psk", "web", b"", None, "openssl-psk"),
                                   check_request("key", "b", b"c", 16, None))
    assert (parsed.export.dir, parsed.export.uid, parsed.export.gid) == (exportfiles.Path("/run/x"), 0, 0)
    again = config.parse(tomllib.loads(config.render(dataclasses.replace(parsed, source=None))))
    assert again.export == parsed.export


@dataclasses.dataclass
class Held:
    epoch: int


def writer(tmp_path, chowned=None):
    cfg = exportfiles.ExportFiles(tmp_path / "export", 1234, 5678, (check_request("key", "web", b""),))
    return exportfiles.ExportWriter(cfg, "lan", lambda request, state: f"value-of-{state.epoch}",
                                    chown=lambda path, uid, gid: chowned.append((os.path.basename(path), uid, gid))
                                    if chowned is not None else None)


def test_files_follow_the_epochs_atomically_and_the_previous_goes_after_its_grace(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="grouptun.export")
    chowned = []
    w = writer(tmp_path, chowned)
    current, previous = tmp_path / "export/key-web.current", tmp_path / "export/key-web.previous"
    assert w.refresh(None, None) is False and not current.exists()
    assert w.refresh(Held(1), None) is True
    assert current.read_text() == "value-of-1\n" and not previous.exists()
    assert stat.S_IMODE(current.stat().st_mode) == 0o600 and stat.S_IMODE(current.parent.stat().st_mode) == 0o700
    assert ("export", 1234, 5678) in chowned and (".key-web.current.tmp", 1234, 5678) in chowned
    assert w.refresh(Held(1), None) is False  # unchanged: not rewritten
    w.refresh(Held(2), Held(1))                # the switch: the old epoch's product kept during the grace
    assert (current.read_text(), previous.read_text()) == ("value-of-2\n", "value-of-1\n")
    w.refresh(Held(2), None)                   # the grace ended
    assert current.read_text() == "value-of-2\n" and not previous.exists()
    assert sorted(os.listdir(current.parent)) == ["key-web.current"]  # no temporary left behind
    logged = caplog.text
    assert "label 'web'" in logged and "value-of" not in logged
    w.remove()
    assert os.listdir(current.parent) == []


def test_the_daemon_writes_the_products_export_gives(tmp_path, capsys, caplog):
    caplog.set_level(logging.INFO)
    provider = FakeProvider(["alice", "bob"])
    alice, bob = Member(provider, "alice", tmp_path), Member(provider, "bob", tmp_path)
    files = exportfiles.ExportFiles(tmp_path / "alice-export", None, None,
                                    (check_request("tls-psk", "web", b"", None, "hex"),))
    alice.daemon.config = alice.config = dataclasses.replace(alice.config, export=files)
    try:
        start_pair(alice, bob)
        current, previous = tmp_path / "alice-export/tls-psk-web.current", tmp_path / "alice-export/tls-psk-web.previous"
        alice.wait_for(lambda st: previous.exists(), "alice's export files for epochs 2 and 1")
        answers = {}
        for epoch in ("current", "previous"):
            cli.main(["export", "lan", "--socket", str(alice.config.paths.control_socket), "--label", "web",
                      "--type", "tls-psk", "--json", "--epoch", epoch])
            answers[epoch] = json.loads(capsys.readouterr().out)["value"]
        assert current.read_text() == answers["current"] + "\n" and previous.read_text() == answers["previous"] + "\n"
        assert answers["current"] not in caplog.text and "export file tls-psk-web (label 'web')" in caplog.text
    finally:
        for m in (alice, bob):
            if m.thread.is_alive():
                control.request(m.config.paths.control_socket, "down")
                m.thread.join(10)
    assert not current.exists()  # a stopped daemon leaves no product behind


def test_the_documented_example_parses():
    text = (exportfiles.Path(config.__file__).with_name("example.toml")).read_text()
    block = text[text.index("# [export]\n"):]
    toml = "\n".join(line[2:] for line in block.splitlines() if line.startswith("# ")).replace('"www-data"', '"root"')
    parsed = exportfiles.parse(tomllib.loads(toml))
    assert [(r.type, r.name, r.format) for r in parsed.files] == [("tls-psk", "web", "openssl-psk"),
                                                                  ("key", "backup", "base64")]
    assert parsed.uid == 0 and parsed.dir == exportfiles.Path("/run/grouptun/lan/export")


def test_a_refused_label_is_not_written_its_files_go_and_it_comes_back_when_allowed(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="grouptun.export")
    w = writer(tmp_path)
    current = tmp_path / "export/key-web.current"
    w.refresh(Held(2), Held(1))
    assert current.exists()
    assert w.refresh(Held(2), Held(1), {"web": "label 'web' is limited to members with role=db"}) is True
    assert os.listdir(current.parent) == []  # both files gone, not left from before the rule
    assert "export file key-web (label 'web') not written: label 'web' is limited to members with role=db" \
        in caplog.text
    assert w.refresh(Held(2), Held(1), {"web": "same"}) is False  # unchanged: not logged again
    assert w.refresh(Held(2), Held(1)) is True and current.read_text() == "value-of-2\n"


def test_the_daemon_skips_export_files_its_attributes_do_not_allow(tmp_path, caplog):
    from grouptun.core.exportrules import from_json

    caplog.set_level(logging.INFO)
    provider = FakeProvider(["alice", "bob"])
    provider.export_rules = from_json({"db": "role=db"})
    alice, bob = Member(provider, "alice", tmp_path), Member(provider, "bob", tmp_path)
    files = exportfiles.ExportFiles(tmp_path / "alice-export", None, None,
                                    (check_request("key", "db", b""), check_request("key", "web", b"")))
    alice.daemon.config = alice.config = dataclasses.replace(alice.config, export=files)
    limited, open_ = tmp_path / "alice-export/key-db.current", tmp_path / "alice-export/key-web.current"
    try:
        start_pair(alice, bob)
        alice.wait_for(lambda st: open_.exists(), "alice's open export file")
        assert not limited.exists()
        assert "export file key-db (label 'db') not written: label 'db' is limited to members with role=db" \
            in caplog.text
        provider.attributes = {"alice": (("role", "db"),)}
        provider.publish()  # the attribute given: the same epoch, the file appears
        alice.wait_for(lambda st: limited.exists(), "alice's limited export file once she has role=db")
    finally:
        for m in (alice, bob):
            if m.thread.is_alive():
                control.request(m.config.paths.control_socket, "down")
                m.thread.join(10)
