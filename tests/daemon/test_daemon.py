"""The whole daemon without root: two members over real loopback UDP, fake TUN/netlink/provider."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import threading
import time
from pathlib import Path

import pytest

from grouptun import config as cfgmod
from grouptun import native
from grouptun.cli import main as cli
from grouptun.cli import ping as cmd_ping
from grouptun.ops import ctlsocket as control
from grouptun.control import credmigrate
from grouptun.control import keystore
from grouptun.cli.status import format_status
from grouptun.daemon import Daemon, Factories
from grouptun.errors import ConfigError, InstanceSuperseded, KeystoreError, KeystoreLocked, StateDirLocked
from grouptun.data.udp import UdpTransport

from .fakes import (CREDENTIAL, FAST, FakeEcho, FakeLinkDns, FakeNetConfig, FakeProvider, FakeTun, arena_holds,
                    ipv4_packet, legacy_keystore, vm_locked)


def make_config(provider: FakeProvider, name: str, root: Path, extra: str = "") -> cfgmod.Config:
    state = root / name / "state"
    state.mkdir(parents=True)
    provider.secrets[name] = bytes(keystore.save(state / "keys.enc", provider.members[name], bytearray(CREDENTIAL),
                                                 FAST))
    cfg = cfgmod.Config(
        group=cfgmod.GroupConfig(name="lan", member=name, group_id=provider.group_id, interface="gt-t" + name,
                                 addresses=provider.addresses[name]),
        provider=cfgmod.ProviderConfig(url="https://127.0.0.1:1", tls_fingerprint="00" * 32,
                                       keys_hash=provider.keys.fingerprint(),
                                       ed25519_public=provider.keys.ed25519_public,
                                       mldsa65_public=provider.keys.mldsa65_public),
        network=cfgmod.NetworkConfig(listen_address="127.0.0.1", endpoints=("127.0.0.1:9",)),
        paths=cfgmod.PathsConfig(state_dir=state, control_socket=root / name / "lan.sock"),
        daemon=cfgmod.DaemonConfig(watch_timeout=1.0, report_interval=1.0, backoff_max=1.0),
    )
    path = root / name / "lan.toml"
    path.write_text(cfgmod.render(cfg) + extra)
    return cfgmod.load(path)


class Member:
    def __init__(self, provider: FakeProvider, name: str, root: Path) -> None:
        self.name, self.provider = name, provider
        self.config = make_config(provider, name, root)
        self.tun = self.net = None

        def udp(address, port):
            sock = UdpTransport(address, 0)
            provider.endpoints[name] = (f"127.0.0.1:{sock.port}",)
            return sock

        def tun(ifname):
            self.tun = FakeTun(ifname)
            return self.tun

        def net(ifname):
            self.net = FakeNetConfig(ifname)
            return self.net

        self.credential = bytearray(CREDENTIAL)
        self.daemon = Daemon(self.config, self.credential, Factories(
            tun=tun, udp=udp, netconfig=net, client=lambda c, k: provider.client(name), link_dns=FakeLinkDns))
        self.result = None
        self.error = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        try:
            self.result = self.daemon.run()
        except Exception as exc:  # surfaced by the test through self.error
            self.error = exc

    def status(self) -> dict:
        return control.request(self.config.paths.control_socket, "status")

    def wait_for(self, predicate, what: str, timeout: float = 10.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.error:
                raise self.error
            if self.config.paths.control_socket.exists():
                st = self.status()
                if predicate(st):
                    return st
            time.sleep(0.02)
        pytest.fail(f"{self.name}: timed out waiting for {what}")


def epochs(st):
    return [e["epoch"] for e in st["session"]["epochs"]]


def start_pair(alice: Member, bob: Member) -> None:
    """alice starts (epoch 1), then bob, whose start opens epoch 2; alice's watch picks it up."""
    alice.thread.start()
    alice.wait_for(lambda st: epochs(st), "alice's first epoch")
    bob.thread.start()
    bob.wait_for(lambda st: 2 in epochs(st), "bob's epoch")


def test_two_daemons_carry_a_packet_then_stop_cleanly(tmp_path, capsys, caplog):
    caplog.set_level(logging.INFO, logger="grouptun.daemon")
    provider = FakeProvider(["alice", "bob"])
    alice, bob = Member(provider, "alice", tmp_path), Member(provider, "bob", tmp_path)
    try:
        start_pair(alice, bob)
        alice.wait_for(lambda st: 2 in epochs(st), "alice follows to epoch 2")

        packet = ipv4_packet("10.77.0.2", "10.77.0.3", b"through two daemons")
        deadline = time.monotonic() + 10
        got = []
        while not got and time.monotonic() < deadline:
            alice.tun.inject(packet)
            time.sleep(0.05)
            got = bob.tun.delivered()
        assert got and got[0] == packet

        st = alice.status()
        assert st["interface"] == "gt-talice" and st["control"]["provider_ok"]
        assert alice.net.up and alice.net.mtu == 1420 and "10.77.0.0/24" in alice.net.routes
        assert alice.net.addresses == ["10.77.0.2/24", "fd77::2/64"]
        text = format_status(st)
        assert "member: bob (index 1)" in text and "epoch: 2" in text
        assert f"data path: {st['dataplane']['path']}" in text
        assert st["cipher"] == native.choose("auto").describe and f"run cipher: {st['cipher']}" in text
        assert f"run cipher: {st['cipher']}" in caplog.text  # the one line at start
        json.dumps(st)  # the answer is JSON-able as sent
        starts = [c for c in provider.calls if c[1] == "start"]
        assert {c[0] for c in starts} == {"alice", "bob"} and all(len(c[2]) == 32 for c in starts)
        reports = [c for c in provider.calls if c[1] == "report" and c[0] == "alice"]
        assert reports and reports[0][2] == ("127.0.0.1:9",)

        sock = str(alice.config.paths.control_socket)
        assert cli.main(["status", "lan", "--socket", sock, "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["member"] == "alice"
        assert cli.main(["status", "lan", "--socket", sock]) == 0
        assert "interface: gt-talice" in capsys.readouterr().out
        assert cli.main(["status", "lan", "--socket", sock, "--dump"]) == 0
        head, bob_line = capsys.readouterr().out.splitlines()
        bob_st = next(m for m in alice.status()["session"]["members"] if m["name"] == "bob")
        assert head.split("\t")[:5] == ["lan", "alice", "0", str(st["listen_port"]), "2"]
        assert bob_line.split("\t")[:4] == ["bob", "1", bob_st["endpoint"], "10.77.0.3,fd77::3"]
        assert abs(int(bob_line.split("\t")[4]) - time.time()) < 30  # seen just now, in unix seconds
        assert cli.main(["status", "lan", "--socket", sock, "--brief"]) == 0
        assert capsys.readouterr().out.splitlines()[1].split()[:3] == ["bob", "1", bob_st["endpoint"]]
        assert cli.main(["ping", "nobody", "--socket", sock]) == 2
        assert "no member 'nobody' in group lan; members: bob" in capsys.readouterr().err
        assert cmd_ping.pick_target(alice.status(), "bob", 4) == ("10.77.0.2", "10.77.0.3")
        assert cmd_ping.ping_member(alice.status, FakeEcho([0.001]), "bob", "10.77.0.3", 1, 0, 1, sys.stdout) == 0
        assert f"endpoint {bob_st['endpoint']} epoch 2" in capsys.readouterr().out
        assert cli.main(["down", "lan", "--socket", sock]) == 0
        alice.thread.join(10)
    finally:
        for m in (alice, bob):
            if m.thread.is_alive():
                control.request(m.config.paths.control_socket, "down")
                m.thread.join(10)
    last_report = [c for c in provider.calls if c[1] == "report" and c[0] == "alice"][-1]
    assert sum(last_report[3].values()) >= 1  # the final report counts the packets alice sent
    assert sum("final report sent" in r.getMessage() for r in caplog.records) == 2
    for m in (alice, bob):
        assert not m.thread.is_alive() and m.result == 0 and m.error is None
        assert m.tun.closed  # interface removed
        assert not m.config.paths.control_socket.exists()
        assert m.credential == bytearray(len(CREDENTIAL))  # wiped
        with pytest.raises(ValueError):  # the private key slots were zeroed, given back and released
            bytes(m.daemon.keys._ed_raw)
        assert m.daemon.secrets.status()["slots_in_use"] == 0 and m.daemon.secrets.status()["regions"] == 0
        assert m.daemon.session.status(time.monotonic())["epochs"] == []  # keys wiped


def test_restart_asks_for_a_fresh_epoch_above_the_statefile(tmp_path):
    provider = FakeProvider(["alice", "bob"])
    first = Member(provider, "alice", tmp_path)
    first.thread.start()
    st = first.wait_for(lambda st: epochs(st), "first epoch")
    control.request(first.config.paths.control_socket, "down")
    first.thread.join(10)
    held = max(epochs(st))
    # same state dir: a new Member object reusing the config
    second_cred = bytearray(CREDENTIAL)
    again = Member.__new__(Member)
    again.__dict__.update(first.__dict__)
    again.credential = second_cred
    again.daemon = Daemon(first.config, second_cred, first.daemon.f)
    again.result = again.error = None
    again.thread = threading.Thread(target=again._run, daemon=True)
    again.thread.start()
    try:
        st2 = again.wait_for(lambda st: epochs(st), "epoch after restart")
        assert min(epochs(st2)) > held
        assert len([c for c in provider.calls if c[1] == "start"]) == 2
    finally:
        control.request(first.config.paths.control_socket, "down")
        again.thread.join(10)


def test_wrong_credential_stops_before_anything_is_created(tmp_path):
    provider = FakeProvider(["alice", "bob"])
    m = Member(provider, "alice", tmp_path)
    m.daemon.credential = bytearray(b"wrong credential")
    with pytest.raises(KeystoreError):
        m.daemon.run()
    assert m.tun is None and not m.config.paths.control_socket.exists()
    assert m.daemon.credential == bytearray(len(b"wrong credential"))


@pytest.mark.parametrize("legacy", [False, True], ids=["v2", "v1"])
def test_up_with_a_wrong_credential_exits_as_before(tmp_path, legacy, monkeypatch):
    from grouptun.ops import logsetup  # noqa: PLC0415

    monkeypatch.setattr(logsetup, "setup_logging", lambda *a, **kw: None)  # keep the test run's root logger
    provider = FakeProvider(["alice", "bob"])
    m = Member(provider, "alice", tmp_path)
    if legacy:
        keystore.write_atomic(m.config.keystore_path, legacy_keystore(provider.members["alice"], CREDENTIAL), 0o600)
    wrong = tmp_path / "wrong"
    wrong.write_bytes(b"not the credential\n")
    code = cli.main(["up", "lan", "--config", str(m.config.source), "--credential-file", str(wrong)])
    assert code == KeystoreLocked.exit_code == 77 and not provider.calls
    assert not credmigrate.staged_path(m.config.keystore_path).exists()


def test_an_old_form_member_migrates_when_its_daemon_starts(tmp_path):
    provider = FakeProvider(["alice", "bob"])
    m = Member(provider, "alice", tmp_path)
    path = m.config.keystore_path
    keystore.write_atomic(path, legacy_keystore(provider.members["alice"], CREDENTIAL), 0o600)
    provider.secrets["alice"] = CREDENTIAL  # what the old provider stored a hash of
    m.thread.start()
    try:
        m.wait_for(lambda st: epochs(st), "alice's first epoch")
    finally:
        control.request(m.config.paths.control_socket, "down")
        m.thread.join(10)
    assert m.result == 0 and provider.migrated == ["alice"]
    assert keystore.load(path, bytearray(CREDENTIAL)).authenticator == provider.secrets["alice"]
    assert not credmigrate.staged_path(path).exists()
    assert m.credential == bytearray(len(CREDENTIAL))  # wiped


def test_reload_applies_mtu_and_refuses_a_bad_file(tmp_path, caplog):
    provider = FakeProvider(["alice", "bob"])
    m = Member(provider, "alice", tmp_path)
    m.thread.start()
    try:
        m.wait_for(lambda st: epochs(st), "first epoch")
        src = m.config.source
        src.write_text(src.read_text().replace("mtu = 1420", "mtu = 1380").replace("listen_port = 51820",
                                                                                   "listen_port = 51999"))
        m.daemon.loop.call_soon_threadsafe(m.daemon.reload)
        deadline = time.monotonic() + 5
        while m.net.mtu != 1380 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert m.net.mtu == 1380
        assert m.daemon.config.network.listen_port == 51820  # needs a restart: kept
        src.write_text("[group\n")
        m.daemon.loop.call_soon_threadsafe(m.daemon.reload)
        time.sleep(0.1)
        assert m.daemon.config.network.mtu == 1380 and m.status()["session"]["epochs"]
    finally:
        control.request(m.config.paths.control_socket, "down")
        m.thread.join(10)
    assert any("new config refused" in r.getMessage() for r in caplog.records)
    assert any("network.listen_port changed" in r.getMessage() for r in caplog.records)


def test_systemd_notifications_ready_status_stopping(tmp_path, monkeypatch):
    import socket as socket_mod

    sock_path = tmp_path / "notify"
    manager = socket_mod.socket(socket_mod.AF_UNIX, socket_mod.SOCK_DGRAM)
    manager.bind(str(sock_path))
    manager.settimeout(5)
    monkeypatch.setenv("NOTIFY_SOCKET", str(sock_path))
    provider = FakeProvider(["alice", "bob"])
    m = Member(provider, "alice", tmp_path)
    m.thread.start()
    try:
        m.wait_for(lambda st: epochs(st), "first epoch")
    finally:
        control.request(m.config.paths.control_socket, "down")
        m.thread.join(10)
    messages = []
    manager.setblocking(False)
    while True:
        try:
            messages.append(manager.recv(4096).decode())
        except BlockingIOError:
            break
    manager.close()
    text = "\n".join(messages)
    assert "READY=1" in text and "STOPPING=1" in text
    assert "STATUS=epoch 1, 2 members" in text
    assert text.index("READY=1") < text.index("STOPPING=1")


def test_metrics_exporter_is_wired(tmp_path):
    import socket as socket_mod
    import urllib.request

    with socket_mod.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    provider = FakeProvider(["alice", "bob"])
    m = Member(provider, "alice", tmp_path)
    path = m.config.source
    path.write_text(path.read_text().replace("[daemon]", f'[daemon]\nmetrics_listen = "127.0.0.1:{port}"'))
    m.daemon.config = cfgmod.load(path)
    m.thread.start()
    try:
        m.wait_for(lambda st: epochs(st), "first epoch")
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        assert 'grouptun_epochs_installed_total{group="lan"} 1.0' in body
    finally:
        control.request(m.config.paths.control_socket, "down")
        m.thread.join(10)


@pytest.mark.parametrize("socket", ["same", "copied config, another control socket"])
def test_second_up_for_the_same_state_dir_is_refused_before_the_tun_and_the_provider(tmp_path, socket):
    """PROTOCOL.md 4: the state dir lock stops a second daemon of the member before it starts (issue 14)."""
    provider = FakeProvider(["alice", "bob"])
    first = Member(provider, "alice", tmp_path)
    first.thread.start()
    try:
        first.wait_for(lambda st: epochs(st), "first epoch")
        config = first.config
        if socket != "same":
            config = dataclasses.replace(config, paths=dataclasses.replace(
                config.paths, control_socket=tmp_path / "copy.sock"))
        tuns, calls = [], len(provider.calls)
        second = Daemon(config, bytearray(CREDENTIAL), Factories(
            tun=lambda name: tuns.append(name) or FakeTun(name), netconfig=FakeNetConfig,
            client=lambda c, k: provider.client("alice")))
        with pytest.raises(StateDirLocked, match="in use by another grouptun daemon") as info:
            second.run()
        assert info.value.exit_code == 75 and str(os.getpid()) in str(info.value)
        assert tuns == [] and not (tmp_path / "copy.sock").exists()
        assert [c for c in provider.calls[calls:] if c[1] == "start"] == []  # the provider never heard of it
        assert first.status()["member"] == "alice"
    finally:
        control.request(first.config.paths.control_socket, "down")
        first.thread.join(10)
    assert first.error is None and first.result == 0
    again = Daemon(first.config, bytearray(CREDENTIAL), first.daemon.f)  # the lock went with the first daemon
    thread = threading.Thread(target=again.run, daemon=True)
    thread.start()
    try:
        first.wait_for(lambda st: st["pid"] == os.getpid() and epochs(st), "a daemon after the first stopped")
    finally:
        control.request(first.config.paths.control_socket, "down")
        thread.join(10)


def test_a_clone_of_a_running_member_makes_the_first_daemon_stop_and_exit_76(tmp_path, caplog):
    """A cloned VM (its own copy of the state dir): the provider's instance rule stops the older daemon."""
    provider = FakeProvider(["alice", "bob"])
    first = Member(provider, "alice", tmp_path)
    first.thread.start()
    clone = None
    try:
        first.wait_for(lambda st: epochs(st), "first epoch")
        clone = Member(provider, "alice", tmp_path / "clone")
        clone.thread.start()
        first.thread.join(20)
        assert not first.thread.is_alive(), "the superseded daemon did not stop"
        assert isinstance(first.error, InstanceSuperseded) and first.error.exit_code == 76
        assert first.tun.closed and not first.config.paths.control_socket.exists()
        assert first.daemon.session.status(time.monotonic())["epochs"] == []  # keys wiped
        st = clone.wait_for(lambda st: epochs(st), "the clone's epoch")
        assert min(epochs(st)) > 1  # its own epoch, never the first daemon's
    finally:
        if clone is not None and clone.config.paths.control_socket.exists():
            control.request(clone.config.paths.control_socket, "down")
            clone.thread.join(10)
    assert "was started elsewhere" in caplog.text


def test_superseded_and_locked_have_exit_statuses_of_their_own():
    from grouptun import errors
    def tree(cls):
        return [cls] + [sub for child in cls.__subclasses__() for sub in tree(child)]

    codes = {}
    for cls in tree(errors.GrouptunError):
        if cls.__module__ != "grouptun.errors":  # the provider's tree is its own CLI's
            continue
        codes.setdefault(cls.exit_code, set()).add(cls.__name__)
    assert codes[76] == {"InstanceSuperseded"} and codes[75] == {"StateDirLocked"}


def test_dropped_epoch_keys_are_zeroed_and_status_reports_locked_key_memory(tmp_path):
    baseline = vm_locked()
    provider = FakeProvider(["alice", "bob"])
    m = Member(provider, "alice", tmp_path)
    m.thread.start()
    try:
        st = m.wait_for(lambda st: epochs(st) == [1], "first epoch")
        memory = st["secret_memory"]
        assert memory["mechanism"] in ("memfd_secret", "mlock") and memory["unlocked_bytes"] == 0
        assert memory["locked_bytes"] >= 16384 and memory["regions"] >= 1
        assert vm_locked() - baseline == memory["locked_bytes"]  # what status says is what the kernel counts
        assert f"locked in {memory['regions']} region(s) ({memory['mechanism']})" in format_status(st)
        first = m.daemon.session._keyring.current
        views = [first.keys.prk, first.keys.nonce_common, *first.keys._enc.values()]
        secrets = [bytes(v) for v in views]
        assert all(arena_holds(m.daemon.secrets, s) for s in secrets)
        provider.open_epoch()
        m.wait_for(lambda st: epochs(st) == [2, 1], "epoch 2")
        provider.open_epoch()
        st = m.wait_for(lambda st: epochs(st) == [3, 2], "epoch 3: epoch 1 dropped")
        assert not any(arena_holds(m.daemon.secrets, s) for s in secrets)  # overwritten, nowhere in the arena
        for view in views:
            with pytest.raises(ValueError):  # released: a stale reference cannot read a recycled slot
                bytes(view)
        assert vm_locked() - baseline == st["secret_memory"]["locked_bytes"]
    finally:
        control.request(m.config.paths.control_socket, "down")
        m.thread.join(10)
    assert m.result == 0 and m.daemon.secrets.status()["regions"] == 0
    assert vm_locked() == baseline  # every region unmapped at shutdown


def test_native_cipher_asked_for_but_not_built_stops_before_the_tun(tmp_path, monkeypatch):
    provider = FakeProvider(["alice"])
    config = make_config(provider, "alice", tmp_path)
    config = dataclasses.replace(config, daemon=dataclasses.replace(config.daemon, cipher="native"))
    monkeypatch.setattr(native, "RunKey", None)
    touched = []
    daemon = Daemon(config, bytearray(CREDENTIAL), Factories(tun=lambda *args, **kw: touched.append(args)))
    with pytest.raises(ConfigError) as info:
        daemon.run()
    assert info.value.key == "daemon.cipher" and touched == []


def test_the_interface_mtu_is_the_configs_lowered_to_the_groups():
    from types import SimpleNamespace

    from grouptun.daemon import interface_mtu

    assert interface_mtu(1420, None) == 1420  # no archive yet
    assert interface_mtu(1420, SimpleNamespace(mtu=1300)) == 1300
    assert interface_mtu(1420, SimpleNamespace(mtu=1500)) == 1420  # never raised above the config's
    assert interface_mtu(1420, SimpleNamespace(mtu=0)) == 1420  # the group sets none (below IPv6's 1280)
