"""A Debian 12 root booted by systemd-nspawn, for tests that need a real systemd as PID 1.

The root file system is built once with debootstrap and cached under
/var/cache/grouptun-test, keyed by the package list (a change rebuilds it).
It is built in a temporary directory and renamed into place, so an
interrupted build never leaves a half root behind.

The container boots inside a private mount namespace (``unshare -m``) in
which a pure cgroup2 hierarchy is mounted on /sys/fs/cgroup: on a host with
a hybrid hierarchy systemd in the container would silently not enforce
``DeviceAllow=``. nspawn's default seccomp filter blocks bpf(), which systemd
needs for the device ACL, hence ``--system-call-filter=bpf``.

Run as a script, it builds (or reports) the cached root:
    python3 tests/ops/nspawn.py build
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SUITE = "bookworm"
# gcc, libssl-dev and python3-dev: install-host builds the native run cipher (grouptun/native), and
# the container has no network to fetch them at install time. systemd-resolved: the daemon registers
# its names' DNS server and domain for its interface there (issue 18).
PACKAGES = ("systemd", "systemd-sysv", "dbus", "python3", "python3-pip", "python3-venv",
            "iproute2", "iputils-ping", "gcc", "libssl-dev", "python3-dev", "systemd-resolved")
CACHE = Path("/var/cache/grouptun-test")
BUILD_TIMEOUT = 1500.0


def missing_tools() -> str | None:
    """Why a container cannot be booted here, or None."""
    if os.geteuid() != 0:
        return "needs root"
    for tool in ("systemd-nspawn", "unshare", "debootstrap"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt install systemd-container debootstrap)"
    if not Path("/sys/fs/cgroup").is_dir():
        return "no /sys/fs/cgroup"
    return None


def apt_mirror() -> str:
    """The Debian mirror this machine's apt already uses (never hard-coded here)."""
    sources = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for path in sources:
        if not path.is_file() or path.name.endswith(".disabled-by-farm"):
            continue
        text = path.read_text(errors="replace")
        suites = re.search(r"^Suites:.*\b" + SUITE + r"\b", text, re.M)
        for uri in re.findall(r"^URIs:\s*(\S+)", text, re.M):
            if suites and "security" not in uri:
                return uri
        for uri in re.findall(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+" + SUITE + r"\s", text, re.M):
            return uri
    raise RuntimeError(f"no apt source for {SUITE} in /etc/apt: cannot debootstrap")


def rootfs_path() -> Path:
    key = hashlib.sha256(" ".join((SUITE, *PACKAGES)).encode()).hexdigest()[:12]
    return CACHE / f"rootfs-{SUITE}-{key}"


def _cached(final: Path, build, log) -> Path:
    """``final``, made by ``build(tmp)`` in a temporary directory beside it and renamed into
    place, so that an interrupted build never leaves a half-built cache entry."""
    if final.is_dir():
        return final
    CACHE.mkdir(parents=True, exist_ok=True)
    for stale in CACHE.glob(f".build-{final.name}-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".build-{final.name}-", dir=CACHE))
    started = time.monotonic()
    try:
        build(tmp)
        os.chmod(tmp, 0o755)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"built {final} in {time.monotonic() - started:.0f} s")
    return final


def ensure_rootfs(log=print) -> Path:
    """The cached root, built first if absent (a minute or more; needs the mirror)."""
    def build(tmp: Path) -> None:
        subprocess.run(["debootstrap", "--variant=minbase", "--include=" + ",".join(PACKAGES),
                        SUITE, str(tmp), apt_mirror()],
                       check=True, timeout=BUILD_TIMEOUT, stdout=subprocess.DEVNULL)
        (tmp / "etc/hostname").write_text("gt-nspawn\n")

    return _cached(rootfs_path(), build, log)


def ensure_wheels(src: Path, log=print) -> Path:
    """Wheels of the package's dependencies (cp311, as Debian 12's python), built on this host,
    cached by the pyproject.toml they were built for; plus setuptools to build the package."""
    key = hashlib.sha256((src / "pyproject.toml").read_bytes()).hexdigest()[:12]

    def build(tmp: Path) -> None:
        pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
        subprocess.run([*pip, "wheel", "--wheel-dir", str(tmp), str(src)], check=True, timeout=900,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        subprocess.run([*pip, "download", "--dest", str(tmp), "--only-binary=:all:", "setuptools>=65"],
                       check=True, timeout=300, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for own in tmp.glob("grouptun-*.whl"):  # the tree under test is built in the container
            own.unlink()

    return _cached(CACHE / f"wheels-{key}", build, log)


def _terminate_with_parent() -> None:
    """In the child before exec: SIGTERM when the test process dies (killed, timed out), which
    systemd-nspawn answers by powering the container off; the mounts go with its namespace."""
    import ctypes
    import signal

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


class Container:
    """A booted container: ``run`` executes a command inside it (nsenter into its PID 1).

    The root is an overlay over the cached root (the cache stays pristine); the overlay
    and the cgroup2 mount live in the private mount namespace of the ``unshare -m`` that
    runs systemd-nspawn, so they vanish with it. ``close`` always stops it (bounded).
    """

    def __init__(self, rootfs: Path, work: Path, name: str) -> None:
        self.rootfs, self.work, self.name = rootfs, work, name
        self.merged = work / "merged"
        self.console = work / "console.log"
        self.proc: subprocess.Popen | None = None
        self.leader: int | None = None

    def prepare(self) -> Path:
        """The directory that becomes the container's upper layer at boot: write files
        into it (``upper / "srv/x"``) before :meth:`boot`."""
        for d in ("upper", "overlay-work", "merged"):
            (self.work / d).mkdir(parents=True, exist_ok=True)
        return self.work / "upper"

    def boot(self, timeout: float = 90.0, bind_ro: tuple[tuple[Path, str], ...] = ()) -> None:
        binds = "".join(f" --bind-ro={host}:{inside}" for host, inside in bind_ro)
        script = (
            "set -e; mount --make-rprivate /; "
            "mount -t cgroup2 cgroup2 /sys/fs/cgroup; "
            f"mount -t overlay overlay -o lowerdir={self.rootfs},upperdir={self.work}/upper,"
            f"workdir={self.work}/overlay-work {self.merged}; "
            f"exec systemd-nspawn -q -D {self.merged} -b --register=no --keep-unit --private-network "
            f"--system-call-filter=bpf --machine={self.name} --console=read-only{binds}"
        )
        with open(self.console, "wb") as out:
            self.proc = subprocess.Popen(["unshare", "-m", "sh", "-c", script], stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                         preexec_fn=_terminate_with_parent)
        deadline = time.monotonic() + timeout
        while self.leader is None and time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"systemd-nspawn exited ({self.proc.returncode}): {self.console_text()}")
            self.leader = self._find_leader()
            time.sleep(0.2)
        if self.leader is None:
            raise RuntimeError(f"no container init within {timeout} s: {self.console_text()}")
        state = ""
        while state not in ("running", "degraded"):  # "offline" while PID 1 cannot answer yet
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"container boot: {state!r}; {self.console_text()}")
            state = self.run("systemctl is-system-running --wait", timeout=max(left, 1.0),
                             check=False).stdout.strip()
            time.sleep(0.2)

    def _find_leader(self) -> int | None:
        """The container's PID 1 on the host: a process named systemd below nspawn."""
        below = {self.proc.pid}
        for _ in range(4):
            children = set()
            for stat in Path("/proc").glob("[0-9]*/stat"):
                try:
                    pid, rest = stat.read_text().split(" ", 1)
                    comm, fields = rest.rsplit(") ", 1)
                except (OSError, ValueError):
                    continue
                if int(fields.split()[1]) in below:
                    if comm == "(systemd":
                        return int(pid)
                    children.add(int(pid))
            below = children
        return None

    def console_text(self) -> str:
        return self.console.read_text(errors="replace")[-3000:] if self.console.exists() else ""

    def run(self, command: str, timeout: float = 60.0, check: bool = True,
            input: str | None = None) -> subprocess.CompletedProcess:
        """``sh -c command`` inside the container (all its namespaces, its root)."""
        proc = subprocess.run(["nsenter", "-t", str(self.leader), "-m", "-u", "-i", "-n", "-p", "-C", "-r", "-w",
                               "/usr/bin/env", "-i", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                               "LANG=C.UTF-8", "SYSTEMD_PAGER=", "SYSTEMD_COLORS=0", "sh", "-c", command],
                              capture_output=True, text=True, timeout=timeout, input=input,
                              start_new_session=True)  # a `kill 0` in there must not reach this test's own group
        if check and proc.returncode != 0:
            raise AssertionError(f"in the container: {command!r} exited {proc.returncode}\n"
                                 f"stdout: {proc.stdout[-3000:]}\nstderr: {proc.stderr[-3000:]}")
        return proc

    def close(self) -> None:
        """Power off (bounded), else kill its init (which ends the whole PID namespace)."""
        if self.proc is None:
            return
        if self.proc.poll() is None and self.leader is not None:
            subprocess.run(["kill", "-RTMIN+4", str(self.leader)], check=False)  # systemd: poweroff
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                pass
        if self.proc.poll() is None:
            if self.leader is not None:
                subprocess.run(["kill", "-KILL", str(self.leader)], check=False)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait(timeout=10)


if __name__ == "__main__":
    if sys.argv[1:] == ["build"]:
        print(ensure_rootfs())
    else:
        print(__doc__)
