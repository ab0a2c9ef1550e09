"""`grouptun up` as systemd sees it: notify order, SIGHUP reload, SIGTERM drain,
watchdog pings, journald log format, metrics endpoint. Fake TUN/netlink/provider
(tests/daemon/fakes.py) so no root is needed; everything else is the real process."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
CHILD = HERE / "daemon_child.py"

pytestmark = pytest.mark.skipif(not (REPO / "grouptun/daemon.py").exists(), reason="needs grouptun/daemon.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Child:
    def __init__(self, tmp_path: Path, notify_value: str, prefix: tuple[str, ...] = (),
                 extra: tuple[str, ...] = ()) -> None:
        self.work = tmp_path / "work"
        self.work.mkdir()
        self.log_path = tmp_path / "stderr.log"
        self.log = open(self.log_path, "w")
        st = os.fstat(self.log.fileno())
        env = {k: v for k, v in os.environ.items() if k not in ("WATCHDOG_PID", "LISTEN_FDS")}
        env.update(NOTIFY_SOCKET=notify_value, WATCHDOG_USEC="1000000", PYTHONPATH=str(REPO),
                   JOURNAL_STREAM=f"{st.st_dev}:{st.st_ino}")
        self.metrics_port = free_port()
        # "ip netns exec NAME ...": the metrics listener is on that namespace's loopback
        self.netns = next((prefix[i + 1] for i, a in enumerate(prefix[:-1])
                           if a == "exec" and prefix[i - 1] == "netns"), None)
        self.proc = subprocess.Popen([*prefix, sys.executable, str(CHILD), str(self.work), str(self.metrics_port),
                                      *extra],
                                     env=env, stdout=self.log, stderr=self.log, cwd=str(REPO))

    def scrape(self, netns: str | None = None) -> dict:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        if netns is None:
            with urllib.request.urlopen(url, timeout=10) as resp:
                text = resp.read().decode()
        else:  # the listener is on the namespace's loopback
            code = ("import urllib.request, sys; "
                    f"sys.stdout.write(urllib.request.urlopen({url!r}, timeout=10).read().decode())")
            text = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", code], check=True,
                                  capture_output=True, text=True, timeout=30).stdout
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for fam in text_string_to_metric_families(text) for s in fam.samples}

    def wait(self, timeout: float = 30.0) -> int:
        """Exit code; on a hang, the daemon's thread stacks (SIGUSR1) go into the failure."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGUSR1)
            try:
                self.proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                pass
            raise AssertionError(f"daemon did not exit within {timeout}s; log:\n{self.logs()}") from None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        self.log.close()

    def logs(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return self.log_path.read_text()


@pytest.fixture
def child(tmp_path, notify_socket):
    notify_socket.start_reader()  # drains like PID 1 (an unread queue would drop messages)
    c = Child(tmp_path, notify_socket.env_value)
    try:
        yield c
    finally:
        c.stop()


def test_notify_lifecycle_reload_and_drain(child, notify_socket):
    run_lifecycle(child, notify_socket)


def run_lifecycle(child: Child, ns, on_ready=None) -> None:
    """READY -> epoch -> watchdog -> metrics -> SIGHUP x2 (one bad config) -> SIGTERM -> exit 0.

    ``on_ready(child)`` runs once an epoch is installed (extra checks while up).
    """
    try:
        ready = ns.wait_for("READY", "1", timeout=60)
    except AssertionError:
        raise AssertionError(f"no READY=1; daemon log:\n{child.logs()}") from None
    epoch = ns.wait_for("STATUS", contains="epoch", timeout=30)
    ns.wait_for("WATCHDOG", "1", start=ready, timeout=30)

    g = ("group", "lan")
    got = child.scrape(child.netns)
    assert got[("grouptun_snapshot_ok", (g,))] == 1
    assert got[("grouptun_epoch", (g,))] >= 1
    assert got[("grouptun_epochs_installed_total", (g,))] >= 1
    if on_ready is not None:
        on_ready(child)

    child.proc.send_signal(signal.SIGHUP)
    reloading = ns.wait_for("RELOADING", "1", start=epoch + 1, timeout=30)
    assert int(ns.messages[reloading]["MONOTONIC_USEC"]) > 0
    reloaded = ns.wait_for("READY", "1", start=reloading + 1, timeout=30)

    # a broken config on disk: reload is refused, the daemon keeps running
    (child.work / "lan.toml").write_text("[group]\nname = 1\n")
    child.proc.send_signal(signal.SIGHUP)
    reloading2 = ns.wait_for("RELOADING", "1", start=reloaded + 1, timeout=30)
    ready2 = ns.wait_for("READY", "1", start=reloading2 + 1, timeout=30)
    assert child.proc.poll() is None

    child.proc.send_signal(signal.SIGTERM)
    stopping = ns.wait_for("STOPPING", "1", start=ready2 + 1, timeout=30)
    assert child.wait() == 0
    assert ready < reloading < reloaded < reloading2 < ready2 < stopping
    assert not any("READY" in m for m in ns.messages[stopping:])

    log = child.logs()
    lines = log.splitlines()
    assert lines, "daemon logged nothing"
    bad = [line for line in lines if not re.match(r"<[0-7]>\S+: ", line)]
    assert not bad, f"lines without a journald priority prefix: {bad}"
    assert any(line.startswith("<3>") and "new config refused" in line for line in lines), log
    assert "correct horse" not in log  # the credential never reaches the log


def test_watchdog_pings_stop_while_the_daemon_loop_is_stalled(child, notify_socket):
    """The real daemon pings from its event loop: a stalled loop sends none."""
    ns = notify_socket
    ready = ns.wait_for("READY", "1", timeout=60)
    ns.wait_for("WATCHDOG", "1", start=ready, timeout=30)
    child.proc.send_signal(signal.SIGUSR2)  # daemon_child: block the loop for 2 s
    start = ns.wait_for("X_GT_BLOCK", "start", timeout=30)
    end = ns.wait_for("X_GT_BLOCK", "end", start=start, timeout=30)
    after = ns.wait_for("WATCHDOG", "1", start=end, timeout=30)  # and they resume
    assert not [m for m in ns.messages[start:end] if "WATCHDOG" in m]
    assert after > end
    child.proc.send_signal(signal.SIGTERM)
    assert child.wait() == 0


# uvloop 0.23 loses a signal that arrives while the loop is not running, even
# after add_signal_handler (plain asyncio does not). daemon.py therefore
# registers its handlers and sends READY=1 from a coroutine already running
# on the loop; this test keeps `systemctl stop` right after start from
# hanging until TimeoutStopSec.
def test_sigterm_right_after_ready_exits_cleanly(child, notify_socket):
    notify_socket.wait_for("READY", "1", timeout=60)
    child.proc.send_signal(signal.SIGTERM)
    assert child.wait(timeout=10) == 0  # a healthy daemon exits in well under a second
    notify_socket.wait_for("STOPPING", "1", timeout=10)
