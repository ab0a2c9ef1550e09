"""The unit's sandbox does not break the daemon.

No systemd runs here (PID 1 is not systemd), so the options that can break
a Python process are reproduced by hand from the unit file itself:
capabilities (setpriv), MemoryDenyWriteExecute (PR_SET_MDWE), the syscall
filter, RestrictAddressFamilies and NoNewPrivileges (sandbox_exec.py).
The daemon then goes through its whole lifecycle under them; the root test
adds the real TUN device and pyroute2 netlink inside a gt- namespace, with
/ read-only, an empty /var/lib and a pid-only /proc (ProtectSystem=strict,
TemporaryFileSystem=/var/lib, ProtectKernelTunables=yes, ProtectProc=invisible,
ProcSubset=pid).
Not emulated: the device cgroup (DevicePolicy=closed + /dev/net/tun),
InaccessiblePaths, PrivateTmp, and the StateDirectory= bind mount itself.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from ops.test_daemon_lifecycle import Child, run_lifecycle
from ops.units import SYSTEMD_DIR, parse_unit, values

HERE = Path(__file__).resolve().parent
SANDBOX = HERE / "sandbox_exec.py"
DAEMON_UNIT = parse_unit(SYSTEMD_DIR / "grouptun@.service")


def _mdwe_supported() -> bool:
    release = tuple(int(x) for x in os.uname().release.split(".")[:2] if x.isdigit())
    return release >= (6, 3)


pytestmark = [
    pytest.mark.skipif(shutil.which("systemd-analyze") is None or shutil.which("setpriv") is None,
                       reason="needs systemd-analyze and setpriv"),
    pytest.mark.skipif(not _mdwe_supported(), reason="PR_SET_MDWE needs Linux >= 6.3"),
    pytest.mark.skipif(not os.path.exists("/usr/include/x86_64-linux-gnu/asm/unistd_64.h"),
                       reason="needs x86_64 syscall table (linux-libc-dev)"),
]


def sandbox_prefix(unit: dict) -> tuple[str, ...]:
    """setpriv + sandbox_exec arguments equivalent to the unit's [Service] options."""
    svc = lambda key: values(unit, "Service", key)  # noqa: E731
    allow, deny = [], []
    for spec in svc("SystemCallFilter"):
        (deny if spec.startswith("~") else allow).extend(spec.lstrip("~").split())
    assert svc("SystemCallErrorNumber") == ["EPERM"]
    assert svc("MemoryDenyWriteExecute") == ["yes"] and svc("NoNewPrivileges") == ["yes"]
    caps = "".join(svc("CapabilityBoundingSet")).split()
    cap_arg = "-all" + "".join(f",+{c.removeprefix('CAP_').lower()}" for c in caps)
    setpriv = ("setpriv", f"--bounding-set={cap_arg}", "--inh-caps=-all")
    if os.geteuid() != 0:
        setpriv = ()  # an unprivileged run has nothing to drop
    families = ",".join(svc("RestrictAddressFamilies")[0].split())
    return (*setpriv, sys.executable, str(SANDBOX), "--allow", " ".join(allow), "--deny", " ".join(deny),
            "--families", families, "--")


def run_probe(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([*sandbox_prefix(DAEMON_UNIT), sys.executable, "-c", code],
                          capture_output=True, text=True, timeout=60)


def test_the_emulated_sandbox_really_restricts():
    """Negative control: W+X memory, packet sockets, chown and (as root) CAP_SYS_ADMIN are gone."""
    code = r"""
import ctypes, os, socket
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
addr = libc.mmap(None, 4096, 7, 0x22, -1, 0)
print("wx", "refused" if addr in (None, 2**64 - 1) else "allowed")
try:
    socket.socket(socket.AF_PACKET, socket.SOCK_RAW); print("packet allowed")
except OSError as e:
    print("packet", e.errno)
try:
    os.chown("/tmp", 0, 0); print("chown allowed")
except OSError as e:
    print("chown", e.errno)
caps = int([l for l in open("/proc/self/status") if l.startswith("CapEff")][0].split()[1], 16)
print("capeff", caps)
"""
    proc = run_probe(code)
    assert proc.returncode == 0, proc.stderr
    out = dict(line.split(" ", 1) for line in proc.stdout.splitlines())
    assert out["wx"] == "refused"
    assert out["packet"] == "97"  # EAFNOSUPPORT
    assert out["chown"] == "1"    # EPERM
    if os.geteuid() == 0:
        assert int(out["capeff"]) == 1 << 12 | 1 << 10  # CAP_NET_ADMIN and CAP_NET_BIND_SERVICE only


def test_daemon_lifecycle_under_the_unit_sandbox(tmp_path, notify_socket):
    """cryptography (HPKE, ML-DSA), uvloop, prometheus, sockets: all work sandboxed."""
    notify_socket.start_reader()
    child = Child(tmp_path, notify_socket.env_value, prefix=sandbox_prefix(DAEMON_UNIT))
    try:
        run_lifecycle(child, notify_socket)
    finally:
        child.stop()
    assert "Operation not permitted" not in child.logs()  # e.g. memfd_secret refused by the filter
    assert "cannot lock key memory" not in child.logs()  # mlock works under the unit's limits


# ProtectSystem=strict (+ the writable state directory), TemporaryFileSystem=/var/lib,
# ProtectKernelTunables=yes,
# ProtectProc=invisible and ProcSubset=pid (a proc mount with only the process
# directories: no /proc/sys, /proc/net, /proc/meminfo ...).
READ_ONLY_FS = """set -e
mount --bind "$1" "$1"
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /var/lib
mount -o remount,bind,ro /
mount -t proc -o nosuid,nodev,noexec,hidepid=invisible,subset=pid proc /proc
shift
exec "$@"
"""


def read_only_prefix(netns: str, writable: Path) -> tuple[str, ...]:
    return ("ip", "netns", "exec", netns, "unshare", "--mount", "--propagation", "private",
            "sh", "-c", READ_ONLY_FS, "sh", str(writable))


@pytest.mark.root
def test_real_tun_and_netlink_under_the_unit_sandbox(tmp_path, notify_path_socket):
    """Root: real /dev/net/tun + pyroute2 in a gt- namespace with only CAP_NET_ADMIN.

    The notify socket is a path (as systemd's /run/systemd/notify): abstract
    sockets belong to a network namespace and would not be reachable."""
    notify_socket = notify_path_socket
    netns = f"gt-ops{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", netns], check=True, timeout=30)
    try:
        subprocess.run(["ip", "-n", netns, "link", "set", "lo", "up"], check=True, timeout=30)
        fs = read_only_prefix(netns, tmp_path)
        # negative control: the emulated file-system protection is in force
        probe = subprocess.run([*fs, "sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward; touch /etc/gt-ops-probe; "
                                f"ls /proc/meminfo; ls /var/lib/dpkg; touch {tmp_path}/ok"],
                               capture_output=True, text=True, timeout=30)
        assert "/proc/sys/net/ipv4/ip_forward: Directory nonexistent" in probe.stderr, probe.stderr
        assert "/proc/meminfo': No such file" in probe.stderr, probe.stderr
        assert "Read-only file system" in probe.stderr, probe.stderr
        assert "/var/lib/dpkg': No such file" in probe.stderr, probe.stderr
        assert (tmp_path / "ok").exists() and not Path("/etc/gt-ops-probe").exists()
        notify_socket.start_reader()
        child = Child(tmp_path, notify_socket.env_value,
                      prefix=(*fs, *sandbox_prefix(DAEMON_UNIT)), extra=("--real-net",))

        def interface_is_configured(c: Child) -> None:
            show = subprocess.run(["ip", "-n", netns, "-o", "addr", "show", "dev", "gt-opsfake"],
                                  capture_output=True, text=True, timeout=30)
            assert "10.77.0.2/24" in show.stdout, show.stdout + show.stderr + c.logs()
            assert "fd77::2/64" in show.stdout

        try:
            run_lifecycle(child, notify_socket, on_ready=interface_is_configured)
        finally:
            child.stop()
        gone = subprocess.run(["ip", "-n", netns, "link", "show", "gt-opsfake"], capture_output=True,
                              text=True, timeout=30)
        assert gone.returncode != 0, "TUN device left behind after SIGTERM"
        assert "Operation not permitted" not in child.logs()
    finally:
        subprocess.run(["ip", "netns", "del", netns], timeout=30)


PROVIDER_UNIT = parse_unit(SYSTEMD_DIR / "grouptun-provider.service")


def _https_get(port: int, path: str) -> tuple[int, str]:
    import http.client
    import ssl

    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # self-signed test provider on loopback
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


@pytest.mark.root
def test_provider_serves_under_its_unit_sandbox():
    """`grouptun-provider serve` with no capabilities at all, no AF_NETLINK, MDWE and the
    syscall filter: TLS, uvicorn on uvloop, SQLite and /metrics work.

    It keeps uid 0 (with an empty capability set) because this host's interpreter
    lives under /root; the unit's User=grouptun-provider is not emulated."""
    import tempfile
    import time

    from ops.test_daemon_lifecycle import free_port

    base = Path(tempfile.mkdtemp(prefix="gt-ops-prov-", dir="/tmp"))
    try:
        base.chmod(0o755)
        state, port = base / "state", free_port()
        run_cli = (sys.executable, "-c", "import sys; from provider.cli import main; sys.exit(main())")
        env = dict(os.environ, PYTHONPATH=str(HERE.parents[1]))
        init = subprocess.run([*run_cli, "init", "--state", str(state), "--url", f"https://127.0.0.1:{port}"],
                              capture_output=True, text=True, timeout=120, env=env)
        assert init.returncode == 0, init.stderr
        prefix = sandbox_prefix(PROVIDER_UNIT)
        assert prefix[0] == "setpriv" and prefix[1] == "--bounding-set=-all"
        log = open(base / "serve.log", "w")
        proc = subprocess.Popen([*prefix, *run_cli, "serve", "--state", str(state),
                                 "--listen", f"127.0.0.1:{port}", "--metrics"],
                                stdout=log, stderr=log, env=env, cwd="/")
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    status, body = _https_get(port, "/healthz")
                    break
                except OSError:
                    assert proc.poll() is None and time.monotonic() < deadline, (base / "serve.log").read_text()
                    time.sleep(0.1)
            assert (status, body) == (200, '{"ok":true}')
            status, text = _https_get(port, "/metrics")
            assert status == 200 and 'route="/healthz"' in text, text[:500]
            proc.terminate()
            # uvicorn shuts down gracefully, then re-raises SIGTERM; systemd counts
            # death by SIGTERM as a clean stop (SuccessExitStatus= default).
            assert proc.wait(timeout=30) in (0, -15), (base / "serve.log").read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
            log.close()
        assert "Operation not permitted" not in (base / "serve.log").read_text()
    finally:
        shutil.rmtree(base)
