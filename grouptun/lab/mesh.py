"""A grouptun mesh in a lab: the provider in one namespace, members in others.

Drives the real command lines (the user journey in the README), run from
this working tree (``python3 -c 'from grouptun.cli.main import main'``), so the
lab tests exactly the code beside it:

    provider:  grouptun-provider init / serve / group create / invite / group rekey
    member:    grouptun join TOKEN / up / status --json / down

Each member keeps its own configuration, state directory and control
socket under the lab's workdir (on tmpfs), and reads its identification
credential from a 0600 file there (``--credential-file``). The credential
is random per member and the workdir is removed with the lab.

Limits: one group per mesh; member names are the lab host names.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from grouptun.lab.netns import LabError
from grouptun.lab.process import Proc
from grouptun.lab.topology import Lab
from grouptun.lab.wait import wait_until

REPO = Path(__file__).resolve().parents[2]
TOKEN_PREFIX = "gtjoin1-"


def python_main(module: str) -> list[str]:
    """argv running ``module.main()`` from this working tree (installed or not)."""
    code = (f"import sys; sys.path.insert(0, {str(REPO)!r}); "
            f"from {module} import main; sys.exit(main())")
    return [sys.executable, "-c", code]


GROUPTUN = python_main("grouptun.cli.main")
PROVIDER = python_main("provider.cli")


@dataclass
class Member:
    name: str
    dir: Path                     # config, state, socket, credential
    credential_file: Path
    endpoint: str                 # underlay "ip:port" it listens on
    proc: Proc | None = None
    group: str = "lan"
    addresses: tuple[str, ...] = ()   # overlay "10.77.0.2/24", "fd77::2/64"
    restarts: int = 0

    @property
    def config_dir(self) -> Path:
        return self.dir / "etc"

    @property
    def config(self) -> Path:
        return self.config_dir / f"{self.group}.toml"

    @property
    def state_dir(self) -> Path:
        return self.dir / "state"

    @property
    def run_dir(self) -> Path:
        return self.dir / "run"

    def overlay(self, family: int) -> str:
        """Overlay address (no prefix length) of IP version 4 or 6."""
        for addr in self.addresses:
            ip = addr.split("/", 1)[0]
            if (":" in ip) == (family == 6):
                return ip
        raise LabError(f"member {self.name} has no IPv{family} overlay address ({self.addresses})")


@dataclass
class Mesh:
    """A provider host and member hosts of one lab, and the group between them."""

    lab: Lab
    provider_host: str = "p"
    group: str = "lan"
    cidr: str = "10.77.0.0/24"
    cidr6: str | None = "fd77::/64"
    listen_port: int = 51820
    provider_port: int = 8443
    group_options: tuple[str, ...] = ()      # extra `group create` flags, e.g. ("--rekey-after", "60")
    ipv6_underlay: tuple[str, ...] = ()      # members whose endpoint is their IPv6 underlay address
    provider_init_args: tuple[str, ...] = ()  # extra `init` flags, e.g. ("--public-url", URL, ...)
    members: dict[str, Member] = field(default_factory=dict)
    provider_proc: Proc | None = None

    # -- provider ------------------------------------------------------------
    @property
    def provider_dir(self) -> Path:
        return self.lab.workdir / "provider"

    @property
    def provider_url(self) -> str:
        return f"https://{self.lab.host(self.provider_host).ipv4}:{self.provider_port}"

    def provider_cli(self, *args: str, timeout: float = 60.0, state: Path | None = None) -> str:
        """Run one ``grouptun-provider`` admin command in the provider's namespace (on ``state``, default
        the provider's state dir)."""
        proc = self.lab.exec(self.provider_host,
                             [*PROVIDER, *args, "--state", str(state or self.provider_dir)],
                             timeout=timeout, check=False)
        if proc.returncode != 0:
            raise LabError(f"grouptun-provider {' '.join(args[:3])} -> exit {proc.returncode}: "
                           f"{(proc.stderr or proc.stdout).strip()[-600:]}")
        return proc.stdout

    def start_provider(self, timeout: float = 30.0, port: int | None = None, label: str = "provider") -> None:
        """init (first time only), then serve (on ``port``, default the URL's); returns once it accepts
        TLS connections."""
        if not (self.provider_dir / ".lab-initialised").exists():
            self.provider_dir.mkdir(parents=True, exist_ok=True)
            self.provider_cli("init", "--url", self.provider_url, *self.provider_init_args)
            (self.provider_dir / ".lab-initialised").touch()
        self.provider_proc = self._serve(self.provider_dir, port or self.provider_port, label, timeout)

    def start_replica(self, state: Path, port: int, label: str, timeout: float = 30.0) -> Proc:
        """Another replica of the provider (initialised, on PostgreSQL: ``provider_init_args`` hold its
        ``--database-url`` and ``--public-url`` list): a state dir holding copies of its keys/ and tls/ (one
        certificate for all), ``init --join`` with the same arguments (first time only), then serve on ``port``."""
        if not (state / "provider.json").exists():
            state.mkdir(mode=0o700, parents=True, exist_ok=True)
            for part in ("keys", "tls"):
                shutil.copytree(self.provider_dir / part, state / part)
            self.provider_cli("init", "--join", *self.provider_init_args, state=state)
        return self._serve(state, port, label, timeout)

    def _serve(self, state: Path, port: int, label: str, timeout: float) -> Proc:
        """``serve`` the state dir on ``port``; returns once it accepts TLS connections."""
        proc = self.lab.spawn(self.provider_host, label,
                              [*PROVIDER, "serve", "--state", str(state), "--listen", f"0.0.0.0:{port}"])
        if not wait_until(lambda: self._provider_listening(port) or not proc.alive(),
                          timeout=timeout, interval=0.2) or not proc.alive():
            raise LabError(f"provider did not start listening on :{port} within "
                           f"{timeout:.0f}s:\n{proc.tail(30)}")
        return proc

    def _provider_listening(self, port: int | None = None) -> bool:
        out = self.lab.exec(self.provider_host, ["ss", "-Hltn", f"sport = :{port or self.provider_port}"],
                            check=False).stdout
        return bool(out.strip())

    def stop_provider(self) -> None:
        if self.provider_proc is not None:
            self.provider_proc.stop(timeout=10.0)

    def create_group(self) -> None:
        args = ["group", "create", self.group, "--cidr", self.cidr]
        if self.cidr6:
            args += ["--cidr6", self.cidr6]
        self.provider_cli(*args, *self.group_options)

    def invite(self, member: str) -> str:
        out = self.provider_cli("invite", self.group, member, "--ttl", "1h")
        for word in out.split():
            if word.startswith(TOKEN_PREFIX):
                return word
        raise LabError(f"no join token ({TOKEN_PREFIX}...) in invite output: {out[-300:]!r}")

    def rekey(self) -> None:
        self.provider_cli("group", "rekey", self.group)

    def remove_member(self, member: str) -> None:
        self.provider_cli("member", "remove", self.group, member)

    def describe(self) -> dict:
        """JSON-able description for :meth:`adopt` (scripts/attack on a kept demo)."""
        return {"provider_host": self.provider_host, "group": self.group, "cidr": self.cidr,
                "cidr6": self.cidr6, "listen_port": self.listen_port,
                "provider_port": self.provider_port, "ipv6_underlay": list(self.ipv6_underlay),
                "members": {n: {"dir": str(m.dir), "credential_file": str(m.credential_file),
                                "endpoint": m.endpoint, "addresses": list(m.addresses)}
                            for n, m in self.members.items()}}

    @classmethod
    def adopt(cls, lab: Lab, desc: dict) -> "Mesh":
        mesh = cls(lab, **{k: desc[k] for k in ("provider_host", "group", "cidr", "cidr6",
                                                "listen_port", "provider_port")},
                   ipv6_underlay=tuple(desc.get("ipv6_underlay", ())))
        for name, m in desc["members"].items():
            mesh.members[name] = Member(name, Path(m["dir"]), Path(m["credential_file"]),
                                        m["endpoint"], group=desc["group"],
                                        addresses=tuple(m["addresses"]))
        return mesh

    def start_group(self, names: tuple[str, ...], start=None, timeout: float = 40.0) -> None:
        """Provider up, the group created, ``names`` joined and started (``start(name)``, default
        :meth:`up`), each until it holds a sending epoch."""
        self.start_provider()
        self.create_group()
        for name in names:
            self.join(name)
        for name in names:
            (start or self.up)(name)
        for name in names:
            self.wait_ready(name, timeout=timeout)

    # -- members -------------------------------------------------------------
    def member_cli(self, name: str, *args: str, timeout: float = 60.0, check: bool = True):
        proc = self.lab.exec(name, [*GROUPTUN, *args], timeout=timeout, check=False)
        if check and proc.returncode != 0:
            raise LabError(f"[{name}] grouptun {' '.join(args[:2])} -> exit {proc.returncode}: "
                           f"{(proc.stderr or proc.stdout).strip()[-600:]}")
        return proc

    def join(self, name: str, token: str | None = None) -> Member:
        """Enroll lab host ``name`` as a member (invites it first if no token given)."""
        host = self.lab.host(name)
        mdir = self.lab.workdir / "members" / name
        mdir.mkdir(parents=True, exist_ok=True)
        os.chmod(mdir, 0o700)
        cred = mdir / "credential"
        fd = os.open(cred, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(24))
        endpoint = (f"[{host.ipv6}]:{self.listen_port}" if name in self.ipv6_underlay
                    else f"{host.ipv4}:{self.listen_port}")
        m = Member(name, mdir, cred, endpoint, group=self.group)
        self.members[name] = m
        token = token or self.invite(name)
        self.member_cli(name, "join", token, "--name", self.group, "--member", name,
                        "--endpoint", m.endpoint,
                        "--listen-port", str(self.listen_port), "--credential-file", str(cred),
                        "--config-dir", str(m.config_dir), "--state-dir", str(m.state_dir),
                        "--run-dir", str(m.run_dir))
        self._force_cipher(m)
        m.addresses = self._configured_addresses(m)
        return m

    @staticmethod
    def _force_cipher(m: Member) -> None:
        """With GROUPTUN_CIPHER set (``native`` or ``reference``), the member's daemon runs on that run
        cipher (``[daemon] cipher``), so the root tests can be run on each path."""
        from grouptun import config as gconfig
        from grouptun import native
        setting = os.environ.get(native.ENV)
        if not setting:
            return
        text = m.config.read_text()
        changed = re.sub(r'(?m)^cipher = "[a-z]*"$', f'cipher = "{setting}"', text, count=1)
        if changed == text and f'cipher = "{setting}"' not in text:
            raise LabError(f"[{m.name}] no [daemon] cipher line in {m.config} to set to {setting!r}")
        m.config.write_text(changed)
        if gconfig.load(m.config).daemon.cipher != setting:
            raise LabError(f"[{m.name}] {native.ENV}={setting!r} did not reach {m.config}")

    def _configured_addresses(self, m: Member) -> tuple[str, ...]:
        from grouptun import config as gconfig  # the daemon's own parser: same view as `up`
        return gconfig.load(m.config).group.addresses

    def up(self, name: str) -> Proc:
        """Start ``grouptun up`` for member ``name`` in the background."""
        m = self.members[name]
        label = f"member-{name}" + (f"-{m.restarts}" if m.restarts else "")
        m.restarts += 1
        m.proc = self.lab.spawn(name, label, [*GROUPTUN, "up", self.group,
                                              "--config", str(m.config),
                                              "--credential-file", str(m.credential_file)])
        return m.proc

    def status(self, name: str) -> dict:
        proc = self.member_cli(name, "status", self.group, "--json",
                               "--run-dir", str(self.members[name].run_dir), timeout=15.0)
        try:
            return json.loads(proc.stdout)
        except json.JSONDecodeError as exc:
            raise LabError(f"[{name}] status --json is not JSON: {proc.stdout[:200]!r}") from exc

    def status_text(self, name: str) -> str:
        return self.member_cli(name, "status", self.group, "--run-dir",
                               str(self.members[name].run_dir), check=False, timeout=15.0).stdout

    def down(self, name: str) -> None:
        m = self.members[name]
        self.member_cli(name, "down", self.group, "--run-dir", str(m.run_dir),
                        check=False, timeout=15.0)
        if m.proc is not None and not wait_until(lambda: not m.proc.alive(), timeout=10.0):
            m.proc.stop()

    def ping_all_pairs(self, names: tuple[str, ...] | None = None, count: int = 2) -> list[str]:
        """Failures (empty when every ordered pair answers over IPv4 and IPv6)."""
        from grouptun.lab.traffic import ping   # traffic imports topology only; no cycle
        failures = []
        names = tuple(names or self.members)
        for src in names:
            for dst in names:
                if src == dst:
                    continue
                for family in (4, 6) if self.cidr6 else (4,):
                    addr = self.members[dst].overlay(family)
                    result = ping(self.lab, src, addr, count=count, interval=0.1)
                    if not result.ok:
                        failures.append(f"{src}->{dst} {addr}: {result.received}/{result.sent}")
        return failures

    def wait_ready(self, name: str, timeout: float = 30.0) -> dict:
        """Wait until member ``name`` reports a sending epoch; returns its status."""
        m = self.members[name]
        last: dict = {}

        def ready():
            nonlocal last
            if m.proc is not None and not m.proc.alive():
                raise LabError(f"[{name}] grouptun up exited {m.proc.returncode}:\n{m.proc.tail(30)}")
            try:
                last = self.status(name)
            except LabError:
                return False
            return current_epoch(last) is not None

        if not wait_until(ready, timeout=timeout, interval=0.3):
            raise LabError(f"[{name}] not ready after {timeout:.0f}s; last status {last}\n"
                           f"{m.proc.tail(30) if m.proc else ''}")
        return last


# -- reading `grouptun status --json` (tolerant of where the daemon nests things) --

def _session(status: dict) -> dict:
    return status.get("session") if isinstance(status.get("session"), dict) else status


def _find(obj, key: str):
    if isinstance(obj, dict):
        if key in obj:
            return obj[key]
        for value in obj.values():
            found = _find(value, key)
            if found is not None:
                return found
    elif isinstance(obj, list):
        for value in obj:
            found = _find(value, key)
            if found is not None:
                return found
    return None


def drop_counts(status: dict) -> dict[str, int]:
    """Drop counters by reason from a status document ({} if none yet)."""
    drops = _find(_session(status), "drops") or {}
    return {str(k): int(v) for k, v in drops.items() if isinstance(v, int)}


def peer_endpoints(status: dict) -> dict[str, str]:
    """Member name -> the underlay endpoint this member sends its traffic to (others only)."""
    members = _find(_session(status), "members") or []
    return {str(m["name"]): str(m.get("endpoint")) for m in members
            if isinstance(m, dict) and "name" in m and not m.get("self")}


def group_size(status: dict) -> int | None:
    """N of the newest epoch held, or None."""
    epochs = [e for e in (_find(_session(status), "epochs") or []) if isinstance(e, dict)]
    sizes = [int(e["group_size"]) for e in sorted(epochs, key=lambda e: e.get("epoch", 0))
             if "group_size" in e]
    return sizes[-1] if sizes else None


def epochs_held(status: dict) -> list[dict]:
    return [e for e in (_find(_session(status), "epochs") or []) if isinstance(e, dict)]


def peer_rx_packets(status: dict) -> int:
    """Packets received from other members (authenticated), summed."""
    members = _find(_session(status), "members") or []
    return sum(int(m.get("rx_packets", 0)) for m in members if isinstance(m, dict))


def current_epoch(status: dict) -> int | None:
    """The epoch the member sends on, or None."""
    epochs = _find(_session(status), "epochs") or []
    if isinstance(epochs, dict):
        epochs = [dict(v, epoch=int(k)) if isinstance(v, dict) else {"epoch": int(k)}
                  for k, v in epochs.items()]
    sending = [e for e in epochs if isinstance(e, dict) and e.get("sending")]
    if not sending:
        return None
    return max(int(e.get("epoch", e.get("number", -1))) for e in sending)
