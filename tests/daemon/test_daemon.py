"""The whole daemon without root: two members over real loopback UDP, fake TUN/netlink/provider."""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

import pytest

from grouptun import config as cfgmod
from grouptun import cli, control, credmigrate, keystore
from grouptun.cmd_status import format_status
from grouptun.daemon import Daemon, Factories
from grouptun.errors import KeystoreError
from grouptun.udp import UdpTransport

from .fakes import CREDENTIAL, FAST, FakeNetConfig, FakeProvider, FakeTun, ipv4_packet, legacy_keystore


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
            tun=tun, udp=udp, netconfig=net, client=lambda c, k: provider.client(name)))
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
        assert m.daemon.keys._ed_raw == bytearray(32) and m.daemon.keys.kem.mlkem_seed == bytearray(64)
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
    from grouptun import logsetup  # noqa: PLC0415

    monkeypatch.setattr(logsetup, "setup_logging", lambda *a, **kw: None)  # keep the test run's root logger
    provider = FakeProvider(["alice", "bob"])
    m = Member(provider, "alice", tmp_path)
    if legacy:
        keystore.write_atomic(m.config.keystore_path, legacy_keystore(provider.members["alice"], CREDENTIAL), 0o600)
    wrong = tmp_path / "wrong"
    wrong.write_bytes(b"not the credential\n")
    code = cli.main(["up", "lan", "--config", str(m.config.source), "--credential-file", str(wrong)])
    assert code == KeystoreError.exit_code and not provider.calls
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


def test_second_up_for_the_same_group_is_refused_before_the_tun(tmp_path):
    from grouptun.errors import SystemSetupError

    provider = FakeProvider(["alice", "bob"])
    first = Member(provider, "alice", tmp_path)
    first.thread.start()
    try:
        first.wait_for(lambda st: epochs(st), "first epoch")
        tuns = []
        second = Daemon(first.config, bytearray(CREDENTIAL), Factories(
            tun=lambda name: tuns.append(name) or FakeTun(name), netconfig=FakeNetConfig,
            client=lambda c, k: provider.client("alice")))
        with pytest.raises(SystemSetupError, match="another daemon"):
            second.run()
        assert tuns == [] and first.status()["member"] == "alice"
    finally:
        control.request(first.config.paths.control_socket, "down")
        first.thread.join(10)
