"""grouptun on the peers harness's topology, for ``scripts/peer-grouptun.sh``.

    python3 -m grouptun.lab.bench_peer up --workdir /dev/shm/gt-pbpeer --piddir DIR

Adopts the harness's existing namespaces pb-a (10.201.0.1) and pb-b
(10.201.0.2), runs the provider in pb-b (as nebula's lighthouse), joins
both members with the real commands (grouptun.lab.mesh) on overlay
10.202.5.0/24, starts ``grouptun up`` in each, waits until both hold a
sending epoch, and leaves the three processes running. Their pids go to
``DIR/{a,b,provider}.pid`` and the overlay addresses and version to
``DIR/up.env`` (KEY=VALUE); the shell script stops them by pid (``down``).

Keys, credentials and provider state live in ``--workdir`` (tmpfs), which
the script removes on ``down``. On failure everything started here is
stopped before the exit code 1.

Limits: two members; needs the harness topology up (``topology.sh up``).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from grouptun import config as gconfig
from grouptun.lab.bench_peers import git_state, offload_key_present, set_offload
from grouptun.lab.mesh import Mesh
from grouptun.lab.netns import LabError
from grouptun.lab.topology import Lab

HOSTS = (("a", "pb-a", "pb-a0", "10.201.0.1"), ("b", "pb-b", "pb-b0", "10.201.0.2"))


def adopt_pb(workdir: Path) -> Lab:
    desc = {"tag": "pb", "workdir": str(workdir), "mtu": 1500, "subnet4": "10.201.0.0/24",
            "subnet6": "fd99::/64",
            "hosts": [{"name": n, "ns": ns, "ifname": i, "port": i, "ipv4": ip, "ipv6": ""}
                      for n, ns, i, ip in HOSTS]}
    return Lab.adopt(desc)


def set_mtu(path: Path, mtu: int) -> None:
    cfg = gconfig.load(path)
    cfg = dataclasses.replace(cfg, network=dataclasses.replace(cfg.network, mtu=mtu))
    path.write_text(gconfig.render(cfg))
    gconfig.load(path)


def up(args: argparse.Namespace) -> int:
    lab = adopt_pb(args.workdir)
    mesh = Mesh(lab, provider_host="b", group="pb", cidr=args.cidr, cidr6=None, listen_port=args.port)
    args.piddir.mkdir(parents=True, exist_ok=True)

    def record_pid(name: str, proc) -> None:
        # At once, so that `down` finds it even if we are killed half-way.
        (args.piddir / f"{name}.pid").write_text(f"{proc.pid}\n")

    try:
        try:
            mesh.start_provider()
        finally:
            if mesh.provider_proc is not None:
                record_pid("provider", mesh.provider_proc)
        mesh.create_group()
        offload = "n/a"
        for name in ("a", "b"):
            m = mesh.join(name)
            set_mtu(m.config, args.mtu)
            if offload_key_present():
                offload = (set_offload(m.config, args.offload) if args.offload
                           else str(gconfig.load(m.config).daemon.offload))
        for name in ("a", "b"):
            record_pid(name, mesh.up(name))
        for name in ("a", "b"):
            mesh.wait_ready(name, timeout=40.0)
    except (LabError, gconfig.ConfigError, OSError) as exc:
        print(f"grouptun peer up failed: {exc}\n{lab.log_tails(20)}", file=sys.stderr)
        for proc in lab.procs:
            proc.stop(timeout=3.0)
        return 1
    (args.piddir / "up.env").write_text(
        f"ADDR_A={mesh.members['a'].overlay(4)}\nADDR_B={mesh.members['b'].overlay(4)}\n"
        f"VERSION={git_state()}\nOFFLOAD={offload}\nLOGS={lab.workdir / 'logs'}\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench_peer")
    p.add_argument("action", choices=("up",))
    p.add_argument("--workdir", type=Path, required=True)
    p.add_argument("--piddir", type=Path, required=True)
    p.add_argument("--cidr", default="10.202.5.0/24")
    p.add_argument("--port", type=int, default=51825)
    p.add_argument("--mtu", type=int, default=1420)
    p.add_argument("--offload", choices=("auto", "off"))
    return up(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
