"""Control socket: status/down round trip, mode 0600, errors answered, stale socket replaced."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import stat
import threading

import pytest

from grouptun.ops.ctlsocket import ControlServer, request
from grouptun.errors import ControlError, SystemSetupError


@contextlib.contextmanager
def serving(path, handlers):
    """A ControlServer for ``handlers`` on its own loop thread."""
    loop = asyncio.new_event_loop()
    server = ControlServer(path, handlers)
    loop.run_until_complete(server.start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.run_until_complete(server.close())
        server.remove()
        loop.close()


@pytest.fixture
def served(tmp_path):
    """A ControlServer on its own loop thread; yields (path, calls, server)."""
    path = tmp_path / "run" / "lan.sock"
    calls = []
    with serving(path, {"status": lambda: calls.append("status") or {"epoch": 3},
                        "down": lambda: calls.append("down") or {"stopping": True},
                        "boom": lambda: 1 / 0}) as server:
        yield path, calls, server


def test_status_and_down_round_trip(served):
    path, calls, _ = served
    assert request(path, "status") == {"epoch": 3}
    assert request(path, "down") == {"stopping": True}
    assert calls == ["status", "down"]


def test_socket_is_root_only(served):
    path, _, _ = served
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_ISSOCK(os.stat(path).st_mode)


def test_errors_are_answered_not_fatal(served):
    path, calls, _ = served
    with pytest.raises(ControlError, match="unknown command"):
        request(path, "reboot")
    with pytest.raises(ControlError, match="ZeroDivisionError"):
        request(path, "boom")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(str(path))
    s.sendall(b"{not json\n")
    assert b'"ok": false' in s.recv(4096)
    s.close()
    assert request(path, "status") == {"epoch": 3}  # still serving


def test_second_daemon_on_a_live_socket_is_refused(served):
    path, _, _ = served
    other = ControlServer(path, {})
    with pytest.raises(SystemSetupError, match="another daemon"):
        asyncio.run(other.start())


def test_stale_socket_is_replaced_and_removed_at_the_end(tmp_path):
    path = tmp_path / "lan.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # file stays, nobody listens
    server = ControlServer(path, {"status": lambda: "fresh"})

    async def go():
        await server.start()
        answer = await asyncio.get_running_loop().run_in_executor(None, request, path, "status")
        await server.close()
        return answer

    assert asyncio.run(go()) == "fresh"
    server.remove()
    assert not path.exists()


def test_client_without_daemon(tmp_path):
    with pytest.raises(ControlError, match="no daemon"):
        request(tmp_path / "none.sock", "status")


def test_args_reach_the_handler_and_a_refusal_is_answered_without_a_traceback(tmp_path, caplog):
    from grouptun.errors import UsageError

    def export(**args):
        if args.get("type") == "rsa":
            raise UsageError("unknown type 'rsa'")
        return args

    path = tmp_path / "x.sock"
    with serving(path, {"export": export}):
        assert request(path, "export", args={"type": "key", "name": "a"}) == {"type": "key", "name": "a"}
        with pytest.raises(ControlError, match="^unknown type 'rsa'$"):
            request(path, "export", args={"type": "rsa"})
        assert not [r for r in caplog.records if r.exc_info]
