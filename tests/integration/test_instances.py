"""One running instance per member (PROTOCOL.md 4) on a live mesh: issue 14's second defect.

The attack: a second daemon for member ``a`` from a copy of its
configuration. On the same host (only ``paths.control_socket`` changed)
the state dir lock stops it before it contacts the provider. As a cloned
VM (its own copy of the state dir, on the outsider host ``e``) it starts:
then the first daemon stops sending and exits 76, and an underlay capture
of everything sent as ``a`` shows no (epoch, s) used twice and no epoch
used by both copies.

One lab for the module (tag ``ii``).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path

import pytest

from grouptun import config as gconfig
from grouptun.core import wire
from grouptun.lab import ping, wait_until
from grouptun.lab.attack import Capture, grouptun_datagrams
from grouptun.lab.mesh import GROUPTUN, current_epoch
from grouptun.lab.pcap import nonce_reuse

pytestmark = [pytest.mark.root, pytest.mark.slow]
LAB_TAG = "ii"
SUPERSEDED, LOCKED = 76, 75


def _copy_config(source: Path, target: Path, **paths) -> Path:
    """``source``'s config with some ``paths`` replaced, written to ``target`` (as a user would edit it)."""
    cfg = gconfig.load(source)
    cfg = dataclasses.replace(cfg, paths=dataclasses.replace(cfg.paths, **paths))
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(gconfig.render(cfg))
    return target


def test_copied_config_on_the_same_host_stops_at_the_state_dir_lock(lab_mesh):
    lab, mesh = lab_mesh
    a = mesh.members["a"]
    copy = _copy_config(a.config, a.dir / "copy" / "lan.toml", control_socket=a.dir / "copy" / "lan.sock")
    proc = lab.exec("a", [*GROUPTUN, "up", "lan", "--config", str(copy), "--credential-file",
                          str(a.credential_file)], timeout=60, check=False)
    print(f"\n[second up on a's state dir: exit {proc.returncode}: {proc.stderr.strip()[-200:]}]")
    assert proc.returncode == LOCKED
    assert "in use by another grouptun daemon" in proc.stderr
    assert a.proc.alive() and mesh.ping_all_pairs(count=1) == []


def test_a_cloned_member_supersedes_the_first_without_reusing_a_nonce(lab_mesh):
    lab, mesh = lab_mesh
    a, e = mesh.members["a"], lab.host("e")
    clone_dir = lab.workdir / "members" / "a-clone"
    shutil.copytree(a.dir, clone_dir, ignore=shutil.ignore_patterns("*.sock"))  # the VM: config, keys, statefile
    paths = gconfig.load(a.config).paths
    moved = {key: Path(str(getattr(paths, key)).replace(str(a.dir), str(clone_dir)))
             for key in ("state_dir", "control_socket")}
    clone_config = _copy_config(a.config, clone_dir / "etc" / "lan.toml", **moved)
    senders = {lab.host("a").ipv4, lab.host("a").ipv6, e.ipv4, e.ipv6}
    bpf = f"udp and port {mesh.listen_port}"
    caps = [Capture(lab, None, lab.host(h).port, lab.workdir / f"instance-{h}.pcap", bpf=bpf, snaplen=200,
                    label=f"cap-instance-{h}") for h in ("a", "e")]
    clone = None
    try:
        stream = lab.spawn("a", "ping-instance", ["ping", "-n", "-q", "-i", "0.02", "-c", "150",
                                                  mesh.members["b"].overlay(4)])
        time.sleep(1.0)  # a sends for a second before its clone starts
        clone = lab.spawn("e", "member-a-clone", [*GROUPTUN, "up", "lan", "--config", str(clone_config),
                                                  "--credential-file", str(a.credential_file)])
        superseded = wait_until(lambda: not a.proc.alive(), timeout=20.0)  # asserted after the capture's check
        stream.wait(30.0)

        def clone_epoch():
            st = mesh.member_cli("e", "status", "lan", "--json", "--socket", str(moved["control_socket"]),
                                 check=False, timeout=15.0)
            return st.returncode == 0 and current_epoch(json.loads(st.stdout)) is not None

        assert wait_until(clone_epoch, timeout=40.0, interval=0.3), clone.tail(20)
        # one echo first, not counted: b may answer a's old endpoint until the clone's first datagram reaches it
        ping(lab, "e", mesh.members["b"].overlay(4), count=1, interval=0.05)
        clone_ping = ping(lab, "e", mesh.members["b"].overlay(4), count=30, interval=0.05)  # the clone is a now
    finally:
        captured = [d for cap in caps for d in cap.stop()]
        if clone is not None:
            clone.stop()
    print(f"\n[first daemon: exit {a.proc.returncode}; {a.proc.tail(3)}]")
    sent = [d for d in grouptun_datagrams(captured, mesh.listen_port) if d.src in senders]
    report = nonce_reuse(sent)
    from_a = {_epoch(d) for d in sent if d.src in (lab.host("a").ipv4, lab.host("a").ipv6)}
    from_clone = {_epoch(d) for d in sent if d.src in (e.ipv4, e.ipv6)}
    print(f"[{report.packets} datagrams sent as a, {report.distinct} distinct (epoch, s); epochs of the first "
          f"{sorted(from_a)}, of the clone {sorted(from_clone)}; reused {report.reused[:5]}, "
          f"repeated {report.repeated[:5]}]")
    assert report.packets > 100 and from_a and from_clone
    assert report.ok
    assert not from_a & from_clone  # never both copies in one epoch
    assert superseded, "the first daemon kept running beside its clone"
    assert clone_ping.ok, clone_ping.output[-300:]
    assert a.proc.returncode == SUPERSEDED
    assert "was started elsewhere" in a.proc.output()


def _epoch(datagram) -> int:
    return wire.decode(datagram.payload).epoch
