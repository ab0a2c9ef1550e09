"""sd_notify protocol against a fake manager socket (real AF_UNIX datagrams)."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time

import pytest

from grouptun.ops.sdnotify import MAX_STATUS_CHARS, Notifier, run_watchdog, start_watchdog


def test_unset_socket_is_a_noop():
    n = Notifier.from_env({})
    assert not n.enabled
    assert n.ready() is False
    assert n.status("x") is False
    assert n.reloading() is False
    assert n.stopping() is False
    assert n.watchdog() is False
    assert n.watchdog_interval() is None


def test_lifecycle_order_abstract_socket(notify_socket):
    n = Notifier.from_env({"NOTIFY_SOCKET": notify_socket.env_value, "WATCHDOG_USEC": "4000000"})
    assert n.enabled
    assert n.status("fetching epoch")
    assert n.ready("epoch 3, 2 members")
    assert n.watchdog()
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert n.reloading("reloading config")
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert n.ready("epoch 3, 2 members")
    assert n.stopping("draining")
    n.close()
    msgs = notify_socket.drain()
    assert [next(iter(m)) for m in msgs] == ["STATUS", "READY", "WATCHDOG", "RELOADING", "READY", "STOPPING"]
    assert msgs[0] == {"STATUS": "fetching epoch"}
    assert msgs[1] == {"READY": "1", "STATUS": "epoch 3, 2 members"}
    assert msgs[2] == {"WATCHDOG": "1"}
    assert msgs[3]["RELOADING"] == "1"
    assert before <= int(msgs[3]["MONOTONIC_USEC"]) <= after
    assert msgs[5] == {"STOPPING": "1", "STATUS": "draining"}


def test_path_socket(notify_path_socket):
    n = Notifier.from_env({"NOTIFY_SOCKET": notify_path_socket.env_value})
    assert n.ready()
    assert notify_path_socket.drain() == [{"READY": "1"}]


def test_status_cannot_inject_assignments(notify_socket):
    n = Notifier.from_env({"NOTIFY_SOCKET": notify_socket.env_value})
    n.status("peer said hi\nREADY=1\n" + "x" * 1000)
    (msg,) = notify_socket.drain()
    assert list(msg) == ["STATUS"]
    assert len(msg["STATUS"]) == MAX_STATUS_CHARS
    assert msg["STATUS"].startswith("peer said hi READY=1 x")


def test_watchdog_pid_mismatch_disables_watchdog(notify_socket):
    env = {"NOTIFY_SOCKET": notify_socket.env_value, "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"}
    n = Notifier.from_env(env, pid=4242)
    assert n.watchdog_interval() is None
    assert n.watchdog() is False
    n2 = Notifier.from_env(env, pid=1)
    assert n2.watchdog_interval() == 1.0


def test_malformed_watchdog_usec_is_ignored(notify_socket):
    n = Notifier.from_env({"NOTIFY_SOCKET": notify_socket.env_value, "WATCHDOG_USEC": "soon"})
    assert n.watchdog_interval() is None


def test_dead_socket_does_not_raise():
    n = Notifier.from_env({"NOTIFY_SOCKET": "@gt-ops-nobody-listens-here"})
    assert n.ready() is False
    assert n.status("still fine") is False


def test_no_watchdog_task_without_watchdog(notify_socket):
    async def main():
        return start_watchdog(Notifier.from_env({"NOTIFY_SOCKET": notify_socket.env_value}))

    assert asyncio.run(main()) is None


# --- the watchdog must stop when the loop is blocked ---------------------


async def _next_ping(notify_socket, timeout: float = 10.0) -> int:
    """Yield to the loop until a WATCHDOG datagram arrives; returns how many came."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = [m for m in notify_socket.drain() if "WATCHDOG" in m]
        if got:
            return len(got)
        await asyncio.sleep(0.005)
    raise AssertionError(f"no WATCHDOG=1 within {timeout}s")


def _threaded_pinger(notifier: Notifier, stop: threading.Event) -> None:
    """The WRONG design, kept to prove the check below can fail."""
    period = notifier.watchdog_interval() / 2
    while not stop.wait(period):
        notifier.watchdog()


def _pings_during_block(notify_socket, use_thread: bool) -> tuple[int, int, int]:
    """(pings before, during a loop block of 6 periods, after) the block."""
    env = {"NOTIFY_SOCKET": notify_socket.env_value, "WATCHDOG_USEC": "100000"}  # ping every 50 ms

    async def main():
        notifier = Notifier.from_env(env)
        stop = threading.Event()
        if use_thread:
            task = None
            thread = threading.Thread(target=_threaded_pinger, args=(notifier, stop))
            thread.start()
        else:
            task = start_watchdog(notifier)
        try:
            before = await _next_ping(notify_socket)
            notify_socket.drain()
            time.sleep(0.3)  # blocks the loop: the stalled data plane
            during = len(notify_socket.drain())
            after = await _next_ping(notify_socket)  # the loop runs again: pings resume
        finally:
            stop.set()
            if task is not None:
                task.cancel()
            else:
                thread.join()
        return before, during, after

    return asyncio.run(main())


def test_watchdog_pings_stop_while_loop_is_blocked(notify_socket):
    before, during, after = _pings_during_block(notify_socket, use_thread=False)
    assert before >= 1
    assert during == 0
    assert after >= 1


def test_check_detects_a_thread_based_pinger(notify_socket):
    _, during, _ = _pings_during_block(notify_socket, use_thread=True)
    assert during >= 1


def test_health_veto_withholds_pings(notify_socket):
    env = {"NOTIFY_SOCKET": notify_socket.env_value, "WATCHDOG_USEC": "40000"}
    state = {"healthy": False, "checks": 0}

    def healthy():
        state["checks"] += 1
        return state["healthy"]

    async def main():
        task = asyncio.get_running_loop().create_task(run_watchdog(Notifier.from_env(env), healthy))
        while state["checks"] < 4:  # bounded by the pinger's own period
            await asyncio.sleep(0.01)
        vetoed = len(notify_socket.drain())
        state["healthy"] = True
        await _next_ping(notify_socket)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return vetoed

    assert asyncio.run(main()) == 0


def test_full_manager_queue_never_blocks_the_caller():
    """A manager that stops reading: pings drop at once, state messages after send_timeout."""
    name = f"gt-ops-full-{os.getpid()}"
    manager = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    manager.bind(b"\0" + name.encode())
    filler = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    filler.setblocking(False)
    try:
        for _ in range(100_000):  # bounded: the queue holds max_dgram_qlen datagrams
            try:
                filler.sendto(b"X=1", b"\0" + name.encode())
            except BlockingIOError:
                break
        else:
            pytest.fail("queue never filled")
        n = Notifier.from_env({"NOTIFY_SOCKET": "@" + name, "WATCHDOG_USEC": "1000000"})
        n.send_timeout = 0.05
        results = {}
        worker = threading.Thread(target=lambda: results.update(w=n.watchdog(), r=n.ready(), s=n.stopping()))
        worker.start()
        worker.join(timeout=10)
        assert not worker.is_alive(), "notify blocked on a full manager queue"
        assert results == {"w": False, "r": False, "s": False}
        manager.recv(64)  # the manager reads one: there is room again
        assert n.status("ok") is True
    finally:
        manager.close()
        filler.close()
