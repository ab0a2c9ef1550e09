"""The signal pattern the daemon needs on uvloop (see test_daemon_lifecycle.py).

uvloop 0.23 drops a signal that arrives while the loop is not running, even
after add_signal_handler. Registering the handlers from a coroutine that runs
on the loop (and sending READY=1 from there) does not lose one that arrives
immediately. The naive order is run too and its outcome printed, not asserted:
it is uvloop's behaviour, not ours.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

pytest.importorskip("uvloop")

SCRIPT = r"""
import asyncio, os, signal, sys, uvloop
loop = uvloop.new_event_loop(); asyncio.set_event_loop(loop)
loop.run_until_complete(asyncio.sleep(0))
ev = asyncio.Event()
if sys.argv[1] == "naive":
    loop.add_signal_handler(signal.SIGTERM, ev.set)
    os.kill(os.getpid(), signal.SIGTERM)          # arrives between loop runs
    async def main():
        await asyncio.wait_for(ev.wait(), 2)
else:
    async def main():
        loop.add_signal_handler(signal.SIGTERM, ev.set)   # registered on the running loop
        os.kill(os.getpid(), signal.SIGTERM)              # "systemctl stop" right after READY=1
        await asyncio.wait_for(ev.wait(), 2)
try:
    loop.run_until_complete(main()); print("handled")
except asyncio.TimeoutError:
    print("lost")
"""


def run(kind: str) -> str:
    proc = subprocess.run([sys.executable, "-c", SCRIPT, kind], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_handlers_registered_on_the_running_loop_catch_an_immediate_signal():
    assert [run("inside") for _ in range(3)] == ["handled"] * 3
    print(f"\nuvloop, handlers registered before run_until_complete: {run('naive')}")
