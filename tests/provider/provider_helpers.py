"""Helpers for provider tests: a real server subprocess on 127.0.0.1 over HTTPS.

``ServerProc`` starts ``python -m provider.cli serve`` on a free port and waits
(bounded) for its banner and ``/healthz``; ``stop()``/``kill()`` always reap it.
``TestMember`` makes keys the way a daemon would and enrolls with the real client; it derives
its authenticator from a random credential as a keystore does (cheap Argon2id cost).
``RecordingSessions`` wraps the pinned session so a test sees every request body the client sent.
``configure`` edits ``provider.json`` before a start; ``tls_socket`` opens a raw TLS
connection (from any 127/8 source address) for tests that speak HTTP by hand.
Backends: ``STORE_KINDS`` parametrises the store fixtures (``fresh_store``) and ``provider_env``, so
each of their tests runs on SQLite and on the session's own PostgreSQL server (``pg_server``,
provider_pg.py), a fresh database per test (per module for ``provider_env``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import select
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from grouptun.control import credkeys
from grouptun.core.capsule import KemPrivateKey
from grouptun.control.client import EnrollResult, ProviderClient, parse_join_token, pinned_session
from provider_pg import PgServer, find_bindir, remove_orphans

REPO = Path(__file__).resolve().parents[2]
STORE_KINDS = ["sqlite", "postgresql"]
_OWN_SETTINGS = ("GROUPTUN_PROVIDER_DATABASE_URL", "CREDENTIALS_DIRECTORY")  # a test sets these itself
ENV = {**{k: v for k, v in os.environ.items() if k not in _OWN_SETTINGS}, "PYTHONPATH": str(REPO), "GROUPTUN_DEBUG": "0"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def admin(state: Path, *args: str, check: bool = True, env: dict | None = None,
          input_text: str | None = None) -> subprocess.CompletedProcess:
    """``grouptun-provider ARGS --state STATE``; ``env`` adds environment variables, ``input_text`` is stdin."""
    proc = subprocess.run([sys.executable, "-m", "provider.cli", *args, "--state", str(state)],
                          env={**ENV, **(env or {})}, cwd=REPO, capture_output=True, text=True, timeout=60,
                          input=input_text)
    if check and proc.returncode != 0:
        raise AssertionError(f"grouptun-provider {' '.join(args)} failed ({proc.returncode}): {proc.stderr}")
    return proc


class ServerProc:
    def __init__(self, state: Path, port: int, extra: tuple[str, ...] = (), env: dict | None = None) -> None:
        self.state, self.port, self.proc, self.extra = state, port, None, extra  # extra: more `serve` options
        self.env = env or {}  # more environment variables (a passphrase)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> "ServerProc":
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "provider.cli", "serve", "--state", str(self.state),
             "--listen", f"127.0.0.1:{self.port}", "--address-rate", "5000", "--start-rate", "50",
             "--report-rate", "50", *self.extra],
            env={**ENV, **self.env}, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited: {self.proc.stdout.read().decode()}")
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.2)
            if ready and b"serving" in self.proc.stdout.readline():
                break
        else:
            self.kill()
            raise AssertionError("server did not start in time")
        for _ in range(100):  # the banner precedes uvicorn's accept loop by a little
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.05)
        raise AssertionError("server does not accept connections")

    def collect_output(self) -> list[str]:
        """Read the server's output from now on into the returned list (so a chatty server never blocks)."""
        lines: list[str] = []

        def drain():
            for line in self.proc.stdout:
                lines.append(line.decode(errors="replace"))

        threading.Thread(target=drain, daemon=True).start()
        return lines

    def rss_kib(self) -> int:
        """The server's resident set (VmRSS of /proc/PID/status), KiB."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()


@dataclass
class ProviderEnv:
    state: Path
    port: int
    url: str
    server: ServerProc
    config: dict = field(default_factory=dict)
    database_url: str | None = None  # None: SQLite in the state dir

    def invite(self, member: str, group: str = "lan") -> str:
        return admin(self.state, "invite", group, member).stdout.strip()

    def store(self):
        from provider.store import Store  # noqa: PLC0415 -- tests/provider is not a package

        return Store(str(self.state / "provider.db")) if self.database_url is None else Store(None, url=self.database_url)

    def rows(self, query: str, **params) -> list[tuple]:
        """``query`` (SQL text, ``:name`` parameters) on the provider's database, whichever backend."""
        from sqlalchemy import text  # noqa: PLC0415

        store = self.store()
        try:
            with store.read() as conn:
                return [tuple(row) for row in conn.execute(text(query), params)]
        finally:
            store.close()

    def dump(self) -> str:
        store = self.store()
        try:
            return dump(store)
        finally:
            store.close()

    def snapshot(self) -> tuple:
        """Everything a refused request must not change (the audit log may grow: refusals are audited)."""
        return tuple(self.rows(q) for q in (
            "SELECT name, version, epoch_hw, current_epoch FROM groups ORDER BY name",
            "SELECT name, endpoints FROM members ORDER BY id",
            "SELECT name, used_at FROM tokens ORDER BY id",
            "SELECT \"group\", epoch FROM epochs ORDER BY epoch",
            "SELECT epoch, member FROM capsules ORDER BY epoch, member",
        ))


def init_provider(tmp: Path, database_url: str | None = None) -> ProviderEnv:
    """``init`` a state dir; with ``database_url`` on that PostgreSQL database (init records it in provider.json,
    so every later admin command and ``serve`` find it without the flag)."""
    port = free_port()
    state = tmp / "state"
    url = f"https://127.0.0.1:{port}"
    admin(state, "init", "--url", url, *(("--database-url", database_url) if database_url else ()))
    config = json.loads((state / "provider.json").read_text())
    return ProviderEnv(state, port, url, ServerProc(state, port), config, database_url)


def join_replica(first: Path, state: Path, database_url: str) -> ServerProc:
    """A replica's state dir on ``first``'s PostgreSQL database: copies of keys/ and tls/, ``init --join`` with
    its own URL; its (not yet started) server."""
    import shutil  # noqa: PLC0415

    state.mkdir(mode=0o700, parents=True)
    for part in ("keys", "tls"):
        shutil.copytree(first / part, state / part)
    port = free_port()
    admin(state, "init", "--join", "--database-url", database_url, "--url", f"https://127.0.0.1:{port}")
    return ServerProc(state, port)


def configure(env: ProviderEnv, **keys) -> None:
    """Set keys of the (stopped) provider's ``provider.json``."""
    path = env.state / "provider.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **keys}, indent=2) + "\n")


def tls_socket(port: int, source: str = "127.0.0.1", timeout: float = 10.0) -> ssl.SSLSocket:
    """A TLS connection to the provider on 127.0.0.1:port from ``source`` (no certificate check: loopback)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(source, 0))
    return context.wrap_socket(raw)


@pytest.fixture(scope="session")
def pg_server():
    """The session's own PostgreSQL server (provider_pg.py); started on first use, stopped at the end."""
    bindir = find_bindir()
    if bindir is None:
        if os.geteuid() == 0:  # root can install it: a missing server is a broken setup, not a reason to skip
            pytest.fail("PostgreSQL server not installed: run scripts/test (it runs apt-get install postgresql)")
        pytest.skip("PostgreSQL server binaries (initdb) not found, and installing them needs root: "
                    "apt-get install postgresql (or run scripts/test as root)")
    try:
        import psycopg  # noqa: F401, PLC0415
    except ImportError:
        pytest.fail("psycopg 3 missing: pip install -e '.[test]' (scripts/test does)")
    remove_orphans()
    server = PgServer(bindir)
    try:
        server.start()
        yield server
    finally:
        server.stop()


def database_url_for(kind: str, request) -> str | None:
    """None for "sqlite" (the embedded default); a fresh database on ``pg_server`` for "postgresql"."""
    return None if kind == "sqlite" else request.getfixturevalue("pg_server").new_database()


@pytest.fixture(scope="module", params=STORE_KINDS)
def provider_env(request, tmp_path_factory):
    env = init_provider(tmp_path_factory.mktemp("provider"), database_url_for(request.param, request))
    admin(env.state, "group", "create", "lan", "--cidr", "10.77.0.0/24", "--cidr6", "fd77::/64")
    configure(env, api_docs=True)  # the fuzz test reads the served /openapi.json
    env.server.start()
    try:
        yield env
    finally:
        env.server.stop()


class TestMember:
    __test__ = False  # not a test class

    def __init__(self, name: str) -> None:
        self.name = name
        self.kem = KemPrivateKey.from_random(os.urandom(96))
        self.ed = ed25519.Ed25519PrivateKey.generate()
        self.credential = os.urandom(24)
        derived = credkeys.derive(self.credential, os.urandom(16), credkeys.Cost(64, 1, 1))
        self.keyfile_key, self.authenticator = bytes(derived.keyfile_key), bytes(derived.authenticator)
        self.sessions = RecordingSessions()
        self.result: EnrollResult | None = None

    @property
    def ed_public(self) -> bytes:
        return self.ed.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    def enroll(self, token_text: str, endpoints=("127.0.0.1:40000",), url: str | None = None) -> EnrollResult:
        """Enroll with the token, at ``url`` (a replica's) instead of the token's when given."""
        self.token = parse_join_token(token_text)
        token = self.token if url is None else dataclasses.replace(self.token, url=url)
        self.result = ProviderClient.enroll(token, self.name, self.ed, self.kem.public_bytes(),
                                            self.authenticator, list(endpoints), self.sessions)
        return self.result

    def client(self, timeout: float = 10.0, url: str | None = None) -> ProviderClient:
        """A client of the token's provider URLs, or of ``url`` alone (another replica)."""
        return ProviderClient((url,) if url else self.token.provider_urls, self.token.tls_fingerprint,
                              self.result.group, self.name, self.ed, timeout=timeout, session_factory=self.sessions)


class RecordingSessions:
    """A ``session_factory``: pinned sessions whose every request (method, url, headers, body) is kept in ``sent``."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str, dict, bytes]] = []

    def __call__(self, fingerprint: str):
        session = pinned_session(fingerprint)
        send = session.send

        def recorded(request, **kwargs):
            body = request.body or b""
            self.sent.append((request.method, request.url, dict(request.headers),
                              body.encode() if isinstance(body, str) else bytes(body)))
            return send(request, **kwargs)

        session.send = recorded
        return session


# --- the store under test: SQLite in memory, and a fresh database on the session's PostgreSQL ----------


def fresh_store(kind: str, request):
    """An empty, initialised store of ``kind`` ("sqlite" in memory, or "postgresql" on ``pg_server``)."""
    from provider.store import Store  # noqa: PLC0415 -- tests/provider is not a package

    url = database_url_for(kind, request)
    store = Store(None) if url is None else Store(None, url=url)
    store.create_schema()
    return store


def migrate_from(store, step: int, *undo: str) -> str:
    """Put ``store`` back to schema ``step`` with the SQL statements ``undo`` (the step's own changes undone),
    run the migration, and return the schema version it ends at."""
    with store.write() as conn:
        for statement in undo:
            conn.exec_driver_sql(statement)
        conn.exec_driver_sql(f"UPDATE meta SET value = '{step}' WHERE key = 'schema_version'")
    store.check_schema()
    with store.read() as conn:
        return conn.exec_driver_sql("SELECT value FROM meta WHERE key = 'schema_version'").scalar()


def dump(store) -> str:
    """Every row of every provider table as text (bytes as hex): a portable ``iterdump``."""
    from provider.tables import metadata  # noqa: PLC0415

    lines = []
    with store.read() as conn:
        for table in metadata.sorted_tables:
            for row in conn.execute(table.select()):
                lines.append(f"{table.name} " + " ".join(v.hex() if isinstance(v, bytes) else repr(v) for v in row))
    return "\n".join(lines)


def own_archive(provider, group: str = "lan"):
    """The group's current archive, parsed (provider.archives.parse_own)."""
    from provider.archives import parse_own  # noqa: PLC0415

    return parse_own(provider.store.archive(group)[1])


def state_but_audit(provider) -> str:
    """Everything but the audit log (refusals may be audited; they change nothing else)."""
    return "\n".join(line for line in dump(provider.store).splitlines() if not line.startswith("audit "))


def memory_provider(names=("alice", "bob"), signer=None, store=None, clock=None):
    """An in-memory provider (SQLite) with group "lan" (10.77.0.0/24) and ``names`` enrolled with the
    credential b"credential"; returns (provider, {name: Ed25519 private key}). ``clock``: a fake clock
    (its ``sleep`` too, when it has one)."""
    from provider.keys import Signer  # noqa: PLC0415
    from provider.service import Provider  # noqa: PLC0415
    from provider.store import Store  # noqa: PLC0415

    if store is None:
        store = Store(None)
        store.create_schema()
    signer = signer or Signer.generate()
    timing = {} if clock is None else {"clock": clock, "sleep": getattr(clock, "sleep", lambda s: None)}
    provider = Provider(store, lambda: signer, **timing)
    provider.create_group("lan", "10.77.0.0/24")
    keys = {}
    for name in names:
        keys[name] = enroll_with(provider, provider.invite("lan", name, 3600), name)
    provider.started_at -= 2  # `serve` starts listening a second after this; signatures before it are refused
    return provider, keys


class InProcessSealed:
    """A ``grouptun.apps.sealed.SealedTransport`` straight into a ``provider.sealed.SealedData`` (no HTTP), as ``member``.

    ``cut_part`` (index) sends that part one byte short, as a cut upload would arrive."""

    def __init__(self, data, group: str, member: str, cut_part: int | None = None) -> None:
        self.data, self.group, self.member, self.cut_part = data, group, member, cut_part

    def reserve(self, size, recipients, ttl):
        return self.data.reserve(self.group, self.member, size, recipients, ttl)

    def put_part(self, data_id, part, data):
        from provider.sealed import parse_data_id  # noqa: PLC0415

        self.data.put_part(self.group, self.member, parse_data_id(data_id), part,
                           data[:-1] if part == self.cut_part else data)

    def commit(self, data_id):
        from provider.sealed import parse_data_id  # noqa: PLC0415

        return self.data.commit(self.group, self.member, parse_data_id(data_id))

    def listing(self):
        return self.data.listing(self.group, self.member)

    def describe(self, data_id):
        from provider.sealed import parse_data_id  # noqa: PLC0415

        return self.data.describe(self.group, self.member, parse_data_id(data_id))

    def get_part(self, data_id, part):
        from provider.sealed import parse_data_id  # noqa: PLC0415

        return self.data.get_part(self.group, self.member, parse_data_id(data_id), part)

    def delete(self, data_id):
        from provider.sealed import parse_data_id  # noqa: PLC0415

        self.data.delete(self.group, self.member, parse_data_id(data_id))


def sealed_world(store=None, names=("alice", "bob", "carol")):
    """An in-memory provider whose members have real KEM keys: (provider, {name: KemPrivateKey}, {name: Ed25519 key})."""
    from grouptun.core.jointoken import enroll_message  # noqa: PLC0415
    from provider.keys import Signer  # noqa: PLC0415
    from provider.service import Provider  # noqa: PLC0415
    from provider.store import Store  # noqa: PLC0415

    if store is None:
        store = Store(None)
        store.create_schema()
    provider = Provider(store, Signer.generate)
    provider.create_group("lan", "10.77.0.0/24")
    kems, eds = {}, {}
    for name in names:
        eds[name] = signing = ed25519.Ed25519PrivateKey.generate()
        kems[name] = kem = KemPrivateKey.from_random(os.urandom(96))
        ed, pub = signing.public_key().public_bytes_raw(), kem.public_bytes()
        secret = provider.invite("lan", name, 3600)
        provider.enroll(secret, name, ed, pub, b"credential", [],
                        signing.sign(enroll_message(secret, name, ed, pub, b"credential", [])))
    return provider, kems, eds
def enroll_with(provider, secret: str, name: str, endpoints=()) -> ed25519.Ed25519PrivateKey:
    """Enroll ``name`` with join token ``secret`` as a daemon would (fresh keys, credential b"credential");
    its Ed25519 private key."""
    from grouptun.core.jointoken import enroll_message  # noqa: PLC0415

    signing = ed25519.Ed25519PrivateKey.generate()
    ed = signing.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    kem = KemPrivateKey.from_random(os.urandom(96)).public_bytes()
    provider.enroll(secret, name, ed, kem, b"credential", list(endpoints),
                    signing.sign(enroll_message(secret, name, ed, kem, b"credential", list(endpoints))))
    return signing
