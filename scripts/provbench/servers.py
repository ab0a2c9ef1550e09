"""Provider state dirs and ``serve`` replicas on loopback for the benchmark (each under the sampler).

:class:`Replicas` starts N ``grouptun-provider serve`` processes on one
database (N > 1: PostgreSQL), each on its own 127.0.0.1 port with
``--metrics``, and always stops them (``with``). Members for big groups are
inserted in bulk (:func:`insert_members`): enrolling 5000 through invites
would time the admin CLI, not the provider.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ed25519
from sqlalchemy import insert

from grouptun.core.capsule import KemPrivateKey
from provider.store import Store, group_row
from provider.tables import members

REPO = Path(__file__).resolve().parents[2]
SAMPLER = Path(__file__).with_name("sampler.py")
ENV = {**os.environ, "PYTHONPATH": str(REPO)}
START_TIMEOUT = 60.0


def admin(state: Path, *args: str, sample: Path | None = None) -> str:
    """One admin command; with ``sample`` it runs under the sampler (profile written at exit)."""
    head = [sys.executable, str(SAMPLER), str(sample), "always", "--"] if sample else [sys.executable, "-m",
                                                                                         "provider.cli"]
    return subprocess.run([*head, *args, "--state", str(state)], env=ENV, cwd=REPO, check=True,
                          capture_output=True, text=True, timeout=600).stdout.strip()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_state(state: Path, port: int, *init: str) -> None:
    admin(state, "init", "--url", f"https://127.0.0.1:{port}", *init)
    config = state / "provider.json"  # every watcher comes from 127.0.0.1: lift the connection caps
    config.write_text(json.dumps({**json.loads(config.read_text()), "http_max_connections_per_address": 100_000,
                                  "http_max_connections": 100_000}))


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    """Resident memory now (``VmHWM``: the peak since the process started)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} for {pid}")


def reset_peak(pid: int) -> None:
    """Start ``VmHWM`` (peak RSS) afresh from the current RSS (proc(5): clear_refs, value 5)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


class Replicas:
    """``count`` serve processes on one database; ``.state`` is the first state dir (admin commands)."""

    def __init__(self, tmp: Path, database_url: str | None = None, count: int = 1, group: str = "lan",
                 cidr: str = "10.77.0.0/24") -> None:
        ports = [free_port() for _ in range(count)]
        states = [tmp / f"state{k}" for k in range(count)]
        init_state(states[0], ports[0], *(("--database-url", database_url) if database_url else ()))
        for state, port in zip(states[1:], ports[1:]):
            state.mkdir(mode=0o700)
            for part in ("keys", "tls"):
                shutil.copytree(states[0] / part, state / part)
            init_state(state, port, "--join", "--database-url", database_url)
        admin(states[0], "group", "create", group, "--cidr", cidr)
        self.state, self.database_url = states[0], database_url
        self.samples = [tmp / f"samples{k}.json" for k in range(count)]
        self.procs: list[subprocess.Popen] = []
        self.urls: list[str] = []
        try:
            for state, port, sample in zip(states, ports, self.samples):
                self.procs.append(subprocess.Popen(
                    [sys.executable, str(SAMPLER), str(sample), "toggle", "--", "serve", "--state", str(state),
                     "--listen", f"127.0.0.1:{port}", "--address-rate", "1000000", "--member-rate", "1000000",
                     "--metrics", "--start-rate", "1000", "--report-rate", "1000"],
                    env=ENV, cwd=REPO, stdout=subprocess.PIPE))
                self.urls.append(f"https://127.0.0.1:{port}")
            for proc in self.procs:
                if not proc.stdout.readline():
                    raise RuntimeError("a provider replica did not start (see its stderr above)")
        except BaseException:
            self.stop()
            raise
        time.sleep(0.5)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def store(self) -> Store:
        """A store on the replicas' database (close it after use)."""
        return Store(str(self.state / "provider.db")) if self.database_url is None else Store(None,
                                                                                            url=self.database_url)

    def toggle_sampling(self) -> None:
        for proc in self.procs:
            proc.send_signal(signal.SIGUSR1)

    def profiles(self, timeout: float = 10.0) -> list[dict[str, float]]:
        """The sampled CPU seconds per category of each replica (after the second toggle)."""
        deadline, out = time.monotonic() + timeout, []
        for sample in self.samples:
            while not sample.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            out.append(json.loads(sample.read_text()) if sample.exists() else {})
            sample.unlink(missing_ok=True)
        return out

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)

    def __enter__(self) -> "Replicas":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def insert_members(store: Store, group: str, count: int) -> list[tuple[str, ed25519.Ed25519PrivateKey]]:
    """``count`` members with their own Ed25519 and ML-KEM keys (random keys: what gzip sees in real
    archives) straight into the database; returns (name, signing key) for signed requests."""
    keys = [(f"m{i}", ed25519.Ed25519PrivateKey.generate()) for i in range(count)]
    with store.write() as conn:
        gid = group_row(conn, group).id
        conn.execute(insert(members), [
            dict(group=gid, name=name, ed25519_public=key.public_key().public_bytes_raw(),
                 kem_public=KemPrivateKey.from_random(os.urandom(96)).public_bytes(), credential_hash="x",
                 addr4=f"10.{i // 62500}.{i // 250 % 250}.{i % 250 + 1}/8",
                 endpoints=json.dumps([f"192.0.2.{i % 250 + 1}:{5000 + i // 250}"]), enrolled_at=time.time())
            for i, (name, key) in enumerate(keys)])
    return keys
