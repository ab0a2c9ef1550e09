"""Subnet routes through two whole daemons (fake TUN/netlink/provider, real loopback UDP).

bob advertises 192.168.5.0/24 ([network] advertise_routes); the provider approves it and opens
an epoch: without a restart alice routes the prefix via her interface and her packets for it reach bob's TUN; bob installs no route for his
own prefix; taking the approval away takes alice's kernel route away on the next archive.
"""

from __future__ import annotations

import dataclasses
import time

from grouptun.ops import ctlsocket as control
from grouptun.cli.status import format_status

from .fakes import FakeProvider, ipv4_packet
from .test_daemon import Member, epochs, start_pair

LAN = "192.168.5.0/24"


def _carried(sender: Member, receiver: Member, packet: bytes, tries: int = 100) -> bool:
    """True once ``packet`` injected at ``sender`` reached ``receiver`` (tries cover the 2 s switch delay)."""
    for _ in range(tries):
        sender.tun.inject(packet)
        time.sleep(0.05)
        if packet in receiver.tun.delivered():
            return True
    return False


def test_approved_route_applies_on_the_next_archive_and_goes_away_again(tmp_path):
    provider = FakeProvider(["alice", "bob"])
    alice, bob = Member(provider, "alice", tmp_path), Member(provider, "bob", tmp_path)
    bob.config = bob.daemon.config = dataclasses.replace(  # bob advertises the LAN he routes for
        bob.config, network=dataclasses.replace(bob.config.network, advertise_routes=(LAN,)))
    to_lan = ipv4_packet("10.77.0.2", "192.168.5.7", b"to the LAN behind bob")
    try:
        start_pair(alice, bob)
        alice.wait_for(lambda st: 2 in epochs(st), "alice follows to epoch 2")
        assert LAN not in alice.net.routes
        deadline = time.monotonic() + 10
        while ("bob", "request_routes", (LAN,)) not in provider.calls and time.monotonic() < deadline:
            time.sleep(0.02)
        assert ("bob", "request_routes", (LAN,)) in provider.calls  # asked for; nothing routed until approved
        assert not _carried(alice, bob, to_lan, tries=4)  # not approved: no route, dropped at alice
        assert alice.status()["session"]["drops"]["tx_no_route"] >= 1

        provider.routes["bob"] = (LAN,)
        epoch = provider.open_epoch()
        alice.wait_for(lambda st: epoch in epochs(st), "alice installs the epoch with bob's route")
        bob.wait_for(lambda st: epoch in epochs(st), "bob installs it too")
        deadline = time.monotonic() + 10
        while LAN not in alice.net.routes and time.monotonic() < deadline:
            time.sleep(0.02)
        assert LAN in alice.net.routes and LAN not in bob.net.routes
        bob_entry = next(m for m in alice.status()["session"]["members"] if m["name"] == "bob")
        assert bob_entry["routes"] == [LAN]
        assert f"subnet routes: {LAN}" in format_status(alice.status())
        assert _carried(alice, bob, to_lan)
        assert _carried(bob, alice, ipv4_packet("192.168.5.7", "10.77.0.2", b"the LAN host answers"))

        del provider.routes["bob"]
        provider.open_epoch()
        deadline = time.monotonic() + 10
        while LAN in alice.net.routes and time.monotonic() < deadline:
            time.sleep(0.02)
        assert LAN not in alice.net.routes
    finally:
        for m in (alice, bob):
            if m.thread.is_alive():
                control.request(m.config.paths.control_socket, "down")
                m.thread.join(10)
