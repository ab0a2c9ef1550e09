"""``grouptun status --dump/--brief`` and ``grouptun ping`` on the status of real sessions (no daemon)."""

from __future__ import annotations

import io

import pytest

from grouptun.cli import main as cli
from grouptun.cli.ping import NO_REPLY, pick_target, ping_member
from grouptun.cli.status import current_epoch, format_brief, format_dump
from grouptun.core.session import Session
from tests.core.builders import endpoint, ipv4, material, v4

from .fakes import FakeEcho

NOW_WALL = 1_800_000_000.0


def daemon_status(epoch: int = 1) -> dict:
    """What ``Daemon.status`` answers for alice after bob sent her one packet and an outsider one forgery."""
    alice, bob = Session("alice"), Session("bob")
    alice.install_epoch(material("alice", epoch), 0.0)
    bob.install_epoch(material("bob", epoch), 0.0)
    (_, datagram), = bob.on_tun_packet(ipv4(v4(2), v4(1)), 1.0)
    assert alice.on_datagram(datagram, endpoint("bob"), 1.0) is not None
    forged = bytearray(datagram)
    forged[-1] ^= 1
    assert alice.on_datagram(forged, endpoint("bob"), 1.5) is None
    return {"group": "lan", "member": "alice", "interface": "gt-lan", "listen_port": 51820,
            "addresses": ["10.77.0.1/24", "fd77::1/64"], "session": alice.status(4.0)}


def test_dump_has_one_interface_line_and_one_tab_separated_line_per_member():
    st = daemon_status()
    lines = format_dump(st, NOW_WALL).split("\n")
    assert lines[0].split("\t") == ["lan", "alice", "0", "51820", "1", "1", "0"]  # the forgery: auth
    bob, carol = (line.split("\t") for line in lines[1:])
    rx = str(next(m["rx_bytes"] for m in st["session"]["members"] if m["name"] == "bob"))
    assert bob == ["bob", "1", "127.0.0.1:40001", "10.77.0.2,fd77::2", str(int(NOW_WALL - 3)), rx, "0", "1", "0"]
    assert carol == ["carol", "2", "127.0.0.1:40002", "10.77.0.3,fd77::3", "0", "0", "0", "0", "0"]
    assert int(rx) > 0


def test_dump_without_a_group_starts_every_line_with_the_interface_and_marks_missing_values():
    st = daemon_status()
    for m in st["session"]["members"]:
        if m["name"] == "carol":
            m["endpoint"], m["addresses"] = None, []
    lines = format_dump(st, NOW_WALL, "gt-lan\t").split("\n")
    assert all(line.startswith("gt-lan\t") for line in lines) and len(lines) == 3
    assert lines[2].split("\t")[3:5] == ["(none)", "(none)"]
    empty = {"group": "lan", "member": "alice", "listen_port": None, "session": {}}
    assert format_dump(empty, NOW_WALL) == "lan\talice\t(none)\t0\t0\t0\t0"  # before the first epoch


def test_brief_is_one_line_per_member_under_one_interface_line():
    lines = format_brief(daemon_status()).split("\n")
    assert len(lines) == 3
    assert lines[0] == "gt-lan: group lan, member alice (index 0), epoch 1, port 51820, drops 1 received 0 sent"
    assert lines[1].split()[:5] == ["bob", "1", "127.0.0.1:40001", "10.77.0.2,fd77::2", "3s"]
    assert lines[2].split()[:5] == ["carol", "2", "127.0.0.1:40002", "10.77.0.3,fd77::3", "never"]
    assert lines[1].index("127.0.0.1") == lines[2].index("127.0.0.1")  # columns line up


def test_status_forms_are_exclusive(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["status", "--dump", "--json"])
    assert exc.value.code == 2 and "not allowed with" in capsys.readouterr().err


def test_ping_target_is_the_members_overlay_address_from_our_own():
    st = daemon_status()
    assert pick_target(st, "bob", 4) == ("10.77.0.1", "10.77.0.2")
    assert pick_target(st, "carol", 6) == ("fd77::1", "fd77::3")
    assert pick_target(st, "dave", 4) == "no member 'dave' in group lan; members: bob, carol"
    assert "no member 'alice'" in pick_target(st, "alice", 4)  # not ourselves
    st["addresses"] = ["10.77.0.1/24"]
    assert pick_target(st, "bob", 6) == "this host has no IPv6 overlay address"


def test_ping_prints_round_trip_endpoint_and_epoch_per_reply():
    statuses = iter([daemon_status(1), daemon_status(2)])  # an epoch switch between the two replies
    probe, out = FakeEcho([0.0012, None, 0.0008]), io.StringIO()
    code = ping_member(lambda: next(statuses), probe, "bob", "10.77.0.2", 3, 0.0, 0.5, out)
    assert code == 0 and probe.sent == [(1, 0.5), (2, 0.5), (3, 0.5)]
    assert out.getvalue().split("\n") == [
        "reply from bob 10.77.0.2: seq=1 time=1.20 ms endpoint 127.0.0.1:40001 epoch 1",
        "no reply from bob 10.77.0.2: seq=2 within 0.5 s",
        "reply from bob 10.77.0.2: seq=3 time=0.80 ms endpoint 127.0.0.1:40001 epoch 2",
        "bob: 3 sent, 2 received, rtt min/avg/max 0.80/1.00/1.20 ms", ""]


def test_ping_without_any_reply_exits_1():
    out = io.StringIO()
    assert ping_member(daemon_status, FakeEcho([None, None]), "bob", "10.77.0.2", 2, 0.0, 0.1, out) == NO_REPLY
    assert out.getvalue().endswith("bob: 2 sent, 0 received\n")
    assert current_epoch(daemon_status(3)) == 3


@pytest.mark.parametrize("argv", [["-c", "0"], ["-c", "1001"], ["-W", "0"], ["-i", "x"]])
def test_ping_bounds_count_timeout_and_interval(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["ping", "bob", *argv])
    assert exc.value.code == 2 and "argument" in capsys.readouterr().err
