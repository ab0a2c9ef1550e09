"""A removed member learns it and stops (issue 17 item 4); status shows attributes and the removal."""

from __future__ import annotations

import json
import logging
import threading
import time

import pytest

from grouptun.cli import status as cmd_status

from grouptun.ops import removednote
from grouptun.core.archive import Archive, sign_archive, verify_archive
from grouptun.errors import MemberRemoved

from .fakes import FakeProvider
from .test_controlplane import held_epochs, wait_until
from .test_controlplane import world  # noqa: F401 -- the control path's fixture
from .test_daemon import Member, epochs


def _run(cp):
    removed = []
    cp.on_superseded = removed.append
    stop = threading.Event()
    thread = threading.Thread(target=cp.run, args=(stop,))
    return removed, stop, thread


def test_a_member_removed_while_running_stops_sending_and_ends_with_67(world, caplog):  # noqa: F811
    provider, statefile, session, port, make = world
    provider.members["carol"] = provider.members["bob"].__class__.generate()  # 3 members: 2 remain
    provider.addresses["carol"], provider.endpoints["carol"] = ("10.77.0.9/24",), ("127.0.0.1:51009",)
    cp = make()
    removed, stop, thread = _run(cp)
    with caplog.at_level(logging.INFO, logger="grouptun.control"):
        thread.start()
        try:
            assert wait_until(lambda: held_epochs(session) == [1])
            provider.remove_member("alice")  # epoch 2 without alice
            thread.join(20)
            assert not thread.is_alive()  # ended by itself
        finally:
            stop.set()
            thread.join(10)
    assert [type(e) for e in removed] == [MemberRemoved] and removed[0].exit_code == 67
    assert port.stopped_sending and ("alice", "capsule", 2) not in provider.calls
    assert cp.state.phase == "removed" and "no longer lists it" in cp.state.removed
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "was removed from the group" in errors[0]


def test_a_member_removed_while_it_was_away_learns_it_from_the_410(world):  # noqa: F811
    provider, statefile, session, port, make = world
    provider.removed["alice"] = "membership of 'alice' in 'lan' expired"
    cp = make()
    removed, stop, thread = _run(cp)
    thread.start()
    thread.join(20)
    stop.set()
    assert not thread.is_alive() and [type(e) for e in removed] == [MemberRemoved]
    assert "expired" in cp.state.removed and cp.state.phase == "removed"


def test_an_older_archive_without_us_proves_nothing(world):  # noqa: F811
    """A replayed or restored archive of a lower version does not stop a member."""
    provider, statefile, session, port, make = world
    cp = make()
    assert cp.start_once(b"\x51" * 32)
    full = verify_archive(provider.signed, provider.keys)  # the daemon holds the compact form: no KEM keys to re-sign
    others = tuple(m for m in full.members if m.name != "alice")
    old = Archive(provider.group_id, "lan", cp.archive.version - 1, None, others, "10.77.0.0/24", "fd77::/64",
                  1420, time.time() + 3600)
    assert cp.accept(sign_archive(old, provider.ed, provider.ml)) is False
    assert cp.state.removed is None and not port.stopped_sending and held_epochs(session) == [1]


def test_an_unchanged_membership_keeps_running_after_other_members_go(world):  # noqa: F811
    provider, statefile, session, port, make = world
    provider.members["carol"] = provider.members["bob"].__class__.generate()
    provider.addresses["carol"], provider.endpoints["carol"] = ("10.77.0.9/24",), ("127.0.0.1:51009",)
    cp = make()
    assert cp.start_once(b"\x52" * 32)
    provider.remove_member("carol", "'carol' was removed")
    cp.watch_once()
    assert cp.state.removed is None and max(held_epochs(session)) == 2


def test_the_daemon_of_a_removed_member_exits_67_leaves_a_note_and_status_says_so(tmp_path, capsys):
    provider = FakeProvider(["alice", "bob", "carol"])
    provider.attributes["alice"] = (("role", "web"),)
    alice = Member(provider, "alice", tmp_path)
    alice.thread.start()
    st = alice.wait_for(lambda st: epochs(st), "first epoch")
    assert st["membership"]["attributes"] == {"role": "web"} and st["membership"]["expires_at"] is None
    assert "attributes: role=web" in cmd_status.format_status(st)
    provider.remove_member("alice", "membership of 'alice' in 'lan' expired")
    alice.thread.join(20)
    assert not alice.thread.is_alive(), "the removed daemon did not stop"
    assert isinstance(alice.error, MemberRemoved) and alice.error.exit_code == 67
    assert alice.tun.closed and not alice.config.paths.control_socket.exists()
    note = removednote.read(alice.config.paths.control_socket)
    assert note["member"] == "alice" and "no longer lists it" in note["reason"]
    args = _status_args(alice, json=True)
    assert cmd_status.run(args) == 67
    assert json.loads(capsys.readouterr().out)["member"] == "alice"
    assert cmd_status.run(_status_args(alice)) == 67
    assert "was REMOVED" in capsys.readouterr().out


def test_status_without_a_daemon_or_a_note_still_says_not_running(tmp_path):
    from grouptun.errors import ControlError

    with pytest.raises(ControlError):
        cmd_status.run(_status_args(None, run_dir=tmp_path))


def _status_args(member, json=False, run_dir=None):
    import argparse

    sock = None if member is None else member.config.paths.control_socket
    return argparse.Namespace(group=None, socket=sock, run_dir=run_dir or (sock.parent if sock else None),
                              json=json, dump=False, brief=False)

