"""Sealed data between members in namespaces: a 200 MiB file sealed to all while member c is down, fetched by c
when it is back and compared by hash; the provider's files hold no plaintext and no data key (the key recovered
on a member); a tampered blob and a removed member are refused with clear errors; only the sender deletes.

Peak RSS of `grouptun seal` and `grouptun unseal` (``/usr/bin/time -v``) is printed, not asserted.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import sqlite3

import pytest

from grouptun.lab.mesh import GROUPTUN

pytestmark = [pytest.mark.root, pytest.mark.slow,
              pytest.mark.skipif(not os.path.exists("/usr/bin/time"), reason="needs /usr/bin/time for peak RSS")]
LAB_TAG = "sd"
SIZE = 200 * 1024 * 1024


def member_args(mesh, name: str) -> list[str]:
    m = mesh.members[name]
    return ["--config-dir", str(m.config_dir), "--credential-file", str(m.credential_file)]


def timed(lab, mesh, name: str, *args: str, timeout: float = 300.0):
    """(process, peak RSS in MiB) of ``grouptun ARGS`` on ``name``."""
    proc = lab.exec(name, ["/usr/bin/time", "-v", *GROUPTUN, *args, *member_args(mesh, name)], timeout=timeout,
                    check=False)
    found = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    return proc, (int(found.group(1)) / 1024 if found else float("nan"))


def write_file(path, size: int) -> str:
    digest = hashlib.sha256()
    with open(path, "wb") as out:
        for i in range(size // (1024 * 1024)):
            block = hashlib.sha256(i.to_bytes(8, "big")).digest() * 32768  # 1 MiB, distinct per MiB
            digest.update(block)
            out.write(block)
    return digest.hexdigest()


def sha256_of(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def recover_key(mesh, name: str, data_id: str) -> bytes:
    """The data key, opened on member ``name`` with its own key file (what the provider must never hold)."""
    from grouptun import config
    from grouptun.control import credential
    from grouptun.control import keystore
    from grouptun.core import sealeddata

    m = mesh.members[name]
    keys = keystore.load(config.load(m.config).keystore_path, credential.read_file(m.credential_file))
    with sqlite3.connect(mesh.provider_dir / "provider.db") as db:
        first = db.execute("SELECT p.bytes FROM sealed_parts p JOIN sealed s ON s.id = p.blob "
                           "WHERE s.data_id = ? AND p.part = 0", (bytes.fromhex(data_id),)).fetchone()[0]
    header, _ = sealeddata.parse_header(first)
    return bytes(sealeddata.unwrap_key(keys.kem, header, name))


def provider_files_contain(mesh, needles: list[bytes]) -> list[bytes]:
    found = []
    for root, _, files in os.walk(mesh.provider_dir):
        for file in files:
            with open(os.path.join(root, file), "rb") as handle:
                content = handle.read()
            found += [n for n in needles if n in content]
    return found


def test_a_file_sealed_to_all_reaches_the_member_that_was_down(lab_mesh, tmp_path):
    lab, mesh = lab_mesh
    work = tmp_path / "sealed"
    work.mkdir()
    os.chmod(tmp_path, 0o755)
    source, fetched = work / "plan.bin", work / "fetched.bin"
    digest = write_file(source, SIZE)
    mesh.down("c")
    proc, seal_rss = timed(lab, mesh, "a", "seal", mesh.group, str(source), "--all", "--ttl", "1d")
    assert proc.returncode == 0, proc.stderr[-800:]
    data_id = proc.stdout.strip()
    assert re.fullmatch(r"[0-9a-f]{32}", data_id)
    mesh.up("c")
    mesh.wait_ready("c")
    listed = mesh.member_cli("c", "sealed", "list", mesh.group, *member_args(mesh, "c")).stdout
    assert data_id in listed and "from a" in listed
    proc, unseal_rss = timed(lab, mesh, "c", "unseal", mesh.group, data_id, "-o", str(fetched))
    assert proc.returncode == 0, proc.stderr[-800:]
    assert sha256_of(fetched) == digest
    print(f"\n[200 MiB: seal peak RSS {seal_rss:.0f} MiB, unseal peak RSS {unseal_rss:.0f} MiB]")

    key = recover_key(mesh, "c", data_id)
    with open(source, "rb") as handle:
        handle.seek(SIZE // 2)
        sample = handle.read(64)
    assert provider_files_contain(mesh, [key, sample, sample[:32]]) == []
    assert provider_files_contain(mesh, [bytes.fromhex(data_id)]) != []  # the grep does see the database's bytes

    with sqlite3.connect(mesh.provider_dir / "provider.db") as db:  # one bit of one part flipped at rest
        blob, part, raw = db.execute("SELECT p.blob, p.part, p.bytes FROM sealed_parts p JOIN sealed s "
                                     "ON s.id = p.blob WHERE s.data_id = ? AND p.part = 20",
                                     (bytes.fromhex(data_id),)).fetchone()
        db.execute("UPDATE sealed_parts SET bytes = ? WHERE blob = ? AND part = ?",
                   (raw[:1000] + bytes([raw[1000] ^ 1]) + raw[1001:], blob, part))
    tampered = work / "tampered.bin"
    proc = mesh.member_cli("b", "unseal", mesh.group, data_id, "-o", str(tampered), *member_args(mesh, "b"),
                           check=False)
    assert proc.returncode == 65 and "altered, reordered or truncated" in proc.stderr, proc.stderr
    assert not tampered.exists() and not [p for p in os.listdir(work) if p.startswith(".tampered")]

    mesh.remove_member("b")
    proc = mesh.member_cli("b", "sealed", "list", mesh.group, *member_args(mesh, "b"), check=False)
    assert proc.returncode != 0 and "removed" in proc.stderr, proc.stderr  # 410: the provider tells a removed member

    proc = mesh.member_cli("c", "sealed", "delete", mesh.group, data_id, *member_args(mesh, "c"), check=False)
    assert proc.returncode != 0 and "only the member that sealed it deletes" in proc.stderr, proc.stderr
    mesh.member_cli("a", "sealed", "delete", mesh.group, data_id, *member_args(mesh, "a"))
    assert data_id not in mesh.member_cli("c", "sealed", "list", mesh.group, *member_args(mesh, "c")).stdout
    with sqlite3.connect(mesh.provider_dir / "provider.db") as db:
        assert db.execute("SELECT count(*) FROM sealed_parts").fetchone() == (0,)
    shutil.rmtree(work)
