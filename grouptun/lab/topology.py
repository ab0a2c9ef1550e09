"""A bridge lab in network namespaces that is always torn down.

Layout for tag ``lab`` and hosts ``a b c``::

    gt-lab-a [gt-lab-a0 10.99.0.1 fd99::1] --veth-- gt-lab-as -+
    gt-lab-b [gt-lab-b0 10.99.0.2 fd99::2] --veth-- gt-lab-bs -+- gt-lab-br (bridge in gt-lab-sw)
    gt-lab-c [gt-lab-c0 10.99.0.3 fd99::3] --veth-- gt-lab-cs -+

Nothing is created in the caller's own namespace: each veth pair is made
inside the switch namespace and one end is moved straight into the host's
namespace. Addresses exist only inside the lab; no namespace has a route
beyond its own link. Teardown stops every process inside the lab's
namespaces (by pid, after checking the namespace) and deletes them, which
also destroys every veth; it runs from ``__exit__``, from ``atexit``, and on
SIGTERM/SIGHUP (turned into SystemExit so ``with`` blocks unwind).

Limits: one lab per tag at a time (``up`` removes leftovers of the same tag
first, as a crashed earlier run would leave them); tag + host name must fit
the 15-byte interface names; up to 250 hosts.
"""

from __future__ import annotations

import atexit
import ipaddress
import logging
import os
import shutil
import signal
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from grouptun.lab import netns
from grouptun.lab.netns import IFNAMSIZ, LabError
from grouptun.lab.process import Proc

log = logging.getLogger("grouptun.lab")

_LIVE: set["Lab"] = set()
_LIVE_LOCK = threading.Lock()


@dataclass(frozen=True)
class Host:
    """One lab host: a namespace with one underlay interface on the bridge."""

    name: str
    ns: str
    ifname: str      # underlay interface inside ``ns``
    port: str        # its bridge port inside the switch namespace
    ipv4: str
    ipv6: str


def remove_tag(tag: str) -> list[str]:
    """Delete every namespace ``gt-<tag>-*`` (stopping what runs inside, by pid),
    host namespaces before the switch. Returns the names removed."""
    prefix = f"gt-{tag}-"
    names = netns.list_ns(prefix)
    names.sort(key=lambda n: n == f"{prefix}sw")
    errors = []
    for name in names:          # keep going: one stuck namespace must not strand the others
        try:
            netns.delete_ns(name, prefix)
        except LabError as exc:
            errors.append(str(exc))
    left = netns.list_ns(prefix)
    if left or errors:
        raise LabError(f"could not delete namespaces {' '.join(left)}: {'; '.join(errors)}")
    return names


def _teardown_all() -> None:
    with _LIVE_LOCK:
        labs = list(_LIVE)
    for lab in labs:
        lab.down()


def _on_signal(signum, _frame):
    # Unwind through every ``with Lab(...)`` / finally; atexit covers the rest.
    raise SystemExit(128 + signum)


def install_signal_handlers() -> None:
    """Turn SIGTERM/SIGHUP into SystemExit (main thread, default handlers only)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) in (signal.SIG_DFL, None):
            signal.signal(sig, _on_signal)


atexit.register(_teardown_all)


class Lab:
    """Namespaces ``gt-<tag>-<host>`` around a bridge in ``gt-<tag>-sw``."""

    def __init__(self, tag: str, hosts: tuple[str, ...] = ("a", "b", "c"),
                 subnet4: str = "10.99.0.0/24", subnet6: str = "fd99::/64",
                 mtu: int = 1500, workdir: str | None = None,
                 keep_workdir: bool = False) -> None:
        if not tag or not tag.isalnum() or not tag.islower():
            raise LabError(f"lab tag must be short lowercase alphanumerics, got {tag!r}")
        self.tag = tag
        self.prefix = f"gt-{tag}-"
        self.switch_ns = f"{self.prefix}sw"
        self.bridge = f"{self.prefix}br"
        self.mtu = mtu
        self._net4 = ipaddress.ip_network(subnet4)
        self._net6 = ipaddress.ip_network(subnet6)
        if not (self._net4.is_private and self._net6.is_private):
            raise LabError("lab subnets must be private (10.x / fd00::/8)")
        self.hosts: dict[str, Host] = {}
        self._next_index = 1
        self._pending = list(hosts)
        self.procs: list[Proc] = []
        # Remove only a workdir we created; a given one that existed stays.
        self._own_workdir = workdir is None or not Path(workdir).exists()
        base = "/dev/shm" if os.path.isdir("/dev/shm") else None  # tmpfs: credentials stay off disk
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix=f"gt-{tag}-", dir=base))
        self.workdir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.workdir, 0o700)
        self.keep_workdir = keep_workdir
        self._is_up = False
        self._detached = False

    # -- life cycle ---------------------------------------------------------
    def __enter__(self) -> "Lab":
        install_signal_handlers()
        try:
            self.up()
        except BaseException:
            self.down()
            raise
        return self

    def __exit__(self, *exc) -> None:
        if not self._detached:
            self.down()

    def up(self) -> "Lab":
        """Build the switch and every pending host; idempotent per tag."""
        with _LIVE_LOCK:
            _LIVE.add(self)
        self.remove_leftovers()
        self._is_up = True
        self._make_ns(self.switch_ns, ipv6=False)
        netns.run(["ip", "-n", self.switch_ns, "link", "add", self.bridge, "type", "bridge",
                   "mcast_snooping", "0"])
        netns.run(["ip", "-n", self.switch_ns, "link", "set", self.bridge, "up"])
        pending, self._pending = self._pending, []
        for name in pending:
            self.add_host(name)
        return self

    def down(self) -> None:
        """Stop everything in the lab and delete its namespaces (idempotent)."""
        try:
            for proc in list(self.procs):
                if proc.alive():
                    proc.stop(timeout=3.0)
        finally:
            try:
                self.remove_leftovers()
            finally:
                self._is_up = False
                with _LIVE_LOCK:
                    _LIVE.discard(self)
                if self._own_workdir and not self.keep_workdir:
                    shutil.rmtree(self.workdir, ignore_errors=True)

    def detach(self) -> None:
        """Leave the lab running after this process exits (``demo --keep``):
        no teardown at exit, workdir kept. Remove it later with
        :meth:`remove_leftovers` (or ``ip netns del``)."""
        self.keep_workdir = True
        self.procs.clear()
        with _LIVE_LOCK:
            _LIVE.discard(self)
        self._detached = True

    def describe(self) -> dict:
        """JSON-able description, enough for :meth:`adopt` in another process."""
        return {"tag": self.tag, "workdir": str(self.workdir), "mtu": self.mtu,
                "subnet4": str(self._net4), "subnet6": str(self._net6),
                "hosts": [vars(h) for h in self.hosts.values()]}

    @classmethod
    def adopt(cls, desc: dict) -> "Lab":
        """A handle on a lab built (and detached) by another process. It is not
        torn down at exit; hosts added through it can be removed with
        :meth:`remove_host`."""
        for h in desc["hosts"]:
            if not netns.ns_exists(h["ns"]):
                raise LabError(f"lab {desc['tag']!r} is not running: namespace {h['ns']} missing")
        lab = cls(desc["tag"], hosts=(), subnet4=desc["subnet4"], subnet6=desc["subnet6"],
                  mtu=desc["mtu"], workdir=desc["workdir"], keep_workdir=True)
        for h in desc["hosts"]:
            lab.hosts[h["name"]] = Host(**h)
        lab._next_index = 1 + max((int(ipaddress.ip_address(h.ipv4)) - int(lab._net4.network_address)
                                   for h in lab.hosts.values()), default=0)
        lab._is_up = True
        lab._detached = True
        return lab

    def remove_host(self, name: str) -> None:
        """Stop what runs in host ``name`` and delete its namespace."""
        host = self.host(name)
        for proc in [p for p in self.procs if p.ns == host.ns]:
            proc.stop(timeout=3.0)
        netns.delete_ns(host.ns, self.prefix)
        del self.hosts[name]

    def remove_leftovers(self) -> list[str]:
        """Delete every namespace of this tag (host namespaces first)."""
        return remove_tag(self.tag)

    # -- building -----------------------------------------------------------
    def _make_ns(self, ns: str, ipv6: bool) -> None:
        netns.run(["ip", "netns", "add", ns])
        netns.run(["ip", "-n", ns, "link", "set", "lo", "up"])
        for key in ("all", "default"):
            netns.sysctl(ns, f"net.ipv6.conf.{key}.disable_ipv6", 0 if ipv6 else 1)
            if ipv6:
                netns.sysctl(ns, f"net.ipv6.conf.{key}.accept_dad", 0)

    def add_host(self, name: str) -> Host:
        """Add one host (also after ``up``, e.g. an attacker)."""
        if not self._is_up:
            raise LabError("add_host needs a lab that is up (pass hosts to Lab() instead)")
        if name in self.hosts or name == "sw" or not name.isalnum():
            raise LabError(f"bad or duplicate host name {name!r}")
        ns, ifname, port = f"{self.prefix}{name}", f"{self.prefix}{name}0", f"{self.prefix}{name}s"
        if len(ifname) > IFNAMSIZ:
            raise LabError(f"interface name {ifname!r} longer than {IFNAMSIZ} bytes: shorten tag or host")
        index = self._next_index
        self._next_index += 1
        ipv4 = str(self._net4.network_address + index)
        ipv6 = str(self._net6.network_address + index)
        self._make_ns(ns, ipv6=True)
        netns.run(["ip", "-n", self.switch_ns, "link", "add", port, "type", "veth",
                   "peer", "name", ifname, "netns", ns])
        netns.run(["ip", "-n", self.switch_ns, "link", "set", port, "master", self.bridge,
                   "mtu", str(self.mtu), "up"])
        netns.run(["ip", "-n", ns, "link", "set", ifname, "mtu", str(self.mtu), "up"])
        netns.run(["ip", "-n", ns, "addr", "add", f"{ipv4}/{self._net4.prefixlen}", "dev", ifname])
        netns.run(["ip", "-n", ns, "-6", "addr", "add", f"{ipv6}/{self._net6.prefixlen}",
                   "dev", ifname, "nodad"])
        host = Host(name, ns, ifname, port, ipv4, ipv6)
        self.hosts[name] = host
        return host

    # -- using --------------------------------------------------------------
    def host(self, name: str) -> Host:
        try:
            return self.hosts[name]
        except KeyError:
            raise LabError(f"no host {name!r} in lab {self.tag!r}") from None

    def exec(self, name: str, argv: list[str], timeout: float = 15.0, check: bool = True,
             input_text: str | None = None):
        """Run ``argv`` to completion inside host ``name``'s namespace."""
        return netns.ns_exec(self.host(name).ns, argv, timeout=timeout, check=check,
                             input_text=input_text)

    def spawn(self, name: str, label: str, argv: list[str],
              env: dict[str, str] | None = None, cwd: str | None = None) -> Proc:
        """Start ``argv`` in the background in host ``name``; log in the workdir."""
        logdir = self.workdir / "logs"
        logdir.mkdir(exist_ok=True)
        proc = Proc(label, self.host(name).ns, argv, logdir / f"{label}.log",
                    self.prefix, env=env, cwd=cwd)
        self.procs.append(proc)
        return proc

    def sysctl(self, name: str, key: str, value: str | int) -> None:
        """Set a sysctl inside host ``name``'s namespace."""
        netns.sysctl(self.host(name).ns, key, value)

    def log_tails(self, lines: int = 15) -> str:
        """The last lines of every process log, for failure reports."""
        return "\n".join(f"--- {p.name} ({'running' if p.alive() else f'exit {p.returncode}'})\n"
                         f"{p.tail(lines)}" for p in self.procs)
