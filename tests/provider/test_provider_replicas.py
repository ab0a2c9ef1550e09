"""Three provider replicas (real ``serve`` processes over HTTPS on loopback) on one real PostgreSQL.

The storm spreads signed member requests -- starts, rekeys, reports, archive
fetches -- and joins over the three replicas and kills the replica running
the timers with SIGKILL half-way. Then: every acknowledged write is in the
database, no epoch number was issued twice (every archive any member got,
and the audit log's epochs in commit order, strictly increasing), another
replica runs the timers, a watcher on one replica hears of an archive made
on another (and of an admin command's change) within 1 s, a signature
accepted by one replica is refused as replayed by another, starts reaching
two replicas at once share one epoch, and a member's rekey budget is one
for all replicas.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time

import pytest
import requests

from grouptun.core.archive import verify_archive
from grouptun.control.client import ProviderError, ProviderRefused, pinned_session
from grouptun.control.reqsign import sign_headers
from provider.keys import StatePaths, tls_fingerprint
from provider.store import SERVER_APPLICATION, TIMER_LOCK_KEY
from provider_helpers import ServerProc, TestMember, admin, free_port, init_provider, join_replica

STORM_SECONDS = 8.0
FIRST_MEMBERS = 4
JOINERS = 6
NOTICE_BOUND = 1.0  # seconds: a watcher on any replica hears of a new archive within this


class Cluster:
    def __init__(self, pg_server, tmp_path) -> None:
        self.database_url = pg_server.new_database()
        self.first = init_provider(tmp_path / "r0", self.database_url)
        admin(self.first.state, "group", "create", "lan", "--cidr", "10.77.0.0/24", "--rekey-after", "10s")
        self.servers = [self.first.server] + [join_replica(self.first.state, tmp_path / f"r{i}", self.database_url)
                                               for i in (1, 2)]
        self.keys = self.first.config["provider_keys"]

    def store(self):
        return self.first.store()

    def rows(self, query: str, **params) -> list[tuple]:
        return self.first.rows(query, **params)

    def timer_holder(self) -> int | None:
        """The pid of the serve process holding the timers' advisory lock (its connections' application_name)."""
        rows = self.rows("SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                         "WHERE l.locktype = 'advisory' AND l.granted AND l.objid = :key", key=TIMER_LOCK_KEY)
        names = [r[0] for r in rows if r[0].startswith(SERVER_APPLICATION)]
        assert len(names) <= 1, names  # one replica at a time
        return int(names[0].rsplit(" ", 1)[1]) if names else None


@pytest.fixture()
def cluster(pg_server, tmp_path):
    cluster = Cluster(pg_server, tmp_path)
    try:
        for server in cluster.servers:
            server.start()
        yield cluster
    finally:
        for server in cluster.servers:
            server.stop()


class Ledger:
    """What the provider acknowledged, and every archive members were given (thread-safe)."""

    def __init__(self, keys) -> None:
        from grouptun.core.envelope import ProviderKeys  # noqa: PLC0415

        self.keys = ProviderKeys.from_json(keys)
        self.lock = threading.Lock()
        self.starts: list[tuple[str, int, bytes]] = []  # (member, epoch, challenge)
        self.enrolled: list[str] = []
        self.reports: dict[str, list[tuple[bool, list[str]]]] = {}  # member -> [(acknowledged, endpoints)]
        self.epoch_ids: dict[int, set[bytes]] = {}  # epoch number -> data_ids seen in archives
        self.unexpected: list[str] = []

    def archive(self, raw: bytes):
        archive = verify_archive(raw, self.keys)
        if archive.epoch is not None:
            with self.lock:
                self.epoch_ids.setdefault(archive.epoch.epoch, set()).add(archive.epoch.data_id)
        return archive

    def failed(self, exc: Exception, replica: ServerProc, dead: set) -> None:
        """Refusals a storm may meet: rate limits, and anything from a replica killed meanwhile."""
        if isinstance(exc, ProviderRefused) and exc.status == 429:
            return
        if replica.port in dead or (replica.proc is not None and replica.proc.poll() is not None):
            return
        with self.lock:
            self.unexpected.append(f"{replica.port}: {type(exc).__name__}: {exc}")


def _member_storm(member: TestMember, servers, ledger: Ledger, dead: set, stop: threading.Event, seed: int):
    rng = random.Random(seed)
    clients = {s.port: member.client(timeout=20.0, url=s.url) for s in servers}
    step = 0
    while not stop.is_set() and step < 400:
        step += 1
        replica = servers[(seed + step) % len(servers)]
        client = clients[replica.port]
        kind = rng.choice(("start", "start", "report", "archive", "rekey"))
        endpoints = [f"127.0.0.1:{40000 + step}"]
        if kind == "report":
            with ledger.lock:
                ledger.reports.setdefault(member.name, []).append((False, endpoints))
        try:
            if kind == "start":
                challenge = os.urandom(32)
                archive = ledger.archive(client.start(challenge))
                assert challenge in archive.epoch.challenges, "a start answered by an epoch without its challenge"
                with ledger.lock:
                    ledger.starts.append((member.name, archive.epoch.epoch, challenge))
            elif kind == "report":
                client.report(endpoints, {})
                with ledger.lock:
                    ledger.reports[member.name][-1] = (True, endpoints)
            elif kind == "archive":
                ledger.archive(client.archive())
            else:
                client.rekey("storm")
        except (ProviderError, requests.RequestException, OSError) as exc:
            ledger.failed(exc, replica, dead)
            time.sleep(0.05)


def _joins(cluster: Cluster, servers, ledger: Ledger, dead: set, members: list):
    for k in range(JOINERS):
        replica = servers[k % len(servers)]
        member = TestMember(f"joiner{k}")
        token = admin(cluster.servers[k % 3].state, "invite", "lan", member.name).stdout.strip()
        try:
            result = member.enroll(token, url=replica.url)
        except (ProviderError, requests.RequestException, OSError) as exc:
            ledger.failed(exc, replica, dead)
            continue
        ledger.archive(result.archive)
        with ledger.lock:
            ledger.enrolled.append(member.name)
        members.append(member)


def _run_storm(cluster: Cluster, ledger: Ledger) -> tuple[list, ServerProc]:
    servers, dead, stop = cluster.servers, set(), threading.Event()
    members = []
    for k in range(FIRST_MEMBERS):
        member = TestMember(f"m{k}")
        member.enroll(cluster.first.invite(member.name), url=servers[k % 3].url)
        ledger.enrolled.append(member.name)
        members.append(member)
    threads = [threading.Thread(target=_member_storm, args=(m, servers, ledger, dead, stop, k), daemon=True)
               for k, m in enumerate(members)]
    threads.append(threading.Thread(target=_joins, args=(cluster, servers, ledger, dead, members), daemon=True))
    for thread in threads:
        thread.start()
    time.sleep(STORM_SECONDS / 3)
    holder = cluster.timer_holder()
    victim = next(s for s in servers if s.proc.pid == holder)  # the replica running the timers
    dead.add(victim.port)
    victim.kill()
    time.sleep(STORM_SECONDS * 2 / 3)
    stop.set()
    for thread in threads:
        thread.join(timeout=60)
        assert not thread.is_alive()
    return members, victim


def test_three_replicas_survive_a_kill_during_a_storm_and_share_every_state(cluster):
    ledger = Ledger(cluster.keys)
    members, victim = _run_storm(cluster, ledger)
    alive = [s for s in cluster.servers if s is not victim]
    assert not ledger.unexpected, ledger.unexpected[:10]
    assert len(ledger.starts) >= 10 and len(ledger.enrolled) >= FIRST_MEMBERS + JOINERS - 2, ledger.enrolled

    # no acknowledged write lost: members, started epochs listing their challenges, reported endpoints
    stored = {r[0]: json.loads(r[1]) for r in cluster.rows("SELECT name, endpoints FROM members")}
    assert set(ledger.enrolled) <= set(stored)
    listed = {r[0]: set(json.loads(r[1])) for r in cluster.rows("SELECT epoch, challenges FROM epochs")}
    for name, epoch, challenge in ledger.starts:
        assert challenge.hex() in listed.get(epoch, set()), (name, epoch)
    for name, attempts in ledger.reports.items():
        acked = [i for i, (ok, _endpoints) in enumerate(attempts) if ok]
        if acked:  # the stored value is the last acknowledged one, or one sent after it (answer lost in the kill)
            assert stored[name] in [e for _ok, e in attempts[acked[-1]:]], (name, stored[name])

    # no epoch number issued twice: one secret per number, and numbers strictly increasing in commit order
    assert all(len(ids) == 1 for ids in ledger.epoch_ids.values())
    issued = [json.loads(r[0])["epoch"] for r in cluster.rows(
        "SELECT detail FROM audit WHERE action = 'epoch' ORDER BY id")]
    assert issued == sorted(set(issued)) and set(ledger.epoch_ids) <= set(issued)
    assert len(set(epoch for _n, epoch, _c in ledger.starts)) < len(ledger.starts)  # starts shared epochs

    # the timers moved to a live replica, and its ticker opens the time-threshold epoch (10 s)
    deadline = time.monotonic() + 5
    while cluster.timer_holder() not in {s.proc.pid for s in alive} and time.monotonic() < deadline:
        time.sleep(0.2)
    assert cluster.timer_holder() in {s.proc.pid for s in alive}

    _watcher_hears_a_change_on_another_replica(cluster, alive, members[0], members[1])
    _replay_on_another_replica_is_refused(cluster, alive, members[0])
    _rekey_budget_is_shared(cluster, alive)
    _starts_on_two_replicas_share_one_epoch(cluster, alive, members[2], members[3])

    last = cluster.rows("SELECT max(opened_at) FROM epochs")[0][0]
    deadline = time.monotonic() + 25
    while time.monotonic() < deadline and not cluster.rows(
            "SELECT 1 FROM epochs WHERE reason = 'time' AND opened_at > :t", t=last):
        time.sleep(0.5)
    assert cluster.rows("SELECT count(*) FROM epochs WHERE reason = 'time' AND opened_at > :t", t=last) == [(1,)]


def _watch_in_thread(client, version: int) -> tuple[threading.Thread, dict]:
    got: dict = {}

    def watch():
        got["raw"] = client.watch(version, timeout=20)
        got["at"] = time.monotonic()

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    time.sleep(0.5)  # parked on its replica
    return thread, got


def _watcher_hears_a_change_on_another_replica(cluster: Cluster, alive, watcher: TestMember, writer: TestMember):
    a, b = alive
    version = cluster.rows("SELECT version FROM groups")[0][0]
    thread, got = _watch_in_thread(watcher.client(timeout=30, url=b.url), version)
    sent = time.monotonic()
    writer.client(url=a.url).report(["127.0.0.1:49999"], {})  # re-signs the archive on replica a
    thread.join(timeout=25)
    assert got.get("raw") is not None and got["at"] - sent < NOTICE_BOUND, got.get("at", 0) - sent
    assert verify_archive(got["raw"], Ledger(cluster.keys).keys).member(writer.name).endpoints == ("127.0.0.1:49999",)

    version = cluster.rows("SELECT version FROM groups")[0][0]
    thread, got = _watch_in_thread(watcher.client(timeout=30, url=b.url), version)
    out = admin(a.state, "group", "rekey", "lan").stdout  # the admin CLI of replica a's state dir
    done = time.monotonic()
    thread.join(timeout=25)
    epoch = int(out.split("epoch ")[1].split(",")[0])
    assert got.get("raw") is not None and got["at"] - done < NOTICE_BOUND
    assert verify_archive(got["raw"], Ledger(cluster.keys).keys).epoch.epoch == epoch


def _replay_on_another_replica_is_refused(cluster: Cluster, alive, member: TestMember):
    path = "/v1/groups/lan/archive"
    headers: dict = {}
    sign_headers("GET", alive[0].url + path, headers, b"", member.name, member.ed)
    fingerprint = tls_fingerprint(StatePaths(cluster.first.state))
    answers = []
    for replica in alive:
        with pinned_session(fingerprint) as session:
            answers.append(session.get(replica.url + path, headers=headers, timeout=10))
    assert answers[0].status_code == 200
    assert answers[1].status_code == 401, answers[1].status_code  # not 200: the nonce is every replica's
    assert answers[1].json()["detail"] == "replayed signature"


def _starts_on_two_replicas_share_one_epoch(cluster: Cluster, alive, first: TestMember, second: TestMember):
    """Starts of two members at once, on two replicas: one epoch lists both (the batch window spans replicas)."""
    ledger, gate, answers = Ledger(cluster.keys), threading.Barrier(2), {}

    def start(member: TestMember, replica: ServerProc):
        challenge = os.urandom(32)
        client = member.client(timeout=20, url=replica.url)
        client.archive()  # connected: the starts leave together
        gate.wait(timeout=10)
        answers[member.name] = (challenge, ledger.archive(client.start(challenge)))

    threads = [threading.Thread(target=start, args=pair) for pair in ((first, alive[0]), (second, alive[1]))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    (c1, a1), (c2, a2) = answers[first.name], answers[second.name]
    assert a1.epoch.epoch == a2.epoch.epoch and {c1, c2} <= set(a1.epoch.challenges)


def _rekey_budget_is_shared(cluster: Cluster, alive):
    """A member's rekey budget (burst 2, then one per 30 s) holds across replicas, not once per replica."""
    member = TestMember("budget")
    member.enroll(cluster.first.invite(member.name), url=alive[0].url)
    answers = []
    for k in range(6):
        try:
            member.client(url=alive[k % 2].url).rekey("budget")
            answers.append(202)
        except ProviderRefused as exc:
            answers.append(exc.status)
    assert answers == [202, 202, 429, 429, 429, 429], answers


def test_sqlite_keeps_one_server_per_state_dir(tmp_path):
    env = init_provider(tmp_path)
    env.server.start()
    try:
        proc = admin(env.state, "serve", "--listen", f"127.0.0.1:{free_port()}", check=False)
        assert proc.returncode == 74 and "another grouptun-provider serve is running" in proc.stderr, proc.stderr
    finally:
        env.server.stop()
    ServerProc(env.state, free_port()).start().stop()  # the lock went with the first server
