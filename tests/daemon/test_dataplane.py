"""Data plane: two real core Sessions exchanging packets through fakes and real sockets."""

from __future__ import annotations

import asyncio
import threading
import time
import types

import pytest
import uvloop

from grouptun.control.backoff import Backoff
from grouptun.control.plane import ControlPlane
from grouptun.core.session import Session
from grouptun.core.session import MemberInfo
from grouptun.data.plane import DataPlane, LoopPort
from grouptun.errors import LoopUnavailable
from grouptun.control.statefile import EpochStateFile
from grouptun.data.offload.tunruns import READS
from grouptun.data.udp import UdpTransport

from .fakes import (FakeNetwork, FakeProvider, FakeTun, FakeUdp, QueueTun, epoch_material, ipv4_packet,
                    ipv6_packet, proof)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Port:
    def __init__(self, session, clock) -> None:
        self.session, self.clock = session, clock

    def install(self, material) -> None:
        self.session.install_epoch(material, self.clock())

    def update_endpoints(self, members) -> int:
        return self.session.update_endpoints(members)

    def take_requests(self):
        return self.session.take_requests()

    def packets_sent(self):
        return self.session.packets_sent()


def member_control(provider, name, session, tmp_path, clock, port=None) -> ControlPlane:
    return ControlPlane(client=provider.client(name), port=port or Port(session, clock),
                        kem=provider.members[name].kem, proof=proof(), pinned=provider.keys,
                        group_id=provider.group_id, member=name,
                        statefile=EpochStateFile(tmp_path / f"{name}.json"), endpoints=lambda: [],
                        watch_timeout=0.01, backoff=Backoff(0.01, 0.02))


@pytest.fixture
def pair(tmp_path):
    """alice and bob, each a Session + DataPlane over an in-memory network, holding epoch 1."""
    provider = FakeProvider(["alice", "bob"], port_base=51000)
    clock, net = Clock(), FakeNetwork()
    out = {}
    for i, name in enumerate(["alice", "bob"]):
        session = Session(name)
        tun, udp = QueueTun(), FakeUdp(net, ("127.0.0.1", 51000 + i))
        out[name] = (session, tun, udp, DataPlane(session, tun, udp, clock=clock),
                     member_control(provider, name, session, tmp_path, clock))
    starts = {"alice": b"\x01" * 32, "bob": b"\x11" * 32}
    provider.open_epoch(starts=starts)
    for name in out:
        assert out[name][4].accept(provider.signed, starts[name])
    return provider, clock, out


def send(out, src, dst_name, packet):
    s_tun, s_dp = out[src][1], out[src][3]
    s_tun.inbox.append(packet)
    s_dp.on_tun_readable()
    out[dst_name][3].on_udp_readable()
    return out[dst_name][1].written


def test_ipv4_and_ipv6_packets_cross_in_both_directions(pair):
    provider, clock, out = pair
    p4 = ipv4_packet("10.77.0.2", "10.77.0.3")
    assert send(out, "alice", "bob", p4) == [p4]
    back = ipv4_packet("10.77.0.3", "10.77.0.2", b"reply")
    assert send(out, "bob", "alice", back) == [back]
    p6 = ipv6_packet("fd77::2", "fd77::3")
    assert send(out, "alice", "bob", p6)[-1] == p6
    c = out["alice"][3].counters
    assert c["tun_rx"] == 2 and c["udp_tx"] == 2 and c["tun_tx"] == 1 and c["internal_errors"] == 0


def test_garbage_and_spoofed_source_are_dropped_and_counted(pair):
    provider, clock, out = pair
    bob_session, bob_tun, bob_udp, bob_dp, _ = out["bob"]
    bob_udp.inbox.append((b"\x11" * 40, ("127.0.0.1", 9)))
    bob_udp.inbox.append((b"", ("127.0.0.1", 9)))
    bob_dp.on_udp_readable()
    assert bob_tun.written == [] and bob_dp.counters["udp_rx"] == 2
    drops = bob_session.status(clock())["drops"]
    assert sum(drops.values()) == 2
    # alice may not send a packet from an address that is not hers
    assert send(out, "alice", "bob", ipv4_packet("10.77.0.9", "10.77.0.3")) == []


def test_drain_is_bounded_per_wakeup(pair):
    provider, clock, out = pair
    alice_tun, alice_dp = out["alice"][1], out["alice"][3]
    for k in range(READS + 6):
        alice_tun.inbox.append(ipv4_packet("10.77.0.2", "10.77.0.3", bytes([k])))
    alice_dp.on_tun_readable()
    assert alice_dp.counters["tun_rx"] == READS
    alice_dp.on_tun_readable()
    alice_dp.on_tun_readable()
    assert alice_dp.counters["tun_rx"] == READS + 6
    out["bob"][3].on_udp_readable()
    out["bob"][3].on_udp_readable()
    assert len(out["bob"][1].written) == READS + 6


def test_epoch_switch_does_not_drop_traffic(pair):
    provider, clock, out = pair
    provider.open_epoch()
    assert out["alice"][4].accept(provider.signed)  # alice has epoch 2, bob not yet
    delivered = 0
    for k in range(40):
        clock.now += 0.25  # 10 s in all: well past switch_delay (2 s) and into the grace period
        if k == 4:  # bob's watch returns 1 s later, within switch_delay
            assert out["bob"][4].accept(provider.signed)
        for name in ("alice", "bob"):
            out[name][3].on_tick()
        for name in ("alice", "bob"):
            out[name][3].on_udp_readable()
        before = len(out["bob"][1].written)
        send(out, "alice", "bob", ipv4_packet("10.77.0.2", "10.77.0.3", k.to_bytes(2, "big")))
        delivered += len(out["bob"][1].written) - before
    assert delivered == 40
    epochs = out["alice"][0].status(clock())["epochs"]
    assert any(e["epoch"] == 2 and e["sending"] for e in epochs)


def test_session_bug_is_counted_not_fatal(pair):
    provider, clock, out = pair
    session, tun, udp, dp, _ = out["alice"]

    def broken(*run):
        raise RuntimeError("bug")

    session.seal_run = broken
    tun.inbox.extend([b"x", b"y"])
    dp.on_tun_readable()
    assert dp.counters["internal_errors"] == 2 and dp.counters["tun_rx"] == 2


def test_device_errors_on_the_plain_path_are_counted_not_raised(pair):
    """EIO from a TUN that went down, or an error from the socket: counted, the drain ends, nothing
    escapes into the event loop (which would log it on every wake-up)."""
    provider, clock, out = pair
    session, tun, udp, dp, _ = out["alice"]

    def failing(budget):
        raise OSError(5, "Input/output error")

    tun.read_runs = failing
    udp.recv_runs = failing
    dp.on_tun_readable()
    dp.on_udp_readable()
    assert dp.counters["internal_errors"] == 2 and dp.counters["tun_rx"] == dp.counters["udp_rx"] == 0


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_real_loop_real_udp_sockets(tmp_path, host):
    """uvloop + real dual-stack UDP sockets on loopback + fd-backed fake TUNs; LoopPort installs."""
    loop = uvloop.new_event_loop()
    provider = FakeProvider(["alice", "bob"])
    members = {}
    try:
        for name in ("alice", "bob"):
            udp = UdpTransport("::", 0)
            ep = f"[{host}]:{udp.port}" if ":" in host else f"{host}:{udp.port}"
            provider.endpoints[name] = (ep,)
            session, tun = Session(name), FakeTun()
            dp = DataPlane(session, tun, udp, tick=0.05)
            dp.attach(loop)
            members[name] = (session, tun, udp, dp)
        starts = {"alice": b"\x02" * 32, "bob": b"\x12" * 32}
        provider.open_epoch(starts=starts)

        async def scenario():
            for name, (session, tun, udp, dp) in members.items():
                cp = member_control(provider, name, session, tmp_path, time.monotonic,
                                    port=LoopPort(loop, session))
                # the control path runs in a thread, as in the daemon
                assert await loop.run_in_executor(None, cp.accept, provider.signed, starts[name])
            packet = ipv4_packet("10.77.0.2", "10.77.0.3", b"over the real loop")
            members["alice"][1].inject(packet)
            deadline = time.monotonic() + 10  # bounded; generous for a loaded shared VM
            while time.monotonic() < deadline:
                got = members["bob"][1].delivered()
                if got:
                    return got, packet
                await asyncio.sleep(0.01)
            return [], packet

        got, packet = loop.run_until_complete(asyncio.wait_for(scenario(), 30))
        assert got == [packet]
        peer = members["bob"][0].status(time.monotonic())["members"]
        alice = next(m for m in peer if m["name"] == "alice")
        assert alice["rx_packets"] >= 1 and alice["endpoint"].endswith(str(members["alice"][2].port))
    finally:
        for session, tun, udp, dp in members.values():
            dp.detach()
            session.close()
            tun.close()
            udp.close()
        loop.close()


def test_loopport_times_out_on_a_stalled_loop_and_wipes_the_abandoned_material():
    loop = asyncio.new_event_loop()  # never run: a stalled loop
    try:
        session = Session("alice")
        port = LoopPort(loop, session, timeout=0.05)
        material = epoch_material()
        ss, salt = material.shared_secret, material.salt
        with pytest.raises(LoopUnavailable) as info:  # in the package's tree, not a bare TimeoutError
            port.install(material)
        assert not info.value.closed
        loop.run_until_complete(asyncio.sleep(0))  # the loop wakes up late
        assert ss == bytearray(32) and salt == bytearray(32) and not material.shared_secret
        assert session.status(0.0)["epochs"] == []
    finally:
        loop.close()


def test_loopport_on_a_closed_loop_says_closed_and_wipes_the_material():
    loop = asyncio.new_event_loop()
    loop.close()
    port = LoopPort(loop, Session("alice"), timeout=0.05)
    material = epoch_material()
    ss, salt = material.shared_secret, material.salt
    with pytest.raises(LoopUnavailable) as info:  # was asyncio's RuntimeError
        port.install(material)
    assert info.value.closed
    assert ss == bytearray(32) and salt == bytearray(32) and not material.salt
    with pytest.raises(LoopUnavailable):
        port.take_requests()


@pytest.fixture
def running_loop():
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield loop
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def _on_loop(loop, fn):
    """Run ``fn`` on the running ``loop``'s thread and return its result (bounded wait)."""

    async def call():
        return fn()

    return asyncio.run_coroutine_threadsafe(call(), loop).result(10)


def test_loopport_update_endpoints_runs_on_the_loop_thread(running_loop):
    seen = []

    def update(members):
        seen.append((threading.get_ident(), list(members)))
        return len(seen[-1][1])

    port = LoopPort(running_loop, types.SimpleNamespace(update_endpoints=update))
    members = [MemberInfo("bob", 1, (), ("127.0.0.1", 7000))]
    assert port.update_endpoints(members) == 1
    assert seen == [(_on_loop(running_loop, threading.get_ident), members)]  # the loop's own thread


def test_control_plane_over_a_stalled_loop_does_not_wedge_on_the_recorded_epoch(tmp_path, running_loop):
    provider = FakeProvider(["alice", "bob"])
    session = Session("alice")
    port = LoopPort(running_loop, session)
    cp = member_control(provider, "alice", session, tmp_path, time.monotonic, port=port)

    def epochs() -> list[int]:
        return sorted(e["epoch"] for e in _on_loop(running_loop, lambda: session.status(0.0))["epochs"])

    assert cp.start_once(b"\x05" * 32) and epochs() == [1]
    gate = threading.Event()
    running_loop.call_soon_threadsafe(gate.wait, 30)  # the loop stalls (bounded)
    port.timeout = 0.05
    provider.open_epoch()
    try:
        with pytest.raises(LoopUnavailable) as info:
            cp.watch_once()  # epoch 2: recorded, then the install times out
    finally:
        gate.set()
        port.timeout = 10.0
    assert not info.value.closed
    assert cp.statefile.highest(provider.group_id) == 2 and epochs() == [1]  # abandoned, never installed
    provider.publish()  # a new archive version, still epoch 2: recorded, not refused as "not newer"
    cp.watch_once()
    assert cp.state.refusals == {} and cp.held_epoch == 2
    cp.service_requests()  # forwards rekey:install-timeout; the fake opens epoch 3
    assert ("alice", "rekey", "install-timeout") in provider.calls
    cp.watch_once()
    assert epochs() == [1, 3]
