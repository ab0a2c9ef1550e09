"""Thin, bounded wrappers around ``ip`` for network-namespace labs.

Everything here shells out to iproute2 with a timeout, so a wedged kernel
call or a missing binary turns into a clear :class:`LabError` instead of a
hang. Processes are only ever signalled by pid, and only after
``ip netns identify`` confirms they live in a namespace whose name starts
with the prefix the caller owns: a stale pid can never hit a foreign process.

Limits: Linux only, needs root (CAP_NET_ADMIN + CAP_SYS_ADMIN) and
iproute2; interface names are limited to 15 bytes by the kernel.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

from grouptun.errors import SystemSetupError

IFNAMSIZ = 15  # usable bytes of a Linux interface name


class LabError(SystemSetupError):
    """A lab step failed; the message names the command and its stderr."""


def run(argv: list[str], timeout: float = 15.0, check: bool = True,
        input_text: str | None = None) -> subprocess.CompletedProcess:
    """Run ``argv`` (no shell) and return the completed process.

    Raises LabError on timeout, a missing binary, or (``check``) a non-zero
    exit, quoting the command and its stderr.
    """
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              input=input_text, check=False)
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"timed out after {timeout:.0f}s: {' '.join(argv)}") from exc
    except FileNotFoundError as exc:
        raise LabError(f"command not found: {argv[0]}") from exc
    if check and proc.returncode != 0:
        raise LabError(f"{' '.join(argv)} -> exit {proc.returncode}: "
                       f"{(proc.stderr or proc.stdout).strip()[:400]}")
    return proc


def ns_exec(ns: str, argv: list[str], timeout: float = 15.0, check: bool = True,
            input_text: str | None = None) -> subprocess.CompletedProcess:
    """Run ``argv`` inside namespace ``ns`` (``ip netns exec``)."""
    return run(["ip", "netns", "exec", ns, *argv], timeout=timeout, check=check,
               input_text=input_text)


def sysctl(ns: str, key: str, value: str | int) -> None:
    """Set ``key`` (dotted, e.g. ``net.ipv6.conf.all.disable_ipv6``) inside ``ns``.

    Writes /proc/sys directly with sh, so a minimal system without procps works.
    """
    path = "/proc/sys/" + key.replace(".", "/")
    ns_exec(ns, ["sh", "-c", 'printf "%s\\n" "$2" > "$1"', "sh", path, str(value)])


def list_ns(prefix: str = "") -> list[str]:
    """Names of the network namespaces starting with ``prefix``."""
    out = run(["ip", "netns", "list"]).stdout
    names = [line.split()[0] for line in out.splitlines() if line.strip()]
    return [n for n in names if n.startswith(prefix)]


def ns_exists(ns: str) -> bool:
    return ns in list_ns(ns)


def links(ns: str | None = None) -> list[str]:
    """Interface names in ``ns`` (or the current namespace when None)."""
    argv = ["ip", "-o", "link", "show"] if ns is None else ["ip", "-n", ns, "-o", "link", "show"]
    names = []
    for line in run(argv).stdout.splitlines():
        # "3: gt-lab-a0@if2: <...>": the name sits between the first ": " pair
        parts = line.split(": ", 2)
        if len(parts) >= 2:
            names.append(parts[1].split("@", 1)[0])
    return names


def ns_pids(ns: str) -> list[int]:
    proc = run(["ip", "netns", "pids", ns], check=False)
    return [int(p) for p in proc.stdout.split() if p.isdigit()]


def pid_namespace(pid: int) -> str | None:
    """Name of the named network namespace ``pid`` lives in, or None."""
    proc = run(["ip", "netns", "identify", str(pid)], check=False)
    name = proc.stdout.strip()
    return name or None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); treat it as gone.
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            return fh.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return False


def stop_pid(pid: int, ns_prefix: str, term_timeout: float = 5.0) -> bool:
    """SIGTERM ``pid``, then SIGKILL after ``term_timeout`` s.

    Only acts when the process lives in a namespace starting with
    ``ns_prefix``. Returns True when the process is gone afterwards.
    """
    ns = pid_namespace(pid)
    if ns is None or not ns.startswith(ns_prefix):
        return not pid_alive(pid)
    for sig, wait_s in ((signal.SIGTERM, term_timeout), (signal.SIGKILL, 2.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return True
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if not pid_alive(pid):
                return True
            time.sleep(0.05)
    return not pid_alive(pid)


def delete_ns(ns: str, ns_prefix: str) -> None:
    """Stop every process inside ``ns`` (by pid), then delete it.

    Deleting a namespace destroys the veth ends inside it, and with them
    their peers, so no interface outlives its namespace.
    """
    if not ns.startswith(ns_prefix):
        raise LabError(f"refusing to delete namespace {ns!r}: not under {ns_prefix!r}")
    for _ in range(3):  # a process may fork while we stop its parent
        pids = ns_pids(ns)
        if not pids:
            break
        for pid in pids:
            stop_pid(pid, ns_prefix)
    # `ip netns del` can lose a race with other `ip netns` users on the host
    # (the /run/netns mount dance); retry a few times before giving up.
    for _ in range(10):
        proc = run(["ip", "netns", "del", ns], check=False)
        if not ns_exists(ns):
            return
        time.sleep(0.2)
    raise LabError(f"could not delete namespace {ns}: {proc.stderr.strip()[:200]}")
