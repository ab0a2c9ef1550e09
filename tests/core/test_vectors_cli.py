"""``grouptun vectors FILE``: reproduces the published files; malformed input -> exit 2, one line."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest

from grouptun.cli import main as cli
from grouptun.vectors import CAPSULE_OUTPUTS, PROTOCOL_OUTPUTS


def run_cli(capsys, path, *extra):
    code = cli.main(["vectors", *extra, str(path)])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("name", ["protocol-v1.json", "capsules-v1.json"])
def test_published_file_reproduced_byte_for_byte(vectors_dir, capsys, name):
    code, out, err = run_cli(capsys, vectors_dir / name)
    assert (code, err) == (0, "")
    assert out == (vectors_dir / name).read_text()


@pytest.mark.parametrize("name, kind, outputs", [
    ("protocol-v1.json", "vectors", PROTOCOL_OUTPUTS), ("capsules-v1.json", "capsules", CAPSULE_OUTPUTS)])
def test_outputs_absent_are_computed(vectors_dir, capsys, tmp_path, name, kind, outputs):
    doc = json.loads((vectors_dir / name).read_text())
    for vector in doc[kind]:
        for field in outputs:
            del vector[field]
    path = tmp_path / name
    path.write_text(json.dumps(doc))
    code, out, err = run_cli(capsys, path)
    assert code == 0 and out == (vectors_dir / name).read_text()


def test_check_flags_a_wrong_output(vectors_dir, capsys, tmp_path):
    doc = json.loads((vectors_dir / "protocol-v1.json").read_text())
    doc["vectors"][4]["iv"] = "00" * 12
    path = tmp_path / "wrong.json"
    path.write_text(json.dumps(doc))
    code, out, err = run_cli(capsys, path, "--check")
    assert code == 1 and "vectors[4].iv" in err
    assert out == (vectors_dir / "protocol-v1.json").read_text()  # printed with the right value


def test_keepalive_vector_seals_the_receiver_index_it_is_given(vectors_dir, capsys, tmp_path):
    doc = _protocol(vectors_dir)
    keepalive = next(v for v in doc["vectors"] if v["type"] == 2)
    keepalive["payload"] = "0002"  # u16(j), PROTOCOL.md 5
    for field in PROTOCOL_OUTPUTS:
        del keepalive[field]
    path = tmp_path / "keepalive.json"
    path.write_text(json.dumps(doc))
    code, out, err = run_cli(capsys, path)
    assert (code, err) == (0, "")
    computed = next(v for v in json.loads(out)["vectors"] if v["type"] == 2)
    assert len(bytes.fromhex(computed["packet"])) == 12 + 2 + 16


def _protocol(vectors_dir):
    return json.loads((vectors_dir / "protocol-v1.json").read_text())


def _capsules(vectors_dir):
    return json.loads((vectors_dir / "capsules-v1.json").read_text())


def _edit(doc, kind, index, field, value):
    doc = copy.deepcopy(doc)
    if value is _DELETE:
        del doc[kind][index][field]
    else:
        doc[kind][index][field] = value
    return doc


_DELETE = object()
PROTOCOL_CASES = [
    (0, "salt", _DELETE, "missing"),
    (1, "suite", 3, "outside 1..2"),
    (1, "suite", "1", "integer"),
    (1, "suite", True, "integer"),
    (2, "epoch", 1.0, "integer"),
    (2, "epoch", 2**32, "outside"),
    (2, "epoch", -1, "outside"),
    (3, "nonce_start", 2**32, "outside"),
    (3, "group_size", 1, "outside 2..65535"),
    (3, "group_size", 65536, "outside 2..65535"),
    (4, "member_index", 3, "outside 0..2"),
    (4, "n", 2**28, "outside 0..268435455"),
    (4, "type", 3, "outside 1..2"),
    (5, "shared_secret", "00" * 31, "32 bytes"),
    (5, "group_id", "00" * 17, "16 bytes"),
    (5, "salt", "zz" * 32, "hex"),
    (5, "salt", "0" * 63, "hex"),
    (5, "salt", "AB" * 32, "lowercase"),
    (5, "payload", "00 11", "hex"),
    (6, "payload", None, "hex string"),
]


@pytest.mark.parametrize("index, field, value, words", PROTOCOL_CASES,
                         ids=[f"{c[1]}={str(c[2])[:8]}" for c in PROTOCOL_CASES])
def test_malformed_protocol_vector_exit_2_one_line(vectors_dir, capsys, tmp_path, index, field, value, words):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(_edit(_protocol(vectors_dir), "vectors", index, field, value)))
    code, out, err = run_cli(capsys, path)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and f"vectors[{index}].{field}:" in err and words in err


CAPSULE_CASES = [
    (0, "uid", "", "1..64"),
    (0, "uid", "x" * 65, "1..64"),
    (1, "capsule", "00" * 1167, "1168 bytes"),
    (1, "capsule", "00" * 1168, "does not open"),
    (2, "salt_capsule", _DELETE, "missing"),
    (2, "kem_seed", "00" * 32, "64 bytes"),
    (2, "epoch", 2**32, "outside"),
]


@pytest.mark.parametrize("index, field, value, words", CAPSULE_CASES,
                         ids=[f"{c[1]}={str(c[2])[:8]}" for c in CAPSULE_CASES])
def test_malformed_capsule_vector_exit_2_one_line(vectors_dir, capsys, tmp_path, index, field, value, words):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(_edit(_capsules(vectors_dir), "capsules", index, field, value)))
    code, out, err = run_cli(capsys, path)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and f"capsules[{index}].{field}:" in err and words in err


@pytest.mark.parametrize("text, words", [
    ("not json", "not JSON"),
    ("[]", "JSON object"),
    ('{"vectors": []}', "version: missing"),
    ('{"version": 2, "vectors": []}', "version: must be 1"),
    ('{"version": 1}', "neither"),
    ('{"version": 1, "vectors": {}}', "JSON array"),
    ('{"version": 1, "vectors": [7]}', "vectors[0]: must be a JSON object"),
    ('{"version": 1, "vectors": [{"suite": 1, "n": ' + "9" * 5000 + "}]}", "not usable JSON"),
    ("[" * 100000, "JSON"),
])
def test_malformed_documents(capsys, tmp_path, text, words):
    path = tmp_path / "bad.json"
    path.write_text(text)
    code, out, err = run_cli(capsys, path)
    assert code == 2 and out == "" and err.count("\n") == 1 and words in err


def test_missing_file(capsys, tmp_path):
    code, out, err = run_cli(capsys, tmp_path / "nope.json")
    assert code == 2 and "cannot read" in err and err.count("\n") == 1


def test_real_command_line(vectors_dir, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"version": 1, "vectors": [{"suite": 9}]}')
    done = subprocess.run([sys.executable, "-m", "grouptun.cli.main", "vectors", str(bad)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == "grouptun vectors: vectors[0].suite: 9 outside 1..2\n"
    good = subprocess.run([sys.executable, "-m", "grouptun.cli.main", "vectors", str(vectors_dir / "protocol-v1.json")],
                          capture_output=True, text=True, timeout=60)
    assert good.returncode == 0 and good.stdout == (vectors_dir / "protocol-v1.json").read_text()
