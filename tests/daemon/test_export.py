"""``grouptun export``: two daemons hand out the same products; bad requests exit 2; values never logged."""

from __future__ import annotations

import json
import logging

import pytest

from grouptun.cli import main as cli

from grouptun.ops import ctlsocket as control
from grouptun.errors import ControlError, UsageError
from grouptun.apps.products import check_request, render

from .fakes import FakeProvider
from .test_daemon import Member, start_pair


def export(capsys, member, *args) -> tuple[int, str, str]:
    code = cli.main(["export", "lan", "--socket", str(member.config.paths.control_socket), *args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def pair(tmp_path):
    provider = FakeProvider(["alice", "bob"])
    alice, bob = Member(provider, "alice", tmp_path), Member(provider, "bob", tmp_path)
    try:
        start_pair(alice, bob)
        alice.wait_for(lambda st: any(e["sending"] and e["epoch"] == 2 for e in st["session"]["epochs"]),
                       "alice sends on epoch 2")
        yield alice, bob
    finally:
        for m in (alice, bob):
            if m.thread.is_alive():
                control.request(m.config.paths.control_socket, "down")
                m.thread.join(10)


def test_both_members_get_the_same_products_and_the_value_is_not_logged(pair, capsys, caplog):
    caplog.set_level(logging.DEBUG)
    alice, bob = pair
    answers = []
    for member in (alice, bob):
        code, out, err = export(capsys, member, "--label", "web", "--type", "tls-psk", "--json")
        assert (code, err) == (0, "")
        answers.append(json.loads(out))
    assert answers[0] == answers[1]
    answer = answers[0]
    assert answer["identity"] == "grouptun:lan:web:2" and answer["epoch"] == 2 and len(answer["value"]) == 64
    assert answer["entropy_bits"] == 256.0
    code, out, _ = export(capsys, alice, "--label", "web", "--type", "tls-psk", "--format", "openssl-psk")
    assert out == f"-psk_identity grouptun:lan:web:2 -psk {answer['value']}\n"
    for type_, extra, lines in (("password", ["--length", "30"], 1), ("key", [], 1), ("ed25519", [], 6),
                                ("x25519", ["--format", "hex"], 2)):
        outs = [export(capsys, m, "--label", "svc", "--type", type_, *extra)[1] for m in (alice, bob)]
        assert outs[0] == outs[1] and outs[0].count("\n") == lines, (type_, outs[0])
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "'grouptun/1 tls-psk web' (epoch 2, openssl-psk)" in logged
    assert answer["value"] not in logged and outs[0].split("\n")[0] not in logged


def test_the_previous_epoch_is_given_during_grace_and_differs(pair, capsys):
    alice, bob = pair
    _, current, _ = export(capsys, alice, "--label", "web", "--type", "tls-psk", "--json")
    _, previous, _ = export(capsys, alice, "--label", "web", "--type", "tls-psk", "--json", "--epoch", "previous")
    current, previous = json.loads(current), json.loads(previous)
    assert previous["epoch"] == 1 and previous["identity"] == "grouptun:lan:web:1"
    assert previous["value"] != current["value"]
    code, _, err = export(capsys, bob, "--label", "web", "--epoch", "previous")  # bob began with epoch 2
    assert code == 3 and "no previous epoch held" in err


@pytest.mark.parametrize("args, message", [
    (["--type", "rsa"], "unknown type 'rsa'"),
    (["--type", "password", "--format", "hex"], "format 'hex' does not apply to type password"),
    (["--type", "key", "--format", "openssl-psk"], "does not apply to type key"),
    (["--type", "tls-psk", "--length", "16"], "bad --length"),
    (["--epoch", "next"], "epoch 'next' unknown"),
])
def test_bad_requests_exit_2_without_asking_the_daemon(tmp_path, capsys, args, message):
    code = cli.main(["export", "lan", "--socket", str(tmp_path / "absent.sock"), "--label", "web", *args])
    _, err = capsys.readouterr()
    assert code == UsageError.exit_code == 2 and message in err and err.count("\n") == 1


@pytest.mark.parametrize("label", ["has space", "a:b", "x" * 65, "", "caf\u00e9"])
def test_bad_labels_exit_2(tmp_path, capsys, label):
    code = cli.main(["export", "lan", "--socket", str(tmp_path / "absent.sock"), "--label", label])
    assert code == 2 and "bad --label" in capsys.readouterr().err


def test_the_daemon_checks_the_request_again(pair):
    alice, _ = pair
    path = alice.config.paths.control_socket
    with pytest.raises(ControlError, match="unknown type"):
        control.request(path, "export", args={"type": "rsa", "name": "web"})
    with pytest.raises(ControlError, match="malformed export request"):
        control.request(path, "export", args={"type": "key", "name": "web", "context": "zz"})
    wanted = check_request("key", "web", b"", 16).to_json()
    assert len(control.request(path, "export", args=wanted)["value"]) == 32


def test_render_formats_of_a_key_pair():
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    from grouptun.core.exporter import derive_product

    product = derive_product(bytes(32), "ed25519", "ssh")
    pem = render(product, "pem")
    key = load_pem_private_key(pem.split("-----END PRIVATE KEY-----")[0].encode() + b"-----END PRIVATE KEY-----\n",
                               None)
    assert key.public_key().public_bytes_raw() == product.public
    assert render(product, "base64").count("\n") == 1


def test_a_stream_of_one_time_keys_is_the_same_on_both_members(pair, capsys, caplog):
    caplog.set_level(logging.INFO)
    alice, bob = pair
    outs = [export(capsys, m, "--label", "otk", "--length", "16", "--count", "4")[1] for m in (alice, bob)]
    keys = outs[0].split()
    assert outs[0] == outs[1] and len(keys) == 4 == len(set(keys)) and all(len(k) == 32 for k in keys)
    assert "'grouptun/1 key otk stream' (epoch 2, hex, 4 products)" in caplog.text
    code, _, err = export(capsys, alice, "--label", "web", "--type", "tls-psk", "--count", "2")
    assert code == 2 and "bad --count" in err


def _publish(provider, members, rules) -> None:
    """Sign ``rules`` (a JSON object, None: no key) into a new archive and wait until ``members`` hold it."""
    from grouptun.core.exportrules import from_json

    provider.export_rules = None if rules is None else from_json(rules)
    provider.publish()
    version = provider.version
    for member in members:
        member.wait_for(lambda st: st["control"]["archive_version"] == version, f"archive {version}")


def test_an_export_rule_refuses_a_member_without_the_attributes(pair, capsys, caplog):
    caplog.set_level(logging.INFO)
    alice, bob = pair
    alice.provider.attributes = {"alice": (("role", "db"), ("site", "hel")), "bob": (("role", "web"),)}
    _publish(alice.provider, pair, {"db-admin": "role=db"})
    code, allowed, err = export(capsys, alice, "--label", "db-admin", "--type", "password")
    assert (code, err) == (0, "") and len(allowed.strip()) == 24
    for extra in ([], ["--epoch", "previous"], ["--count", "2"], ["--type", "tls-psk"]):
        code, out, err = export(capsys, bob, "--label", "db-admin", *extra)
        assert code == 77 and out == "", extra
        assert ("export refused: label 'db-admin' is limited to members with role=db (export rule); "
                "this member's signed attributes: role=web") in err
    assert export(capsys, bob, "--label", "web")[0] == 0  # a label without a rule stays open to every member
    refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert refusals and all("'db-admin'" in m for m in refusals)
    assert allowed.strip() not in caplog.text
    _publish(alice.provider, pair, None)  # the rule removed: open again, no new epoch needed
    code, out, _ = export(capsys, bob, "--label", "db-admin", "--type", "password")
    assert code == 0 and out == allowed


def test_a_refused_export_over_the_control_socket_carries_its_exit_status(pair):
    alice, bob = pair
    _publish(alice.provider, pair, {"web": "role=web"})  # nobody has role=web
    with pytest.raises(ControlError) as info:
        control.request(bob.config.paths.control_socket, "export", args=check_request("key", "web", b"").to_json())
    assert info.value.exit_code == 77 and "signed attributes: none" in str(info.value)
