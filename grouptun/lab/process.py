"""Processes running inside a lab namespace, with their output in a log file.

``ip netns exec`` execs the command, so the pid we hold is the process
itself: stopping it by pid is exact, and the namespace check in
:func:`grouptun.lab.netns.stop_pid` guards against stale pids.

Each process gets a process group of its own (so a Ctrl-C in the terminal
reaches only us, and we stop the lab in order) but stays in our session.
A session of its own would also give it a scheduler autogroup of its own
(``kernel.sched_autogroup_enabled``, on by default): the CPU is then shared
between groups, not processes, so each daemon would get as much CPU as
iperf3 and everything else of the run together. The peers harness starts
nebula, wireguard-go and the others in its own session; grouptun must run
under the same rules for the comparison to mean anything. (Measured: the
harness's nebula at 940-990 Mbit/s TCP x1 with its iperf3 server in the
run's session, 620-690 with the server in a session of its own.)
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from grouptun.lab import netns
from grouptun.lab.wait import wait_until


class Proc:
    """One background process in a namespace; output goes to ``log``."""

    def __init__(self, name: str, ns: str, argv: list[str], log: Path,
                 ns_prefix: str, env: dict[str, str] | None = None,
                 cwd: str | None = None) -> None:
        self.name = name
        self.ns = ns
        self.argv = list(argv)
        self.log = log
        self._ns_prefix = ns_prefix
        full_env = dict(os.environ)
        full_env.update(env or {})
        with open(log, "ab") as out:
            out.write(f"### {time.strftime('%H:%M:%S')} start in {ns}: {' '.join(argv)}\n".encode())
            out.flush()
            self._popen = subprocess.Popen(
                ["ip", "netns", "exec", ns, *argv], stdin=subprocess.DEVNULL,
                stdout=out, stderr=subprocess.STDOUT, env=full_env, cwd=cwd,
                process_group=0)  # Ctrl-C in the terminal goes to us only (see below)
        self.pid = self._popen.pid

    def __repr__(self) -> str:
        return f"Proc({self.name!r}, pid={self.pid}, ns={self.ns!r})"

    @property
    def returncode(self) -> int | None:
        return self._popen.poll()

    def alive(self) -> bool:
        return self._popen.poll() is None

    def wait(self, timeout: float) -> int:
        """Wait up to ``timeout`` s for exit; raises LabError if still running."""
        try:
            return self._popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise netns.LabError(f"{self.name} still running after {timeout:.0f}s") from exc

    def signal(self, sig: int) -> None:
        """Send ``sig`` (no namespace check needed: we own this child)."""
        if self.alive():
            os.kill(self.pid, sig)

    def kill9(self) -> None:
        """SIGKILL and reap: simulates a crash."""
        self.signal(signal.SIGKILL)
        self.wait(5.0)

    def stop(self, timeout: float = 5.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout`` s; returns the exit code."""
        if self.alive():
            self.signal(signal.SIGTERM)
            try:
                self._popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self._popen.wait(timeout=5.0)
        return self._popen.returncode

    def output(self, max_bytes: int = 200_000) -> str:
        try:
            data = self.log.read_bytes()
        except OSError:
            return ""
        return data[-max_bytes:].decode(errors="replace")

    def tail(self, lines: int = 20) -> str:
        return "\n".join(self.output().splitlines()[-lines:])

    def wait_for_output(self, needle: str, timeout: float) -> bool:
        """True once ``needle`` shows in the log (False if it exits first or times out)."""
        return wait_until(lambda: needle in self.output() or not self.alive(),
                          timeout=timeout) and needle in self.output()
