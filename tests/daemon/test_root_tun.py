"""Root only: a real TUN device in a namespace we create, configured by netconfig."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

SCRIPT = r"""
import json, subprocess, sys
from grouptun.tun import TunDevice
from grouptun.netconfig import NetConfig
name = sys.argv[1]
tun = TunDevice(name)
net = NetConfig(name)
net.configure(["10.77.0.2/24", "fd77::2/64"], 1420, ["10.88.0.0/16", "fd88::/48"])
first = net.state()
net.configure(["10.77.0.5/24", "fd77::2/64"], 1380, [])   # reconcile: one address replaced, new MTU
second = net.state()
links = subprocess.run(["ip", "-j", "link", "show", name], capture_output=True, text=True)
tun.close()
gone = subprocess.run(["ip", "link", "show", name], capture_output=True, text=True).returncode != 0
print(json.dumps({"first": first, "second": second, "flags": json.loads(links.stdout)[0]["flags"], "gone": gone}))
"""


@pytest.mark.root
def test_tun_and_netconfig_in_a_namespace():
    tag = os.urandom(3).hex()
    ns, dev = f"gt-dmn-{tag}", f"gt-d{tag}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        proc = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", SCRIPT, dev],
                              capture_output=True, text=True, timeout=30, cwd=REPO,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
        assert proc.returncode == 0, proc.stderr
        out = json.loads(proc.stdout)
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
    first, second = out["first"], out["second"]
    assert {"10.77.0.2/24", "fd77::2/64"} <= set(first["addresses"])
    assert first["mtu"] == 1420 and first["up"]
    assert {"10.77.0.0/24", "10.88.0.0/16", "fd77::/64", "fd88::/48"} <= set(first["routes"])
    assert "10.77.0.5/24" in second["addresses"] and "10.77.0.2/24" not in second["addresses"]
    assert second["mtu"] == 1380
    assert "UP" in out["flags"] and "NOARP" in out["flags"]
    assert out["gone"]  # closing the TUN removed the interface
    assert ns not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


LOOP_SCRIPT = r"""
import asyncio, json, sys, uvloop
from grouptun.tun import TunDevice
from grouptun.netconfig import NetConfig
name = sys.argv[1]
loop = uvloop.new_event_loop()
asyncio.set_event_loop(loop)
tun = TunDevice(name)
net = NetConfig(name)
net.configure(["10.77.0.2/24"], 1420, [])
async def on_loop():          # what SIGHUP reload does: netlink from the running loop's thread
    net.set_mtu(1400)
    net.add_routes(["10.88.0.0/16"])
    return net.state()
print(json.dumps(loop.run_until_complete(on_loop())))
tun.close()
"""


@pytest.mark.root
def test_netconfig_works_from_a_running_uvloop():
    tag = os.urandom(3).hex()
    ns, dev = f"gt-dmn-{tag}", f"gt-d{tag}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        proc = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", LOOP_SCRIPT, dev],
                              capture_output=True, text=True, timeout=30, cwd=REPO,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
    assert proc.returncode == 0, proc.stderr
    state = json.loads(proc.stdout)
    assert state["mtu"] == 1400 and "10.88.0.0/16" in state["routes"]
