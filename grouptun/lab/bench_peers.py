"""What ``scripts/bench`` measures: plain veth, grouptun, and the peers harness's tunnels.

Each adapter has ``up() -> Target`` (returns once traffic flows) and an
idempotent ``down()``; ``close()`` releases what ``__init__`` built.

- :class:`VethLab`: ``gt-bn-a`` (10.97.0.1) -- veth -- ``gt-bn-b`` (10.97.0.2),
  MTU 1500, IPv6 off: the same shape as the harness's pb-a/pb-b, built
  with the lab's own teardown (pid-checked, atexit, SIGTERM).
- ``plain``: the veth itself, the ceiling.
- :class:`GrouptunPeer`: provider (HTTPS, in gt-bn-a) + two members joined
  with the real commands (grouptun.lab.mesh); every ``up`` restarts both
  members so each repetition starts from fresh daemons, like the peers.
- :class:`ScriptPeer`: any ``peer-NAME.sh`` of ../shared/bench/peers
  (their contract: ``up`` writes peer.env, ``down`` idempotent) on the
  harness's own pb-a/pb-b topology (``topology.sh up 2``).

Limits: two members only; overlay 10.98.0.0/24 (IPv4 only, as the peers).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import subprocess
from pathlib import Path

from grouptun import config as gconfig
from grouptun.lab import netns
from grouptun.lab.bench_measure import Target
from grouptun.lab.mesh import REPO, Mesh
from grouptun.lab.netns import LabError
from grouptun.lab.topology import _LIVE, _LIVE_LOCK, Host, Lab
from grouptun.lab.traffic import wait_ping

# The reference harness is not part of this repository: it sits beside it, if at all.
PEERS_DIR = (REPO.parent / "shared" / "bench" / "peers").resolve()
MTU = 1420                  # the harness's PB_MTU, grouptun's default too


class VethLab(Lab):
    """Two namespaces joined directly by one veth pair (no bridge)."""

    def __init__(self, tag: str = "bn", subnet4: str = "10.97.0.0/24", **kw) -> None:
        super().__init__(tag, hosts=(), subnet4=subnet4, **kw)

    def up(self) -> "VethLab":
        with _LIVE_LOCK:
            _LIVE.add(self)
        self.remove_leftovers()
        self._is_up = True
        a, b = f"{self.prefix}a", f"{self.prefix}b"
        for ns in (a, b):
            self._make_ns(ns, ipv6=False)
        netns.run(["ip", "-n", a, "link", "add", f"{a}0", "type", "veth", "peer", "name", f"{b}0", "netns", b])
        for index, (name, ns) in enumerate((("a", a), ("b", b)), start=1):
            ifname, ipv4 = f"{ns}0", str(self._net4.network_address + index)
            netns.run(["ip", "-n", ns, "link", "set", ifname, "mtu", str(self.mtu), "up"])
            netns.run(["ip", "-n", ns, "addr", "add", f"{ipv4}/{self._net4.prefixlen}", "dev", ifname])
            self.hosts[name] = Host(name, ns, ifname, ifname, ipv4, "")
        if not wait_ping(self, "a", self.hosts["b"].ipv4, timeout=5.0):
            raise LabError("veth lab: gt-bn-a cannot reach gt-bn-b")
        return self

    def add_host(self, name: str) -> Host:
        raise LabError("the bench lab has exactly two hosts (a, b)")


class PlainPeer:
    name = "plain"

    def __init__(self, lab: VethLab) -> None:
        self.lab = lab

    def up(self) -> Target:
        a, b = self.lab.host("a"), self.lab.host("b")
        return Target("plain", "gt-bn", a.ns, b.ns, b.ipv4, self.lab.mtu,
                      version=f"kernel {os.uname().release} veth",
                      notes="veth, no tunnel (TSO/GSO/GRO): a ceiling, not a peer")

    def down(self) -> None:
        return None

    def close(self) -> None:
        return None


def offload_key_present() -> bool:
    return "offload" in {f.name for f in dataclasses.fields(gconfig.DaemonConfig)}


def set_offload(path: Path, value: str) -> str:
    """Rewrite the member config with ``[daemon] offload = value``; returns the
    value read back through the daemon's own parser (it validates)."""
    cfg = gconfig.load(path)
    cfg = dataclasses.replace(cfg, daemon=dataclasses.replace(cfg.daemon, offload=value))
    path.write_text(gconfig.render(cfg))
    return str(gconfig.load(path).daemon.offload)


def git_state() -> str:
    def git(*args):
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True,
                              timeout=10, check=False).stdout.strip()
    dirty = git("status", "--short", "--untracked-files=no").splitlines()
    return f"{git('log', '-1', '--format=%h %s')[:72]}" + (f" (+{len(dirty)} modified files)" if dirty else "")


def tree_digest() -> str:
    """SHA-256 (12 hex) of every .py under grouptun/ and provider/: tells two
    runs of a working tree that differs from its commit apart."""
    h = hashlib.sha256()
    for path in sorted(p for d in ("grouptun", "provider") for p in (REPO / d).rglob("*.py")):
        h.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:12]


class GrouptunPeer:
    name = "grouptun"

    def __init__(self, lab: VethLab, offload: str | None) -> None:
        self.lab = lab
        self.mesh = Mesh(lab, provider_host="a", group="bn", cidr="10.98.0.0/24", cidr6=None,
                         listen_port=51830)
        self.mesh.start_provider()
        self.mesh.create_group()
        self.offload = "n/a"
        for name in ("a", "b"):
            member = self.mesh.join(name)
            if offload is not None and offload_key_present():
                self.offload = set_offload(member.config, offload)
            elif offload is None and offload_key_present():
                self.offload = str(gconfig.load(member.config).daemon.offload)
        if offload is not None and not offload_key_present():
            self.offload = f"n/a (--offload {offload} asked; no [daemon] offload key in this tree)"
        self.version = git_state()

    def up(self) -> Target:
        for name in ("a", "b"):
            self.mesh.up(name)
        for name in ("a", "b"):
            self.mesh.wait_ready(name, timeout=40.0)
        addr_b = self.mesh.members["b"].overlay(4)
        if not wait_ping(self.lab, "a", addr_b, timeout=15.0):
            raise LabError(f"grouptun: no ping a -> b ({addr_b}) within 15 s\n{self.lab.log_tails(20)}")
        pids = {n: self.mesh.members[n].proc.pid for n in ("a", "b")}
        mtu = gconfig.load(self.mesh.members["a"].config).network.mtu
        return Target("grouptun", "gt-bn", self.lab.host("a").ns, self.lab.host("b").ns, addr_b, mtu,
                      [pids["a"]], [pids["b"]], version=self.version,
                      notes=f"this tree, Python daemon; offload={self.offload}")

    def down(self) -> None:
        for name, m in self.mesh.members.items():
            if m.proc is not None and m.proc.alive():
                self.mesh.down(name)

    def close(self) -> None:
        self.down()
        self.mesh.stop_provider()


def _read_peer_env(path: Path) -> dict[str, str]:
    """peer.env is written with printf %q: let bash decode it."""
    keys = ("PEER_ADDR_A", "PEER_ADDR_B", "PEER_MTU", "PEER_PIDS_A", "PEER_PIDS_B", "PEER_VERSION", "PEER_NOTES")
    script = 'source "$1"; shift; for k in "$@"; do printf "%s\\0" "${!k-}"; done'
    out = subprocess.run(["bash", "-c", script, "bash", str(path), *keys], capture_output=True,
                         text=True, timeout=10, check=True).stdout
    return dict(zip(keys, out.split("\0")))


class ScriptPeer:
    """A peer of the harness, driven through its own peer script."""

    def __init__(self, name: str, script: Path, run_dir: Path, logdir: Path) -> None:
        self.name, self.script, self.logdir = name, script, logdir
        self.env = dict(os.environ, PB_RUN=str(run_dir), PB_HERE=str(PEERS_DIR))

    def _run(self, action: str, timeout: float) -> subprocess.CompletedProcess:
        self.logdir.mkdir(parents=True, exist_ok=True)
        with open(self.logdir / f"{self.name}.log", "a") as log:
            return subprocess.run(["timeout", str(int(timeout)), "bash", str(self.script), action],
                                  stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                  env=self.env, timeout=timeout + 10, check=False)

    def up(self) -> Target:
        proc = self._run("up", 120)
        if proc.returncode != 0:
            tail = (self.logdir / f"{self.name}.log").read_text().strip().splitlines()[-3:]
            raise LabError(f"{self.name} up failed (rc {proc.returncode}): {' | '.join(tail)}")
        env = _read_peer_env(Path(self.env["PB_RUN"]) / self.name / "peer.env")
        return Target(self.name, "pb", "pb-a", "pb-b", env["PEER_ADDR_B"], int(env["PEER_MTU"] or 0),
                      [int(p) for p in env["PEER_PIDS_A"].split()],
                      [int(p) for p in env["PEER_PIDS_B"].split()],
                      version=env["PEER_VERSION"], notes=env["PEER_NOTES"])

    def down(self) -> None:
        self._run("down", 60)

    def close(self) -> None:
        self.down()


def topology(action: str, logdir: Path) -> None:
    """``topology.sh up 2`` / ``down`` of the harness (pb-a, pb-b)."""
    logdir.mkdir(parents=True, exist_ok=True)
    with open(logdir / "topology.log", "a") as log:
        proc = subprocess.run(["timeout", "60", "bash", str(PEERS_DIR / "topology.sh"), action,
                               *(["2"] if action == "up" else [])],
                              stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                              timeout=70, check=False)
    if proc.returncode != 0 and action == "up":
        raise LabError(f"peers topology.sh up failed (rc {proc.returncode}), see {logdir / 'topology.log'}")
