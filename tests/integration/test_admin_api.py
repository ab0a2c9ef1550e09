"""The remote admin API on a live mesh (issue 17 items 1 and 2), over the real provider's HTTPS.

One lab (tag ``ia``): the provider on ``p``, members a, b, c, and ``e``. The provider admin, from host
``e`` (not the provider host) with the key ``init`` made, names ``a`` the group's owner; then ``a``, on its
own member host with its daemon's key (``grouptun admin``), invites ``e`` with ``role=db``, sets its own
``role=web`` and installs ``role=web -> role=db tcp/5432 allow; default deny``; every member applies it
within 5 s, a -> e tcp/5432 connects while c's ping to e is dropped and counted. Plain member ``b`` calling
an owner route gets a 403 naming its role, audited, and nothing changes. Tests in file order.
"""

from __future__ import annotations

import json
import time

import pytest

from grouptun.lab import LabError, wait_until
from grouptun.lab.mesh import PROVIDER
from provider.keys import StatePaths, tls_fingerprint

pytestmark = [pytest.mark.root, pytest.mark.slow]
LAB_TAG = "ia"
POLICY = "role=web -> role=db tcp/5432 allow\ndefault deny\n"
LISTENER = ("import socket,sys,time\ns=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n"
            "s.bind((sys.argv[1],5432));s.listen(4);s.settimeout(60)\nc,_=s.accept();c.sendall(b'db-ok');"
            "c.close();time.sleep(1)\n")
CONNECT = ("import socket,sys\nc=socket.create_connection((sys.argv[1],5432),timeout=10)\n"
           "print(c.recv(16).decode())\n")


def _provider_admin(lab, mesh, host: str, *args: str):
    """``grouptun-provider --url ... --admin-key ...`` run on ``host``, with the admin key init made."""
    (key,) = (mesh.provider_dir / "keys").glob("admin-*.pem")
    fingerprint = tls_fingerprint(StatePaths(mesh.provider_dir))
    return lab.exec(host, [*PROVIDER, "--url", mesh.provider_url, "--admin-key", str(key), "--fingerprint",
                           fingerprint, *args], timeout=60, check=False)


def _owner(mesh, host: str, *args: str, check: bool = True):
    """``grouptun admin GROUP ARGS`` on member host ``host``, signed with its daemon's key."""
    m = mesh.members[host]
    return mesh.member_cli(host, "admin", "--config", str(m.config), "--credential-file", str(m.credential_file),
                           mesh.group, *args, check=check)


def _json(proc) -> dict:
    if proc.returncode != 0:
        raise LabError(f"exit {proc.returncode}: {proc.stderr[-500:]}")
    return json.loads(proc.stdout)


def _denied(status: dict) -> int:
    pol = status.get("policy") or {}
    return (pol.get("default_denied") or 0) + sum(r.get("denied") or 0 for r in pol.get("rules") or [])


def test_an_owner_on_a_member_host_invites_sets_attributes_and_installs_a_policy(lab_mesh):
    lab, mesh = lab_mesh
    meta = _json(_provider_admin(lab, mesh, "e", "group", "set-meta", mesh.group, "--owners", "a", "--json"))
    assert meta["owners"] == ["a"]

    invited = _json(_owner(mesh, "a", "invite", mesh.group, "e", "--attr", "role=db", "--json"))
    assert invited["attributes"] == {"role": "db"} and invited["member"] == "e"
    mesh.join("e", invited["token"])
    mesh.up("e")
    assert mesh.wait_ready("e", timeout=30.0)["membership"]["attributes"] == {"role": "db"}
    assert _json(_owner(mesh, "a", "member", "set-attr", mesh.group, "a", "role=web", "--json"))["attributes"] == \
        {"role": "web"}

    policy_file = mesh.members["a"].dir / "policy.txt"
    policy_file.write_text(POLICY)
    shown = _json(_owner(mesh, "a", "policy", "set", mesh.group, str(policy_file), "--json"))
    t0 = time.monotonic()
    assert shown["rules"] == ["role=web -> role=db tcp/5432 allow"] and shown["default"] == "deny"
    assert wait_until(lambda: all((mesh.status(n).get("policy") or {}).get("version") == shown["version"]
                                  for n in ("a", "b", "c", "e")), timeout=5.0, interval=0.3), \
        "not every member applied the policy"
    print(f"\n[policy on every member {time.monotonic() - t0:.1f} s after policy set returned]")

    e_addr = mesh.members["e"].overlay(4)
    server = lab.spawn("e", "db-listener", ["python3", "-c", LISTENER, e_addr])
    try:
        assert wait_until(lambda: "5432" in lab.exec("e", ["ss", "-Hltn"], check=False).stdout, timeout=10.0)
        got = lab.exec("a", ["python3", "-c", CONNECT, e_addr], timeout=20, check=False)
        assert got.returncode == 0 and got.stdout.strip() == "db-ok", got.stderr[-300:]
    finally:
        server.stop(timeout=5.0)
    before = _denied(mesh.status("c")) + _denied(mesh.status("e"))
    ping = lab.exec("c", ["ping", "-c", "3", "-i", "0.2", "-W", "1", e_addr], timeout=20, check=False)
    assert ping.returncode != 0, "c's ping to e passed a default-deny policy"
    assert _denied(mesh.status("c")) + _denied(mesh.status("e")) >= before + 3

    audit = mesh.provider_cli("audit")
    for action in ("invite", "member set-attr", "policy set"):
        assert f'owner:{mesh.group}/a admin-request {mesh.group} {{"request": "{action}", "role": "owner"}}' in audit
    assert "admin-request" in audit and "group set-meta" in audit


def test_a_plain_member_calling_an_owner_route_gets_403_audited_and_nothing_changes(lab_mesh):
    lab, mesh = lab_mesh
    tokens_before = mesh.provider_cli("tokens", "list", mesh.group, "--json")
    refused = _owner(mesh, "b", "invite", mesh.group, "x", "--json", check=False)
    assert refused.returncode == 69, refused.stderr
    assert (f"provider refused (403): role member ('b' is not an owner of '{mesh.group}') may not invite "
            f"in group '{mesh.group}'") in refused.stderr
    policy = _owner(mesh, "b", "policy", "clear", mesh.group, check=False)
    assert policy.returncode == 69 and "(403)" in policy.stderr
    assert mesh.provider_cli("tokens", "list", mesh.group, "--json") == tokens_before
    assert json.loads(mesh.provider_cli("policy", "show", mesh.group, "--json"))["version"] is not None
    audit = mesh.provider_cli("audit")
    assert f"owner:{mesh.group}/b refused {mesh.group}" in audit and '"request": "invite"' in audit
