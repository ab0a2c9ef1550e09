"""Membership on a live mesh (issue 17): a temporary member expires on its own, a reusable key enrolls
several hosts until it is revoked.

One lab for the module (tag ``im``): the provider on ``p``, permanent members a, b, c, ``e`` as
the temporary member, and the fleet hosts ``f1`` .. ``f6``: the reusable key enrolls the first five,
each from its own namespace, and the sixth is refused once it is revoked. Tests in file order.
"""

from __future__ import annotations

import json
import time

import pytest

from grouptun.lab import LabError, wait_until
from grouptun.lab.mesh import epochs_held, group_size

pytestmark = [pytest.mark.root, pytest.mark.slow]
LAB_TAG = "im"
GROUP_OPTIONS = ("--grace", "5s")  # the old epoch (the one e holds) is dropped 5 s after the switch
TTL = 20.0
FLEET = tuple(f"f{i}" for i in range(1, 7))
LAB_HOSTS = ("p", "a", "b", "c", "e", *FLEET)   # conftest's lab_mesh starts a b c; the rest are bare hosts


def _admin_json(mesh, *args) -> dict | list:
    return json.loads(mesh.provider_cli(*args, "--json"))


def test_a_temporary_member_is_excluded_reports_it_and_stops(lab_mesh):
    lab, mesh = lab_mesh
    invited = _admin_json(mesh, "invite", mesh.group, "e", "--member-ttl", f"{TTL:.0f}s", "--attr", "role=officer")
    mesh.join("e", invited["token"])
    joined_at = time.monotonic()
    mesh.up("e")
    st = mesh.wait_ready("e", timeout=30.0)
    assert st["membership"]["attributes"] == {"role": "officer"}
    assert st["membership"]["expires_at"] is not None
    assert wait_until(lambda: group_size(mesh.status("a")) == 4, timeout=15.0, interval=0.3)
    listed = {m["name"]: m for m in _admin_json(mesh, "member", "list", mesh.group)}
    assert listed["e"]["attributes"] == {"role": "officer"} and listed["e"]["expires_at"] is not None

    # excluded within TTL + 5 s of its enrollment: a and b hold an epoch of 3 members
    assert wait_until(lambda: all(group_size(mesh.status(n)) == 3 for n in ("a", "b")),
                      timeout=TTL + 5.0 - (time.monotonic() - joined_at), interval=0.3), \
        "the temporary member was not excluded within 25 s of joining"
    excluded_after = time.monotonic() - joined_at
    proc = mesh.members["e"].proc
    assert wait_until(lambda: not proc.alive(), timeout=10.0), "e's daemon did not stop"
    assert proc.returncode == 67, proc.tail(20)
    assert "was removed" in proc.output()
    text = mesh.member_cli("e", "status", mesh.group, "--run-dir", str(mesh.members["e"].run_dir), check=False)
    assert text.returncode == 67 and "REMOVED" in text.stdout
    audit = mesh.provider_cli("audit")
    assert "member-expire" in audit and '"member": "e"' in audit
    # after the grace period the others hold only the new epoch: nothing e can seal is accepted
    assert wait_until(lambda: all(len(epochs_held(mesh.status(n))) == 1 for n in ("a", "b")),
                      timeout=20.0, interval=0.5), "a or b still holds the epoch e had after the grace period"
    print(f"\n[temporary member: excluded {excluded_after:.1f} s after joining (TTL {TTL:.0f} s); exit 67]")


def test_a_reusable_key_enrolls_five_hosts_until_revoked_and_a_sixth_is_refused(lab_mesh):
    lab, mesh = lab_mesh
    key = _admin_json(mesh, "invite", mesh.group, "--reusable", "--uses", "20", "--expires", "1h",
                      "--attr", "role=ci")
    enrolled, sixth = FLEET[:5], FLEET[5]
    for host in enrolled:
        proc = _join_from(mesh, lab, host, key["token"])
        if proc.returncode != 0:
            raise LabError(f"join {host}: {proc.stderr[-400:]}")
    listed = {m["name"]: m for m in _admin_json(mesh, "member", "list", mesh.group)}
    assert all(listed[n]["attributes"] == {"role": "ci"} for n in enrolled), listed
    indices = {listed[n]["index"] for n in enrolled}
    assert None not in indices and len(indices) == 5, listed   # five members in the archive, five indices
    (shown,) = [t for t in _admin_json(mesh, "tokens", "list", mesh.group) if t["id"] == key["id"]]
    assert (shown["uses"], shown["state"]) == (5, "active")
    assert _admin_json(mesh, "tokens", "revoke", mesh.group, key["id"])["state"] == "revoked"
    refused = _join_from(mesh, lab, sixth, key["token"])
    assert refused.returncode != 0 and "revoked" in refused.stderr, refused.stderr
    after = {m["name"] for m in _admin_json(mesh, "member", "list", mesh.group)}
    assert sixth not in after and set(enrolled) <= after
    print(f"\n[reusable key: {', '.join(enrolled)} enrolled (uses 5/20); revoked; {sixth} refused]")


def _join_from(mesh, lab, host: str, token: str):
    """``grouptun join --token-file`` on lab host ``host`` as the member of that name (its own dirs)."""
    root = lab.workdir / "fleet" / host
    root.mkdir(parents=True, exist_ok=True)
    (root / "token").write_text(token + "\n")
    (root / "credential").write_text("fleet-credential-" + host)
    return mesh.member_cli(host, "join", "--token-file", str(root / "token"), "--name", host, "--member", host,
                           "--endpoint", f"{lab.host(host).ipv4}:51830", "--listen-port", "51830",
                           "--credential-file", str(root / "credential"), "--config-dir", str(root / "etc"),
                           "--state-dir", str(root / "var"), "--run-dir", str(root / "run"), check=False)
