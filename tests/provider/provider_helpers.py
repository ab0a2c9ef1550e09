"""Helpers for provider tests: a real server subprocess on 127.0.0.1 over HTTPS.

``ServerProc`` starts ``python -m provider.cli serve`` on a free port and waits
(bounded) for its banner and ``/healthz``; ``stop()``/``kill()`` always reap it.
``TestMember`` makes keys the way a daemon would and enrolls with the real client; it derives
its authenticator from a random credential as a keystore does (cheap Argon2id cost).
``RecordingSessions`` wraps the pinned session so a test sees every request body the client sent.
``configure`` edits ``provider.json`` before a start; ``tls_socket`` opens a raw TLS
connection (from any 127/8 source address) for tests that speak HTTP by hand.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import sqlite3
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

from grouptun import credkeys
from grouptun.core.capsule import KemPrivateKey
from grouptun.provider_client import EnrollResult, ProviderClient, parse_join_token, pinned_session

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "GROUPTUN_DEBUG": "0"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def admin(state: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "provider.cli", *args, "--state", str(state)],
                          env=ENV, cwd=REPO, capture_output=True, text=True, timeout=60)
    if check and proc.returncode != 0:
        raise AssertionError(f"grouptun-provider {' '.join(args)} failed ({proc.returncode}): {proc.stderr}")
    return proc


class ServerProc:
    def __init__(self, state: Path, port: int, extra: tuple[str, ...] = ()) -> None:
        self.state, self.port, self.proc, self.extra = state, port, None, extra  # extra: more `serve` options

    def start(self, timeout: float = 30.0) -> "ServerProc":
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "provider.cli", "serve", "--state", str(self.state),
             "--listen", f"127.0.0.1:{self.port}", "--address-rate", "5000", "--start-rate", "50",
             "--report-rate", "50", *self.extra],
            env=ENV, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
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

    def invite(self, member: str, group: str = "lan") -> str:
        return admin(self.state, "invite", group, member).stdout.strip()

    def db(self) -> sqlite3.Connection:
        return sqlite3.connect(f"file:{self.state / 'provider.db'}?mode=ro", uri=True, timeout=10)

    def snapshot(self) -> tuple:
        """Everything a refused request must not change (the audit log may grow: refusals are audited)."""
        with self.db() as conn:
            return tuple(conn.execute(q).fetchall() for q in (
                "SELECT name, version, epoch_hw, current_epoch FROM groups ORDER BY name",
                "SELECT name, endpoints FROM members ORDER BY id",
                "SELECT name, used_at FROM tokens ORDER BY id",
                "SELECT \"group\", epoch FROM epochs ORDER BY epoch",
                "SELECT epoch, member FROM capsules ORDER BY epoch, member",
            ))


def init_provider(tmp: Path) -> ProviderEnv:
    port = free_port()
    state = tmp / "state"
    url = f"https://127.0.0.1:{port}"
    admin(state, "init", "--url", url)
    config = json.loads((state / "provider.json").read_text())
    return ProviderEnv(state, port, url, ServerProc(state, port), config)


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


@pytest.fixture(scope="module")
def provider_env(tmp_path_factory):
    env = init_provider(tmp_path_factory.mktemp("provider"))
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

    def enroll(self, token_text: str, endpoints=("127.0.0.1:40000",)) -> EnrollResult:
        self.token = parse_join_token(token_text)
        self.result = ProviderClient.enroll(self.token, self.name, self.ed, self.kem.public_bytes(),
                                            self.authenticator, list(endpoints), self.sessions)
        return self.result

    def client(self, timeout: float = 10.0) -> ProviderClient:
        return ProviderClient(self.token.url, self.token.tls_fingerprint, self.result.group, self.name, self.ed,
                              timeout=timeout, session_factory=self.sessions)


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


# --- the store under test: SQLite in memory, and PostgreSQL when one is given -------------------------

PG_URL_ENV = "GROUPTUN_TEST_PG_URL"
PG_SKIP = (f"PostgreSQL store tests are opt-in: set {PG_URL_ENV}=postgresql+psycopg://USER@/DB?host=SOCKET_DIR "
           "(a throwaway database: each test drops and recreates the provider's tables; needs psycopg 3)")
STORE_KINDS = ["sqlite", "postgresql"]


def fresh_store(kind: str):
    """An empty, initialised store of ``kind``; skips the test for "postgresql" unless PG_URL_ENV is set."""
    from provider.store import Store, metadata  # noqa: PLC0415 -- tests/provider is not a package

    if kind == "sqlite":
        store = Store(None)
    else:
        url = os.environ.get(PG_URL_ENV)
        if not url:
            pytest.skip(PG_SKIP)
        store = Store(None, url=url)
        metadata.drop_all(store.engine)
    store.create_schema()
    return store


def dump(store) -> str:
    """Every row of every provider table as text (bytes as hex): a portable ``iterdump``."""
    from provider.store import metadata  # noqa: PLC0415

    lines = []
    with store.read() as conn:
        for table in metadata.sorted_tables:
            for row in conn.execute(table.select()):
                lines.append(f"{table.name} " + " ".join(v.hex() if isinstance(v, bytes) else repr(v) for v in row))
    return "\n".join(lines)


def memory_provider(names=("alice", "bob"), signer=None):
    """An in-memory provider (SQLite) with group "lan" (10.77.0.0/24) and ``names`` enrolled with the
    credential b"credential"; returns (provider, {name: Ed25519 private key})."""
    from grouptun.core.archive import enroll_message  # noqa: PLC0415
    from provider.keys import Signer  # noqa: PLC0415
    from provider.service import Provider  # noqa: PLC0415
    from provider.store import Store  # noqa: PLC0415

    store = Store(None)
    store.create_schema()
    signer = signer or Signer.generate()
    provider = Provider(store, lambda: signer)
    provider.create_group("lan", "10.77.0.0/24")
    keys = {}
    for name in names:
        keys[name] = signing = ed25519.Ed25519PrivateKey.generate()
        ed = signing.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        secret = provider.invite("lan", name, 3600)
        kem = KemPrivateKey.from_random(os.urandom(96)).public_bytes()
        provider.enroll(secret, name, ed, kem, b"credential", [],
                        signing.sign(enroll_message(secret, name, ed, kem, b"credential", [])))
    provider.started_at -= 2  # `serve` starts listening a second after this; signatures before it are refused
    return provider, keys
