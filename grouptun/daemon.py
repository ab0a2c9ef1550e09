"""``grouptun up``: wires keystore, TUN, netlink, UDP, session, control path.

Start order: open the keystore with the credential (wrong credential ->
nothing else happens; an old-form keystore stages its migration,
:mod:`grouptun.control.credmigrate`), overwrite the credential, lock the state
directory (a second daemon on it stops here: StateDirLocked), pin the
provider keys, open the statefile, create the TUN device and give it
addresses/MTU/routes, bind UDP, start the data plane on a uvloop loop, the control socket, the
member names' DNS server on the tunnel addresses (:mod:`grouptun.apps.names_server`), then the control
thread (which asks for a fresh epoch: the challenge rule) and, with ``[network] advertise_routes``,
the request for those subnet routes (:mod:`grouptun.control.advertise`). systemd is told READY once the
interface and socket are up: the data plane then runs, even while the
provider is unreachable; STATUS says whether an epoch is held.

Key material (private keys, epoch secrets, PRKs, packet keys) lives in a
:class:`~grouptun.secmem.SecretArena` (memfd_secret or mlock, never in a
core dump), created first and closed last: every slot still out is zeroed
and unmapped.

Signals: SIGTERM/SIGINT (and ``grouptun down``) stop cleanly: STOPPING,
readers removed, session keys wiped (``Session.close``), the TUN closed
(which removes the interface and its routes), the socket file removed, the
credential and private keys overwritten. A daemon whose member was
started elsewhere (PROTOCOL.md 4) stops sending at once and stops the same
way, then raises InstanceSuperseded (its own exit status). SIGHUP re-reads the config: a bad
new config is refused and the running one kept; settings that need a
restart (group, provider, paths, listen address/port, interface) are
logged and ignored; the rest (log level, MTU, routes, reported endpoints,
timings) apply at once.

Every external piece is built through :class:`Factories`, so tests run the
whole daemon with a fake TUN, fake netlink and fake provider client. The
endpoints reported to the provider come from :mod:`grouptun.control.endpoints`,
systemd notifications and metrics from :mod:`grouptun.ops.hooks`. Each
archive (control thread) also updates the names' zone and the kernel routes
for the subnet routes approved behind other members.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import logging
import os
import signal
import threading
import time
from contextlib import ExitStack
from typing import Callable

from grouptun import config as config_mod
from grouptun.control import credential as credential_mod
from grouptun import native
from grouptun.control import credmigrate
from grouptun.control import keystore
from grouptun.ops import removednote
from grouptun.control.advertise import start_advertising
from grouptun.control.backoff import Backoff
from grouptun.config import Config
from grouptun.ops.ctlsocket import ControlServer
from grouptun.control.plane import ControlPlane
from grouptun.core.archive import Archive
from grouptun.core.envelope import ProviderKeys
from grouptun.core import exporter
from grouptun.core.policy import PolicyEnforcer
from grouptun.data.plane import DataPlane, LoopPort
from grouptun.control.endpoints import reported_endpoints
from grouptun.errors import (ConfigError, ControlError, ExportRefused, GrouptunError, InstanceSuperseded,
                             MemberRemoved)
from grouptun.ops.hooks import OpsHooks
from grouptun.control import vouchfile
from grouptun.control.providerurls import ProviderUrlsFile
from grouptun.secmem import SecretArena
from grouptun.control.statefile import EpochStateFile
from grouptun.control.statelock import StateDirLock

log = logging.getLogger("grouptun.daemon")

RESTART_ONLY = ("group", "provider", "paths", "names")
RESTART_ONLY_NETWORK = ("listen_address", "listen_port", "advertise_routes")  # advertised once, at start


def _default_tun(name: str, offload: str = "auto"):
    from grouptun.data.tun import TunDevice

    return TunDevice(name, offload=offload)


def _default_udp(address: str, port: int, offload: str = "auto"):
    from grouptun.data.udp import UdpTransport

    return UdpTransport(address, port, offload=offload)


def _default_netconfig(ifname: str):
    from grouptun.data.netconfig import NetConfig

    return NetConfig(ifname)


def _default_link_dns():
    """systemd-resolved's per-link DNS where it runs, else None (grouptun/apps/names_server.py)."""
    from grouptun.apps.names_server import ResolvectlLink

    return ResolvectlLink() if ResolvectlLink.available() else None


def _default_client(config: Config, keys: keystore.MemberKeys):
    from grouptun.control.client import ProviderClient

    # compact: the daemon needs no other member's KEM key (only `grouptun seal` does, and it asks for the
    # full archive itself), so it starts and watches with the compact archive (PROTOCOL.md 2.2)
    return ProviderClient(config.provider.all_urls, config.provider.tls_fingerprint, config.provider_group,
                          config.group.member, keys.signing_key, compact=True)


def _default_session(member: str, keepalive: float, run_key=None, policy=None):
    from grouptun.core.session import Session

    return Session(member, keepalive_interval=keepalive, run_key=run_key, policy=policy)


def _default_loop() -> asyncio.AbstractEventLoop:
    import uvloop

    return uvloop.new_event_loop()


def interface_mtu(configured: int, archive: Archive | None) -> int:
    """The TUN's MTU: the config's, lowered to the group's when the archive sets one (>= 1280, IPv6's floor)."""
    if archive is None or archive.mtu < 1280:
        return configured
    return min(configured, archive.mtu)


@dataclasses.dataclass
class Factories:
    tun: Callable = _default_tun
    udp: Callable = _default_udp
    netconfig: Callable = _default_netconfig
    client: Callable = _default_client
    session: Callable = _default_session
    loop: Callable = _default_loop
    backoff: Callable = Backoff
    link_dns: Callable = _default_link_dns


class Daemon:
    def __init__(self, config: Config, credential: bytearray, factories: Factories | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.credential = credential
        self.f = factories or Factories()
        self.clock = clock
        self.started_at = time.time()
        self.stopped = threading.Event()
        self._stop_event: asyncio.Event | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.applied_addresses: tuple[str, ...] = ()
        self.applied_mtu: int | None = None
        self._early_stop = False  # a SIGTERM that came before the loop ran (_catch_early_signals)
        self.names = None  # grouptun.apps.names_server.NameService while it runs
        self.applied_subnet_routes: set[str] = set()  # other members' approved prefixes routed via the TUN
        self.secrets: SecretArena | None = None
        self.cipher: native.Choice | None = None
        self.superseded: InstanceSuperseded | MemberRemoved | None = None
        # The access policy of the held epochs (issue 17 item 6); the data path asks it per packet
        self.policy = PolicyEnforcer()

    # --- setup pieces ---
    def _pinned(self) -> ProviderKeys:
        p = self.config.provider
        pinned = ProviderKeys(p.ed25519_public, p.mldsa65_public)
        if not hmac.compare_digest(pinned.fingerprint(), p.keys_hash):
            raise ConfigError("provider.keys_hash", "does not match provider.ed25519_public/mldsa65_public")
        return pinned

    def _apply_archive(self, archive: Archive) -> None:
        """Control thread: the archive's view of our addresses, the overlay routes, the MTU.

        The MTU is the smaller of ``network.mtu`` (what this host's underlay
        allows) and the group's (what every member agreed to).
        """
        me = archive.member(self.config.group.member)
        if me is None:
            return
        routes = [archive.cidr] + ([archive.cidr6] if archive.cidr6 else []) + list(self.config.network.routes)
        if self.names is not None:
            self.names.apply(archive)
        if tuple(me.addresses) != self.applied_addresses:
            log.info("interface %s addresses: %s", self.config.group.interface, ", ".join(me.addresses))
            self.net.set_addresses(list(me.addresses))
            self.applied_addresses = tuple(me.addresses)
            if self.names is not None:  # answer on the new addresses
                asyncio.run_coroutine_threadsafe(self.names.rebind(list(me.addresses)), self.loop)
        self.net.add_routes(routes)
        self._apply_subnet_routes(archive)
        mtu = interface_mtu(self.config.network.mtu, archive)
        if mtu != self.applied_mtu:
            log.info("interface %s MTU %d (config %d, group %d)", self.config.group.interface, mtu,
                     self.config.network.mtu, archive.mtu)
            self.net.set_mtu(mtu)
            self.applied_mtu = mtu

    def _apply_subnet_routes(self, archive: Archive) -> None:
        """Kernel routes through the interface for the prefixes approved behind OTHER members (ours lie
        behind us, on our LAN); prefixes no longer approved are taken away again."""
        wanted = {prefix for m in archive.members if m.name != self.config.group.member for prefix in m.routes}
        gone, new = self.applied_subnet_routes - wanted, wanted - self.applied_subnet_routes
        if gone:
            self.net.remove_routes(sorted(gone))
        if new:
            self.net.add_routes(sorted(new))
        if gone or new:
            log.info("subnet routes via %s: %s", self.config.group.interface, ", ".join(sorted(wanted)) or "none")
        self.applied_subnet_routes = wanted

    def _on_install(self, material) -> None:
        self.ops.notifier.status(f"epoch {material.epoch}, {material.group_size} members")

    def _on_trouble(self, problem: str | None) -> None:
        """Control thread: a refusal must not look like a healthy wait in ``systemctl status``."""
        epoch = self.control.held_epoch if self.control is not None else -1
        held = f"epoch {epoch}" if epoch >= 0 else "no epoch"
        self.ops.notifier.status(f"{held}; {problem} (retrying)" if problem else f"{held}; provider reachable")

    # --- control socket handlers (event loop thread) ---
    def status(self) -> dict:
        now = self.clock()
        cp = dataclasses.asdict(self.control.state) if self.control else {}
        return {
            "group": self.config.group.name, "member": self.config.group.member,
            "interface": self.config.group.interface, "listen_port": self.udp.port if self.udp else None,
            "pid": os.getpid(), "uptime": time.time() - self.started_at,
            "addresses": list(self.applied_addresses), "mtu": self.applied_mtu, "control": cp,
            "dataplane": self.data.status() if self.data else {},
            "cipher": self.cipher.describe if self.cipher else None,
            "session": self.session.status(now) if self.session else {},
            "secret_memory": self.secrets.status() if self.secrets else {},
            "membership": self._membership(),
            "names": self.names.status() if self.names else None,
            "policy": self.policy.status(),
        }

    def _membership(self) -> dict:
        """Our signed attributes and deadline, and the group's metadata, from the newest archive (issue 17)."""
        archive = self.control.archive if self.control else None
        me = archive.member(self.config.group.member) if archive is not None else None
        meta = archive.metadata if archive is not None else None
        return {"attributes": dict(me.attributes) if me else {}, "expires_at": me.expires_at if me else None,
                "group": None if meta is None else {"provider_id": meta.provider_id, "expires_at": meta.expires_at,
                                                    "owner": dict(meta.owner), "owners": list(meta.owners)}}

    def _metrics_snapshot(self) -> dict:
        """Event-loop thread: the session's status and the names' counters (grouptun/ops/metrics.py)."""
        snapshot = self.session.status(self.clock())
        if self.names is not None:
            snapshot["names"] = self.names.counters.snapshot()
        return snapshot

    def _on_superseded(self, exc: InstanceSuperseded | MemberRemoved) -> None:
        """Control thread: the session stopped sending already; stop the daemon, exit with exc's status.

        A removal also leaves a note beside the control socket (``grouptun.ops.removednote``), so
        ``grouptun status`` still says why once this daemon is gone."""
        self.superseded = exc
        if isinstance(exc, MemberRemoved):
            removednote.write(self.config.paths.control_socket, self.config.group.name,
                              self.config.group.member, str(exc))

        def stop() -> None:
            self.ops.notifier.status(f"stopping: {exc}")
            self.request_stop("the member was removed" if isinstance(exc, MemberRemoved)
                              else "the member was started elsewhere")

        try:
            self.loop.call_soon_threadsafe(stop)
        except RuntimeError:  # the loop is closed: the daemon is stopping already; run() still raises exc
            log.info("already stopping")

    def export(self, **raw) -> dict:
        """A crypto-product (PROTOCOL.md 3.1) of the sending or the previous epoch; logged by label only."""
        from grouptun.apps import products
        request = products.request_from_json(raw)
        refused = self._export_refusal(request.name)
        if refused is not None and self.control is not None and self.control.archive is not None:  # a signed rule
            log.warning("export %r refused: %s", request.name, refused)
            raise ExportRefused(f"export refused: {refused}")
        now = self.clock()
        state = self.session.sending_epoch(now) if request.epoch == "current" else self.session.previous_epoch(now)
        if state is None:
            raise ControlError(f"no {request.epoch} epoch held" + (" (past its grace, or none before)"
                                                                  if request.epoch == "previous" else " yet"))
        if refused is not None:  # no archive yet, its rules unknown: closed until one arrives
            raise ControlError(f"export refused: {refused}")
        first, count, value = self._product_text(request, state)
        log.info("export %r (epoch %d, %s%s)", first.label, state.epoch, request.format,
                 f", {count} products" if request.count else "")
        return {"type": first.type, "label": first.label, "epoch": state.epoch, "identity": first.identity,
                "entropy_bits": round(first.entropy_bits, 1), "count": count, "value": value}

    def _export_refusal(self, name: str) -> str | None:
        """Why the newest archive's export rules refuse product ``name`` to us; None: allowed.

        Kept by this (honest) daemon only: any member holding the epoch secret can derive any label."""
        archive = self.control.archive if self.control else None
        if archive is None:
            return "no signed archive held yet (its export rules are unknown)"
        me = archive.member(self.config.group.member)
        rules = archive.export_rules
        if rules is None:
            return None
        return rules.refusal(name, dict(me.attributes) if me is not None else {})

    def _product_text(self, request, state) -> tuple:
        """(first product, wiped; how many; their text) of ``request`` for the epoch ``state``."""
        from grouptun.apps import products
        secret = state.keys.exporter_secret()
        made = exporter.derive_stream(secret, request.type, request.name, request.count, request.context,
                                      request.length) if request.count else [
            exporter.derive_product(secret, request.type, request.name, request.context, request.length,
                                    self.config.group.name, state.epoch)]
        try:
            value = "\n".join(products.render(product, request.format) for product in made)
        finally:
            for product in made:
                product.wipe()
        return made[0], len(made), value

    async def _keep_export_files(self) -> None:
        """Event loop: the [export] files follow the epochs held (grouptun/apps/exportfiles.py)."""
        from grouptun.apps.exportfiles import CHECK_INTERVAL, ExportWriter

        writer = ExportWriter(self.config.export, self.config.group.name,
                              lambda request, state: self._product_text(request, state)[2])
        try:
            while True:
                now = self.clock()
                try:
                    refused = {r.name: why for r in self.config.export.files
                               if (why := self._export_refusal(r.name)) is not None}
                    writer.refresh(self.session.sending_epoch(now), self.session.previous_epoch(now), refused)
                except OSError as exc:  # a full or read-only /run must not stop the tunnel; retried next tick
                    log.warning("export files in %s not written: %s", writer.dir, exc.strerror)
                await asyncio.sleep(CHECK_INTERVAL)
        finally:
            writer.remove()

    def request_stop(self, why: str = "") -> dict:
        if why:
            log.info("stopping: %s", why)
        if self._stop_event is not None and not self._stop_event.is_set():
            # Let the control socket answer before the loop winds down.
            self.loop.call_later(0.05, self._stop_event.set)
        return {"stopping": True}

    def reload(self) -> None:
        self.ops.notifier.reloading()
        try:
            self._reload()
        finally:
            self.ops.notifier.ready()

    def _reload(self) -> None:
        if self.config.source is None:
            log.warning("SIGHUP: no config file to reload")
            return
        try:
            new = config_mod.load(self.config.source)
        except ConfigError as exc:
            log.error("SIGHUP: new config refused, keeping the running one: %s", exc)
            return
        old = self.config
        for section in RESTART_ONLY:
            if getattr(new, section) != getattr(old, section):
                log.warning("SIGHUP: [%s] changed; that needs a restart, ignored", section)
        for key in RESTART_ONLY_NETWORK:
            if getattr(new.network, key) != getattr(old.network, key):
                log.warning("SIGHUP: network.%s changed; that needs a restart, ignored", key)
        network = dataclasses.replace(new.network, listen_address=old.network.listen_address,
                                      listen_port=old.network.listen_port)
        self.config = dataclasses.replace(old, network=network, daemon=new.daemon)
        logging.getLogger().setLevel(new.daemon.log_level.upper())
        try:
            if network.mtu != old.network.mtu:
                mtu = interface_mtu(network.mtu, self.control.archive if self.control else None)
                self.net.set_mtu(mtu)
                self.applied_mtu = mtu
            self.net.add_routes(network.routes)
        except GrouptunError as exc:
            log.error("SIGHUP: applying network settings: %s", exc)
        if self.control is not None:
            self.control.watch_timeout = new.daemon.watch_timeout
            self.control.requests.report_interval = new.daemon.report_interval
            self.control.backoff.cap = new.daemon.backoff_max
        log.info("configuration reloaded from %s", self.config.source)

    # --- run ---
    def run(self) -> int:
        """Run until stopped; returns the exit code. Raises GrouptunError on setup failure,
        and InstanceSuperseded (after a clean stop) when another daemon took our member over."""
        self.session = self.data = self.control = self.udp = self.cipher = None
        with ExitStack() as stack:
            self.secrets = SecretArena()
            stack.callback(self.secrets.close)  # last: the keys and the session gave their slots back
            stack.callback(credential_mod.wipe, self.credential)
            self._catch_early_signals(stack)
            self.keys = keystore.load(self.config.keystore_path, self.credential, self.secrets)
            stack.callback(self.keys.wipe)
            self.proof = credmigrate.proof_for(self.config.keystore_path, self.credential, self.keys)
            stack.callback(self.proof.wipe)
            credential_mod.wipe(self.credential)  # the proof holds what the provider needs
            stack.callback(StateDirLock(self.config.paths.state_dir).acquire().release)
            pinned = self._pinned()
            self.cipher = native.choose(self.config.daemon.cipher)  # "native" but not built: stop before the TUN
            log.info("run cipher: %s", self.cipher.describe)
            server = ControlServer(self.config.paths.control_socket,
                                   {"status": self.status, "export": self.export,
                                    "down": lambda: self.request_stop("down requested")})
            server.check_free()  # a second `up` for the group stops here, before touching the TUN
            removednote.clear(self.config.paths.control_socket)  # a removal note of an earlier run
            stack.callback(server.remove)  # last: `grouptun down` returns once everything is gone
            statefile = EpochStateFile(self.config.statefile_path)
            self.ops = OpsHooks()
            stack.callback(self.ops.close)
            self.loop = self.f.loop()
            stack.callback(self.loop.close)
            asyncio.set_event_loop(self.loop)
            self._stop_event = asyncio.Event()
            self._setup_network(stack)
            self.session = self.f.session(self.config.group.member, self.config.daemon.keepalive_interval,
                                          self.cipher.maker, self.policy)
            stack.callback(self.session.close)
            self.data = DataPlane(self.session, self.tun, self.udp, clock=self.clock)
            self.data.attach(self.loop)
            stack.callback(self.data.detach)
            self.loop.run_until_complete(server.start())
            stack.callback(lambda: self.loop.run_until_complete(server.close()))
            self.ops.start(self.config, self.loop, self._metrics_snapshot, self.data.healthy)
            stack.callback(self.ops.stop, self.loop)
            self._start_names(stack)
            self._start_control(stack, pinned, statefile)
            if self.config.export.files:
                task = self.loop.create_task(self._keep_export_files())
                stack.callback(lambda: (task.cancel(), self.loop.run_until_complete(asyncio.gather(
                    task, return_exceptions=True))))
            self.loop.run_until_complete(self._serve(stack))
            self.ops.notifier.stopping()
            log.info("shutting down %s", self.config.group.name)
        self.stopped.set()
        if self.superseded is not None:
            raise self.superseded
        return 0

    def _setup_network(self, stack: ExitStack) -> None:
        cfg = self.config
        # [daemon] offload = "off" reaches the devices; "auto" keeps the factories' own default
        extra = {"offload": cfg.daemon.offload} if cfg.daemon.offload != "auto" else {}
        self.tun = self.f.tun(cfg.group.interface, **extra)
        stack.callback(self.tun.close)
        self.net = self.f.netconfig(cfg.group.interface)
        self.net.configure(cfg.group.addresses, cfg.network.mtu, cfg.network.routes)
        self.applied_addresses = tuple(cfg.group.addresses)
        self.applied_mtu = cfg.network.mtu
        self.udp = self.f.udp(cfg.network.listen_address, cfg.network.listen_port, **extra)
        stack.callback(self.udp.close)

    def _client_config(self, urls_file: ProviderUrlsFile) -> Config:
        """The config the client is made from: the provider URLs of the newest archive that listed
        them (kept in the state dir) replace the config's."""
        try:
            kept = urls_file.load()
        except ConfigError as exc:
            log.warning("%s; using provider.urls of the config", exc)
            kept = None
        if kept is None:
            return self.config
        log.info("provider URLs (from the newest archive that listed them): %s", ", ".join(kept))
        return dataclasses.replace(self.config, provider=dataclasses.replace(self.config.provider, urls=kept))

    def _start_names(self, stack: ExitStack) -> None:
        """DNS for the group's names on our tunnel addresses ([names]; grouptun/apps/names_server.py)."""
        cfg = self.config
        if not cfg.names.enabled:
            return
        from grouptun.apps.names import ClientBudgets, QueryBudget
        from grouptun.apps.names_server import NameService

        link = self.f.link_dns() if cfg.names.resolved == "auto" else None
        self.names = NameService(cfg.group.interface, cfg.names_domain, cfg.names.port,
                                 QueryBudget(cfg.names.rate, cfg.names.burst),
                                 ClientBudgets(cfg.names.client_rate, cfg.names.client_burst), self.clock, link)
        self.loop.run_until_complete(self.names.start(list(self.applied_addresses)))
        stack.callback(lambda: self.loop.run_until_complete(self.names.close()))

    def _start_control(self, stack: ExitStack, pinned: ProviderKeys, statefile: EpochStateFile) -> None:
        cfg = self.config
        urls_file = ProviderUrlsFile(cfg.paths.state_dir)
        client = self.f.client(self._client_config(urls_file), self.keys)
        port = LoopPort(self.loop, self.session, self.clock, on_install=self._on_install)
        self.control = ControlPlane(
            client=client, port=port, kem=self.keys.kem, proof=self.proof, pinned=pinned,
            group_id=cfg.group.group_id, member=cfg.group.member, statefile=statefile,
            endpoints=lambda: reported_endpoints(self.config, self.udp.port),
            can_reach=self.udp.can_reach, on_archive=self._apply_archive,
            watch_timeout=cfg.daemon.watch_timeout, report_interval=cfg.daemon.report_interval,
            backoff=self.f.backoff(1.0, cfg.daemon.backoff_max), metrics=self.ops.metrics, secrets=self.secrets,
            on_superseded=self._on_superseded, on_trouble=self._on_trouble, urls_file=urls_file,
            policy=self.policy, vouch=vouchfile.load(cfg.paths.state_dir),
            on_vouch=lambda signed: vouchfile.save(cfg.paths.state_dir, signed))
        stop = threading.Event()
        thread = threading.Thread(target=self.control.run, args=(stop,), name="grouptun-control", daemon=True)
        thread.start()
        start_advertising(client, cfg.network.advertise_routes, stop)

        def halt() -> None:
            stop.set()
            self._final_report(client)
            # A long-poll may hold the thread up to watch_timeout. It is a daemon thread:
            # once stop is set and the loop closed it can change nothing (an install would
            # hit the closed loop; the statefile is replaced atomically), so don't wait long.
            thread.join(timeout=0.5)
            client.close()

        stack.callback(halt)

    def _final_report(self, client, timeout: float = 2.0) -> None:
        """Tell the provider how many packets we sent (its per-sender limits); at most ``timeout`` s."""
        if self.control is None or self.control.archive is None:
            return
        sent = self.session.packets_sent()  # the loop is stopped: this thread owns the session now
        endpoints = reported_endpoints(self.config, self.udp.port)

        def send() -> None:
            try:
                client.report(endpoints, sent)
                log.info("final report sent (%s packets)", sum(sent.values()))
            except GrouptunError as exc:
                log.info("final report not sent: %s", exc)

        sender = threading.Thread(target=send, name="grouptun-final-report", daemon=True)
        sender.start()
        sender.join(timeout)

    def _catch_early_signals(self, stack: ExitStack) -> None:
        """Until the loop runs: remember SIGTERM (default would kill us mid-setup), ignore SIGHUP."""
        if threading.current_thread() is not threading.main_thread():
            return
        self._early_stop = False

        def early(signum, frame) -> None:
            self._early_stop = True

        for sig, handler in ((signal.SIGTERM, early), (signal.SIGHUP, signal.SIG_IGN)):
            stack.callback(signal.signal, sig, signal.signal(sig, handler))

    def _install_signals(self, stack: ExitStack) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # tests run the daemon in a thread; they stop it through the control socket
        if self._early_stop:
            self.request_stop("SIGTERM during start-up")
        for sig, handler in ((signal.SIGTERM, lambda: self.request_stop("SIGTERM")),
                             (signal.SIGINT, lambda: self.request_stop("SIGINT")),
                             (signal.SIGHUP, self.reload)):
            self.loop.add_signal_handler(sig, handler)
            stack.callback(self.loop.remove_signal_handler, sig)

    async def _serve(self, stack: ExitStack) -> None:
        # Signal handlers and READY from inside the running loop: uvloop 0.23 loses a
        # signal that arrives between add_signal_handler and the loop starting to run.
        self._install_signals(stack)
        self.ops.notifier.ready(f"{self.config.group.interface} up, waiting for the first epoch")
        log.info("grouptun %s up on %s (UDP port %d)", self.config.group.name,
                 self.config.group.interface, self.udp.port)
        await self._stop_event.wait()

