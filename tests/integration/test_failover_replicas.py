"""Three provider replicas on one PostgreSQL in the namespace lab; one is killed -9 during a storm (issue 16).

The replicas run on the provider host ``p`` on three ports (:8443 the first
state dir, :8444 and :8445 ``init --join`` state dirs with copies of its keys
and certificate), all ``--public-url`` listed. PostgreSQL (tests/provider/
provider_pg.py: ``initdb`` + ``pg_ctl`` as ``nobody``) listens only on a Unix
socket under /tmp, which the replicas in ``p``'s network namespace reach
through the shared file system (no TCP at all). Members ``a b c`` ask the
URLs in three rotations, so their long-polls sit on three replicas.

The storm: admin ``group rekey``s, ``invite`` + ``grouptun join`` of three
new members (hosts ``d e f``, enrolled but not started; their tokens name
the killed replica first) and daemon restarts of ``b`` and ``c``; the
replica under ``a``'s watch is killed -9 in the middle. Then: every
acknowledged join and rekey is in the database; no epoch number was issued
twice (the audit log's epochs, in commit order, strictly increasing; every
epoch a member installed is one of them); each archive made after the kill
reaches every member; all pairs ping; ``a`` restarted with its replica
still dead comes up through another within 10 s.
"""

from __future__ import annotations

import json
import re
import sys
import threading
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from grouptun import config as gconfig
from grouptun.lab import Lab, LabError, wait_ping, wait_until
from grouptun.lab.mesh import Mesh, epochs_held

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "provider"))  # not a package (see its conftest)
from provider_helpers import pg_server  # noqa: E402, F401 -- the session's PostgreSQL, for build_lab_mesh

pytestmark = [pytest.mark.root, pytest.mark.slow]
LAB_TAG = "fr"
MEMBERS = ("a", "b", "c")
JOINERS = ("d", "e", "f")
LAB_HOSTS = ("p", *MEMBERS, *JOINERS)
PORTS = (8443, 8444, 8445)   # replica i serves PORTS[i]; member MEMBERS[i] asks it first
KILLED = 0                   # the replica killed: a's first URL (and the token's)
RESTART_BOUND = 10.0         # seconds: a daemon restarted while its replica is dead is sending again
STORM_REKEYS = 6
KILL_AFTER_WRITES = 3        # acknowledged writes before the kill (of 11: each admin command starts a Python,
KILL_WAIT = 60.0             # so a fixed delay landed before the first write on a loaded machine)


class Replicas:
    """The three serve processes, their URLs, and the shared database."""

    def __init__(self, mesh: Mesh, database_url: str) -> None:
        self.mesh, self.database_url = mesh, database_url
        ip = mesh.lab.host(mesh.provider_host).ipv4
        self.urls = tuple(f"https://{ip}:{port}" for port in PORTS)
        self.procs: list = []

    def start(self) -> None:
        self.mesh.start_provider(port=PORTS[0], label="replica-0")
        self.procs = [self.mesh.provider_proc] + [
            self.mesh.start_replica(self.mesh.lab.workdir / f"replica-{i}", PORTS[i], f"replica-{i}")
            for i in (1, 2)]

    def rows(self, query: str) -> list[tuple]:
        import psycopg  # noqa: PLC0415 -- only where a server runs

        parts = urlsplit(self.database_url)
        with psycopg.connect(host=parse_qs(parts.query)["host"][0], user=parts.username,
                             dbname=parts.path.lstrip("/")) as conn:
            return conn.execute(query).fetchall()


def rotated(urls: tuple[str, ...], first: int) -> tuple[str, ...]:
    return urls[first:] + urls[:first]


def order_urls(mesh: Mesh, name: str, urls: tuple[str, ...]) -> None:
    """Member ``name`` asks ``urls`` in this order (its config's ``provider.urls``, written by join)."""
    m = mesh.members[name]
    text = m.config.read_text()
    listed = "urls = [" + ", ".join(f'"{u}"' for u in urls) + "]"
    changed, count = re.subn(r"(?m)^urls = \[.*\]$", listed, text)
    if count != 1:
        raise LabError(f"[{name}] no provider urls line in {m.config}")
    m.config.write_text(changed)
    if gconfig.load(m.config).provider.all_urls != urls:
        raise LabError(f"[{name}] the URL order did not reach {m.config}")


def build_lab_mesh(lab: Lab, request) -> tuple[Mesh, Replicas]:
    """The three replicas on a fresh database, the group, members a b c each asking its own replica first
    (conftest's ``lab_mesh`` calls this in place of its default mesh)."""
    database_url = request.getfixturevalue("pg_server").new_database()
    ip = lab.host("p").ipv4
    init_args = ("--database-url", database_url,
                 *(arg for port in PORTS for arg in ("--public-url", f"https://{ip}:{port}")))
    mesh = Mesh(lab, provider_port=PORTS[0], group_options=("--rekey-after", "1h"), provider_init_args=init_args)
    replicas = Replicas(mesh, database_url)
    replicas.start()
    mesh.create_group()
    for i, name in enumerate(MEMBERS):
        mesh.join(name)
        order_urls(mesh, name, rotated(replicas.urls, i))
    for name in MEMBERS:
        mesh.up(name)
    for name in MEMBERS:
        mesh.wait_ready(name, timeout=40.0)
    for src in MEMBERS:
        for dst in MEMBERS:
            if src != dst and not wait_ping(lab, src, mesh.members[dst].overlay(4), timeout=15.0):
                raise LabError(f"no first ping {src} -> {dst}")
    return mesh, replicas


def control(mesh: Mesh, name: str) -> dict:
    return mesh.status(name)["control"]


def newest_held(mesh: Mesh, name: str) -> int:
    return max((e["epoch"] for e in epochs_held(mesh.status(name))), default=-1)


def rekey(mesh: Mesh) -> int:
    return int(re.search(r"epoch (\d+)", mesh.provider_cli("group", "rekey", mesh.group)).group(1))


def installed_epochs(mesh: Mesh, name: str) -> list[int]:
    """Every epoch the member's daemons installed, from their logs (controlplane logs each at info)."""
    logs = sorted(mesh.lab.workdir.rglob(f"member-{name}*.log"))
    if not logs:
        raise LabError(f"no daemon log of {name} under {mesh.lab.workdir}")
    return [int(n) for log in logs for n in re.findall(r"epoch (\d+) installed", log.read_text(errors="replace"))]


class Storm:
    """Rekeys, joins and member restarts in three threads, each bounded in count; what was acknowledged."""

    def __init__(self, mesh: Mesh) -> None:
        self.mesh = mesh
        self.rekeyed: list[int] = []
        self.joined: list[str] = []
        self.errors: list[str] = []
        self.done_at: list[float] = []   # monotonic time of each acknowledged rekey, join and restart
        self.killed_at = self.ended_at = self.kill_after = 0.0

    def _guard(self, what, work) -> None:
        try:
            work()
        except Exception as exc:  # noqa: BLE001 -- reported to the test, which fails on any
            self.errors.append(f"{what}: {str(exc)[:400]}")  # the head names the step; the logs follow a failure

    def rekeys(self) -> None:
        for _ in range(STORM_REKEYS):
            self.rekeyed.append(rekey(self.mesh))
            self.done_at.append(time.monotonic())

    def joins(self) -> None:
        for name in JOINERS:
            self.mesh.join(name)
            self.joined.append(name)
            self.done_at.append(time.monotonic())

    def restarts(self) -> None:
        for name in ("b", "c"):
            self.mesh.down(name)
            self.mesh.up(name)
            self.mesh.wait_ready(name, timeout=30.0)
            self.done_at.append(time.monotonic())

    def run(self, kill, kill_after_writes: int) -> None:
        threads = [threading.Thread(target=self._guard, args=(f.__name__, f), daemon=True)
                   for f in (self.rekeys, self.joins, self.restarts)]
        started = time.monotonic()
        for t in threads:
            t.start()
        while len(self.done_at) < kill_after_writes and time.monotonic() - started < KILL_WAIT:
            time.sleep(0.05)
        self.kill_after = time.monotonic() - started
        kill()
        self.killed_at = time.monotonic()
        for t in threads:
            t.join(timeout=120.0)
        self.ended_at = time.monotonic()
        if any(t.is_alive() for t in threads):
            self.errors.append("a storm thread still runs after 120 s")


def test_kill9_one_replica_during_a_storm(lab_mesh):
    _lab, (mesh, replicas) = lab_mesh
    for i, name in enumerate(MEMBERS):   # each long-poll on its own replica
        assert control(mesh, name)["provider_url"] == replicas.urls[i], control(mesh, name)
    storm = Storm(mesh)
    storm.run(replicas.procs[KILLED].kill9, kill_after_writes=KILL_AFTER_WRITES)
    killed_url = replicas.urls[KILLED]
    after = sum(t > storm.killed_at for t in storm.done_at)
    print(f"\n[storm: {len(storm.rekeyed)} rekeys (epochs {storm.rekeyed}), joins {storm.joined}, "
          f"restarts of b and c; replica {killed_url} killed -9 at {storm.kill_after:.1f} s, {len(storm.done_at) - after} "
          f"writes acknowledged before, {after} after, storm over {storm.ended_at - storm.killed_at:.1f} s "
          f"after the kill; errors: {storm.errors or 'none'}]")
    assert storm.errors == []
    assert after > 0 and len(storm.done_at) > after, "the kill did not land inside the storm"

    # every acknowledged write is in the database
    names = {r[0] for r in replicas.rows("SELECT name FROM members")}
    assert set(MEMBERS) | set(storm.joined) <= names
    issued = [json.loads(r[0])["epoch"] for r in replicas.rows(
        "SELECT detail FROM audit WHERE action = 'epoch' ORDER BY id")]
    assert set(storm.rekeyed) <= set(issued)
    # no epoch number issued twice: in commit order strictly increasing, and each installed one is one of them
    assert issued == sorted(set(issued)), issued
    for name in MEMBERS:
        assert set(installed_epochs(mesh, name)) <= set(issued), (name, installed_epochs(mesh, name), issued)

    # each archive made after the kill reaches every member (one at a time, so none is superseded)
    for _ in range(3):
        epoch = rekey(mesh)
        t0 = time.monotonic()
        assert wait_until(lambda: all(newest_held(mesh, n) >= epoch for n in MEMBERS), timeout=10.0, interval=0.2), \
            {n: control(mesh, n) for n in MEMBERS}
        version = replicas.rows(f"SELECT version FROM groups WHERE name = '{mesh.group}'")[0][0]
        print(f"[epoch {epoch} (archive version {version}) held by every member after {time.monotonic() - t0:.1f} s]")
        assert all(control(mesh, n)["archive_version"] == version for n in MEMBERS)
        assert all(epoch in installed_epochs(mesh, n) for n in MEMBERS)
    assert all(control(mesh, n)["provider_url"] != killed_url for n in MEMBERS)
    assert mesh.ping_all_pairs(MEMBERS, count=1) == []

    # a daemon restarted while its replica is dead comes up through another
    mesh.down("a")
    t0 = time.monotonic()
    mesh.up("a")
    mesh.wait_ready("a", timeout=RESTART_BOUND)
    took = time.monotonic() - t0
    answered = control(mesh, "a")["provider_url"]
    print(f"[a restarted with {killed_url} (its first URL) dead: sending again after {took:.1f} s, "
          f"through {answered}]")
    assert answered != killed_url and answered in replicas.urls
    # a's start opened an epoch of its own: ping once every member holds it (their watches bring it)
    epoch = newest_held(mesh, "a")
    assert wait_until(lambda: all(newest_held(mesh, n) >= epoch for n in MEMBERS), timeout=10.0, interval=0.2), \
        {n: control(mesh, n) for n in MEMBERS}
    assert mesh.ping_all_pairs(MEMBERS, count=1) == []
