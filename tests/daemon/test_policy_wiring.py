"""The control path hands each accepted archive's policy to the daemon's PolicyEnforcer (issue 17 item 6)."""

from __future__ import annotations

import struct

from grouptun.cli import status as cmd_status

from grouptun.ops import ctlsocket as control
from grouptun.core import policy as P
from grouptun.core.archive import ArchivePolicy

from .fakes import ipv4_packet
from .test_controlplane import world  # noqa: F401 -- the control path's fixture
from .test_member_removed import Member, epochs

ALICE, BOB = "10.77.0.2", "10.77.0.3"


def _tcp(src, dst, sport, dport) -> bytes:
    """fakes.ipv4_packet (UDP 1234 -> 5678) made TCP with the given ports."""
    packet = bytearray(ipv4_packet(src, dst, bytes(12)))
    packet[9] = 6
    packet[20:24] = struct.pack(">HH", sport, dport)
    return bytes(packet)


def test_a_policy_installs_with_the_epoch_and_changes_without_a_new_one(world):  # noqa: F811
    provider, _, _, _, make = world
    provider.attributes = {"alice": (("role", "db"),), "bob": (("role", "web"),)}
    provider.policy = ArchivePolicy(1, P.parse("role=web -> role=db tcp/5432 allow\ndefault deny"))
    cp = make()
    assert cp.start_once(b"\x61" * 32)
    epoch, bob = cp.held_epoch, cp.archive.member("bob").index
    assert cp.policy.version == 1
    assert cp.policy.inbound(epoch, bob, _tcp(BOB, ALICE, 40000, 5432), 0.0) is None
    assert cp.policy.inbound(epoch, bob, _tcp(BOB, ALICE, 40000, 22), 0.0) == 0
    provider.policy = ArchivePolicy(2, P.parse("* -> * any allow\ndefault deny"))
    provider.publish()  # re-signed, same epoch
    cp.watch_once()
    assert cp.held_epoch == epoch and cp.policy.version == 2
    assert cp.policy.inbound(epoch, bob, _tcp(BOB, ALICE, 40000, 22), 1.0) is None
    provider.policy = None
    provider.publish()
    cp.watch_once()
    assert cp.policy.status() == {"version": None}


def test_status_shows_the_policy_version_and_deny_counts(tmp_path):
    from .fakes import FakeProvider

    provider = FakeProvider(["alice", "bob"])
    provider.policy = ArchivePolicy(4, P.parse("* -> * icmp deny\ndefault allow"))
    alice = Member(provider, "alice", tmp_path)
    alice.thread.start()
    try:
        st = alice.wait_for(lambda st: epochs(st) and st["policy"]["version"] == 4, "policy version 4")
        text = cmd_status.format_status(st)
        assert "policy: version 4, 1 rules, default allow" in text and "policy denied: none" in text
        alice.daemon.policy.counters.denied[1] += 2  # as the data path counts a denial
        st = alice.wait_for(lambda st: st["policy"]["rules"][0]["denied"] == 2, "the deny count")
        assert "rule 1 (* -> * icmp deny) 2" in cmd_status.format_status(st)
    finally:
        if alice.thread.is_alive():
            control.request(alice.config.paths.control_socket, "down")
            alice.thread.join(10)
