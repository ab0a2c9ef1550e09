"""A TLS 1.3 service between two members with the group's PSK and no certificate anywhere.

``openssl s_server -nocert`` on member b and ``openssl s_client`` on member a,
over the tunnel addresses, each with the PSK and identity its own daemon
gives (``grouptun export lan --label web --type tls-psk --format
openssl-psk``). Short epoch timings (switch 1 s, grace 8 s) so that a rekey
and the end of its grace fit in the test.
"""

from __future__ import annotations

import shutil

import pytest

from grouptun.lab import LabError, wait_until
from grouptun.lab.mesh import current_epoch

pytestmark = [pytest.mark.root, pytest.mark.slow,
              pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")]
LAB_TAG = "tk"
GROUP_OPTIONS = ("--switch-delay", "1s", "--grace", "8s")
PORT = 4433


def export_psk(mesh, name: str, *extra: str) -> list[str]:
    proc = mesh.member_cli(name, "export", mesh.group, "--label", "web", "--type", "tls-psk",
                           "--format", "openssl-psk", "--run-dir", str(mesh.members[name].run_dir), *extra)
    words = proc.stdout.split()
    assert words[0::2] == ["-psk_identity", "-psk"], proc.stdout
    return words


class Server:
    """``openssl s_server -rev``: answers each line reversed, so data is seen to cross TLS."""

    def __init__(self, lab, mesh, name: str, psk: list[str], label: str) -> None:
        self.address = mesh.members[name].overlay(4)
        self.proc = lab.spawn(name, label, ["openssl", "s_server", "-accept", f"{self.address}:{PORT}",
                                            "-tls1_3", "-nocert", "-rev", *psk])
        if not self.proc.wait_for_output("ACCEPT", timeout=10.0):
            raise LabError(f"s_server on {name} did not start:\n{self.proc.tail(10)}")

    def stop(self) -> None:
        self.proc.stop()


def connect(lab, name: str, server: Server, psk: list[str]):
    return lab.exec(name, ["openssl", "s_client", "-connect", f"{server.address}:{PORT}", "-tls1_3",
                           "-brief", "-ign_eof", *psk], timeout=15.0, check=False,
                    input_text="grouptun psk\nCLOSE\n")  # -rev: CLOSE ends the connection


def wrong(psk: list[str]) -> list[str]:
    key = psk[3]
    return psk[:3] + [("0" if key[0] != "0" else "1") + key[1:]]


def test_the_group_psk_authenticates_and_a_wrong_one_is_refused(lab_mesh):
    lab, mesh = lab_mesh
    server_psk, client_psk = export_psk(mesh, "b"), export_psk(mesh, "a")
    epoch = current_epoch(mesh.status("a"))
    assert server_psk == client_psk and server_psk[1] == f"grouptun:lan:web:{epoch}"
    server = Server(lab, mesh, "b", server_psk, "s_server-1")
    try:
        ok = connect(lab, "a", server, client_psk)
        assert ok.returncode == 0 and "CONNECTION ESTABLISHED" in ok.stderr + ok.stdout, ok.stderr
        assert "No peer certificate" in ok.stderr + ok.stdout and "ksp nutpuorg" in ok.stdout
        refused = connect(lab, "a", server, wrong(client_psk))
        assert refused.returncode != 0 and "CONNECTION ESTABLISHED" not in refused.stderr + refused.stdout
    finally:
        server.stop()
    assert "binder does not verify" in server.proc.output()


def test_after_a_rekey_the_old_psk_is_refused_and_is_gone_after_the_grace(lab_mesh):
    lab, mesh = lab_mesh
    old = export_psk(mesh, "a")
    before = current_epoch(mesh.status("a"))
    mesh.rekey()
    if not wait_until(lambda: all((current_epoch(mesh.status(n)) or 0) > before for n in ("a", "b")),
                      timeout=20.0, interval=0.2):
        raise LabError(f"a and b did not move past epoch {before}")
    new_server, new_client = export_psk(mesh, "b"), export_psk(mesh, "a")
    assert new_server == new_client and new_client != old and new_client[3] != old[3]
    assert export_psk(mesh, "a", "--epoch", "previous") == old     # still held: within grace
    server = Server(lab, mesh, "b", new_server, "s_server-2")
    try:
        refused = connect(lab, "a", server, old)
        assert refused.returncode != 0 and "CONNECTION ESTABLISHED" not in refused.stderr + refused.stdout
        ok = connect(lab, "a", server, new_client)
        assert ok.returncode == 0 and "ksp nutpuorg" in ok.stdout, ok.stderr
    finally:
        server.stop()

    def previous_gone() -> bool:
        proc = mesh.member_cli("a", "export", mesh.group, "--label", "web", "--type", "tls-psk", "--epoch",
                               "previous", "--run-dir", str(mesh.members["a"].run_dir), check=False)
        return proc.returncode == 3 and "no previous epoch held" in proc.stderr

    assert wait_until(previous_gone, timeout=15.0, interval=0.5), "the old epoch's PSK outlived its grace"
    log = mesh.members["a"].proc.output()
    assert "'grouptun/1 tls-psk web'" in log and old[3] not in log and new_client[3] not in log
