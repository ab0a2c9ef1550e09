"""A throwaway PostgreSQL server for the provider tests: ``initdb`` plus ``pg_ctl`` in a temporary directory.

The server runs as an unprivileged user (``nobody`` when the tests run as
root: initdb refuses root; else the current user), listens only on a Unix
socket inside its directory (``listen_addresses=''``: no network at all), with
``trust`` for the superuser ``gt`` and a password (scram) for the role
``gtpw``, so the password paths of provider/database.py meet a real server.
Durability is off (fsync, full_page_writes): the tests kill providers, not
the server. ``PgServer.new_database()`` creates an empty database per test.

Cleanup: the fixture stops the server (``pg_ctl stop -m immediate``) and
removes its directory on every exit path; a run killed with SIGKILL leaves
its directory behind, and the next run stops and removes those whose owner
pytest process is gone (directories named ``gt-pgtest-*`` holding our
``owner.pid``, nothing else). Binaries: ``initdb`` on PATH, else the newest
``/usr/lib/postgresql/<ver>/bin`` (Debian's ``apt-get install postgresql``,
which scripts/test runs as root).
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

PREFIX = "gt-pgtest-"
SUPERUSER = "gt"
PASSWORD_ROLE = "gtpw"
PASSWORD = "s3cret-pw-for-tests"  # the role only exists inside the throwaway cluster
TIMEOUT = 60


def find_bindir() -> Path | None:
    on_path = shutil.which("initdb")
    if on_path:
        return Path(os.path.realpath(on_path)).parent
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    return Path(found[-1]).parent if found else None


class PgServer:
    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix=PREFIX))
        self.data, self.socket_dir = self.root / "data", self.root / "sock"
        (self.root / "owner.pid").write_text(str(os.getpid()))
        self.user = pwd.getpwnam("nobody") if os.geteuid() == 0 else None
        self._names = itertools.count()
        self.started = False

    def _run(self, tool: str, *args: str) -> None:
        kwargs = {}
        if self.user is not None:  # initdb and postgres refuse to run as root
            kwargs = {"user": self.user.pw_uid, "group": self.user.pw_gid, "extra_groups": []}
        proc = subprocess.run([str(self.bindir / tool), *args], capture_output=True, text=True, timeout=TIMEOUT,
                              cwd=self.root, env={"PATH": os.environ.get("PATH", ""), "LC_ALL": "C"}, **kwargs)
        if proc.returncode != 0:
            raise RuntimeError(f"{tool} failed ({proc.returncode}): {proc.stdout}{proc.stderr}")

    def start(self) -> "PgServer":
        self.socket_dir.mkdir()
        if self.user is not None:
            for path in (self.root, self.socket_dir):
                os.chown(path, self.user.pw_uid, self.user.pw_gid)
        self._run("initdb", "-D", str(self.data), "-U", SUPERUSER, "--auth=trust", "--no-sync", "-E", "UTF8")
        with open(self.data / "pg_hba.conf", "w") as hba:  # the password role must give its password
            hba.write(f"local all {PASSWORD_ROLE} scram-sha-256\nlocal all all trust\n")
        options = (f"-k {self.socket_dir} -c listen_addresses='' -c fsync=off -c full_page_writes=off "
                   "-c synchronous_commit=off -c max_connections=300 -c shared_buffers=32MB")
        self._run("pg_ctl", "start", "-w", "-t", str(TIMEOUT), "-D", str(self.data), "-l",
                  str(self.root / "server.log"), "-o", options)
        self.started = True
        self.sql(f"CREATE ROLE {PASSWORD_ROLE} LOGIN PASSWORD '{PASSWORD}'")
        return self

    def url(self, database: str = "postgres", user: str = SUPERUSER, password: str | None = None) -> str:
        auth = user if password is None else f"{user}:{password}"
        return f"postgresql+psycopg://{auth}@/{database}?host={self.socket_dir}"

    def sql(self, statement: str, database: str = "postgres") -> None:
        import psycopg  # noqa: PLC0415 -- only where a server runs

        with psycopg.connect(host=str(self.socket_dir), user=SUPERUSER, dbname=database, autocommit=True) as conn:
            conn.execute(statement)

    def new_database(self) -> str:
        """A fresh empty database (owned by the password role too, so either may use it); its URL."""
        name = f"gt_{os.getpid()}_{next(self._names)}"
        self.sql(f"CREATE DATABASE {name} OWNER {PASSWORD_ROLE} TEMPLATE template0")
        self.sql(f"GRANT ALL ON SCHEMA public TO {PASSWORD_ROLE}", database=name)
        return self.url(name)

    def stop(self) -> None:
        try:
            if self.started:
                self._run("pg_ctl", "stop", "-m", "immediate", "-w", "-D", str(self.data))
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def remove_orphans() -> None:
    """Stop and remove servers left by test runs that were killed (their owner process is gone)."""
    for root in glob.glob(os.path.join(tempfile.gettempdir(), PREFIX + "*")):
        owner = Path(root) / "owner.pid"
        try:
            pid = int(owner.read_text())
        except (OSError, ValueError):
            continue
        if pid == os.getpid() or Path(f"/proc/{pid}").exists():
            continue
        pid_file = Path(root) / "data" / "postmaster.pid"
        try:
            postmaster = int(pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            postmaster = None
        if postmaster is not None and Path(f"/proc/{postmaster}/cmdline").exists():
            cmdline = Path(f"/proc/{postmaster}/cmdline").read_bytes()
            if b"postgres" in cmdline and root.encode() in cmdline:
                os.kill(postmaster, 9)  # that run's own server: its data is disposable
        shutil.rmtree(root, ignore_errors=True)
