"""The provider as a Type=notify service: READY=1 once it listens, a stop that drains its
long-polls, journald priorities (grouptun-provider.service)."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import sys
import threading
import time

import uvicorn
from provider_helpers import ENV, REPO, TestMember, admin, init_provider

from grouptun.core.archive import verify_archive
from grouptun.ops.sdnotify import Notifier
from provider.app import create_app
from provider.cli import _provider, build_parser
from provider.serving import ProviderServer, RoutineShutdown


class ListeningProbe(Notifier):
    """A notifier that records, at each READY, whether the server's socket is listening."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(None)
        self.sock, self.events = sock, []

    def ready(self, status: str | None = None) -> bool:
        self.events.append(("READY", status, self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)))
        return False

    def stopping(self, status: str | None = None) -> bool:
        self.events.append(("STOPPING", status, None))
        return False


def test_ready_is_sent_once_the_socket_listens(tmp_path):
    env = init_provider(tmp_path)
    provider = _provider(build_parser().parse_args(["group", "list", "--state", str(env.state)]))
    asgi, app = create_app(provider)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    probe = ListeningProbe(sock)
    server = ProviderServer(uvicorn.Config(asgi, log_config=None, lifespan="on"), env.url,
                            app.state.release_watchers, probe)
    thread = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[sock])), daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    server.should_exit = True
    thread.join(20)
    assert not thread.is_alive()
    assert probe.events == [("READY", f"serving {env.url}", 1), ("STOPPING", "draining", None)]


def _recv(sock: socket.socket, key: str, timeout: float) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            data = sock.recv(4096).decode()
        except TimeoutError:
            break
        msg = dict(line.split("=", 1) for line in data.split("\n") if line)
        if key in msg:
            return msg
    raise AssertionError(f"no {key} from the provider within {timeout} s")


def test_stop_ends_parked_long_polls_and_logs_with_journal_priorities(tmp_path):
    env = init_provider(tmp_path)
    admin(env.state, "group", "create", "lan", "--cidr", "10.77.0.0/24")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    log_path = tmp_path / "journal"
    log = open(log_path, "w")  # noqa: SIM115 -- the child's stderr, as journald's stream would be
    st = os.fstat(log.fileno())
    child_env = {**ENV, "NOTIFY_SOCKET": str(tmp_path / "notify"), "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
    proc = subprocess.Popen([sys.executable, "-m", "provider.cli", "serve", "--state", str(env.state),
                             "--listen", f"127.0.0.1:{env.port}", "--log-level", "info"],
                            env=child_env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=log)
    try:
        ready = _recv(notify, "READY", 30)
        assert ready["STATUS"] == f"serving {env.url}"
        socket.create_connection(("127.0.0.1", env.port), timeout=2).close()  # READY means it listens
        member = TestMember("alice")
        result = member.enroll(env.invite("alice"))
        version = verify_archive(result.archive, result.provider_keys).version
        answers = []
        watcher = threading.Thread(target=lambda: answers.append(member.client().watch(version, timeout=30)))
        watcher.start()
        time.sleep(1.0)  # the long-poll is parked in the hub
        second = subprocess.run([sys.executable, "-m", "provider.cli", "serve", "--state", str(env.state)],
                                env=child_env, cwd=REPO, stderr=log, timeout=60)
        proc.terminate()
        assert _recv(notify, "STOPPING", 10)["STOPPING"] == "1"
        assert proc.wait(timeout=15) == -15  # uvicorn re-raises SIGTERM after its shutdown: clean for systemd
        watcher.join(10)
        # No request was cut off: uvicorn cancelled nothing. (Idle pooled TLS keep-alives may still
        # hold the graceful-shutdown window open until its 2 s end; that cancels no request.)
        journal = log_path.read_text()
        assert re.search(r"Cancel [1-9]\d* running task", journal) is None, journal[-2000:]
        assert answers == [None]  # the parked watch answered 204 "unchanged"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        notify.close()
        log.close()
    lines = log_path.read_text().splitlines()
    assert second.returncode == 74
    assert "<3>grouptun-provider serve: another grouptun-provider serve is running" in "\n".join(lines)
    assert all(line.startswith("<") for line in lines), lines  # every line carries a priority
    assert not [line for line in lines if "Traceback" in line or "Cancel" in line and line[:3] != "<6>"], lines
    assert any(line.startswith("<6>uvicorn.error: Shutting down") for line in lines), lines


def test_only_a_shutdown_that_cancelled_nothing_is_routine():
    import logging

    def level(count: int) -> int:
        record = logging.LogRecord("uvicorn.error", logging.ERROR, __file__, 1,
                                   "Cancel %s running task(s), timeout graceful shutdown exceeded", (count,), None)
        RoutineShutdown().filter(record)
        return record.levelno

    assert level(0) == logging.INFO
    assert level(2) == logging.ERROR  # a request was cut off: stays an error
