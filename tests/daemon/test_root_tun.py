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
from grouptun.data.tun import TunDevice
from grouptun.data.netconfig import NetConfig
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


def run_in_fresh_namespace(script: str, prefix: str, timeout: float) -> tuple[subprocess.CompletedProcess, str]:
    """Run ``script`` (argv[1]: a TUN name) in a new namespace gt-<prefix>-<tag>, removed afterwards."""
    tag = os.urandom(3).hex()
    ns, dev = f"gt-{prefix}-{tag}", f"gt-{prefix[0]}{tag}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        proc = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", script, dev],
                              capture_output=True, text=True, timeout=timeout, cwd=REPO,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
    return proc, ns


@pytest.mark.root
def test_tun_and_netconfig_in_a_namespace():
    proc, ns = run_in_fresh_namespace(SCRIPT, "dmn", 30)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
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
from grouptun.data.tun import TunDevice
from grouptun.data.netconfig import NetConfig
name = sys.argv[1]
loop = uvloop.new_event_loop()
asyncio.set_event_loop(loop)
tun = TunDevice(name)
net = NetConfig(name)
net.configure(["10.77.0.2/24"], 1420, [])
async def on_loop():          # what SIGHUP reload does: netlink from the running loop's thread
    net.set_mtu(1400)
    net.add_routes(["10.88.0.0/16", "10.89.0.0/16"])
    net.remove_routes(["10.89.0.0/16", "10.90.0.0/16"])  # a subnet route taken away; one never there
    return net.state()
print(json.dumps(loop.run_until_complete(on_loop())))
tun.close()
"""


@pytest.mark.root
def test_netconfig_works_from_a_running_uvloop():
    proc, _ = run_in_fresh_namespace(LOOP_SCRIPT, "dmn", 30)
    assert proc.returncode == 0, proc.stderr
    state = json.loads(proc.stdout)
    assert state["mtu"] == 1400 and "10.88.0.0/16" in state["routes"] and "10.89.0.0/16" not in state["routes"]


PING6_SCRIPT = r"""
import json, select, socket, struct, subprocess, sys, time
from grouptun.data.tun import TunDevice
from grouptun.data.netconfig import NetConfig
name = sys.argv[1]
tun = TunDevice(name, offload="off")  # plain IP packets from read()
NetConfig(name).configure(["10.77.0.2/24", "fd77::2/64"], 1420, [])
state = NetConfig(name).state()
ping = subprocess.Popen(["ping", "-6", "-c", "3", "-i", "0.2", "-W", "2", "fd77::9"],
                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
sources, replied, deadline = set(), 0, time.monotonic() + 8
while time.monotonic() < deadline and ping.poll() is None:   # bounded in time
    if not select.select([tun.fileno()], [], [], 0.2)[0]:
        continue
    pkt = tun.read()
    if not pkt or pkt[0] >> 4 != 6:
        continue
    src, dst = pkt[8:24], pkt[24:40]
    sources.add(socket.inet_ntop(socket.AF_INET6, src))
    if pkt[6] == 58 and pkt[40] == 128:                        # ICMPv6 echo request: answer it
        body = bytearray(pkt[40:])
        body[0], body[2:4] = 129, b"\0\0"
        pseudo = src[:0] + dst + src + struct.pack(">I3xB", len(body), 58)
        data = pseudo + bytes(body) + (b"\0" if len(body) % 2 else b"")
        total = sum(struct.unpack(f">{len(data) // 2}H", data))
        while total >> 16:
            total = (total & 0xFFFF) + (total >> 16)
        body[2:4] = struct.pack(">H", ~total & 0xFFFF)
        tun.write_parts_one(bytes(pkt[:8]) + dst + src + bytes(body))
        replied += 1
out, _ = ping.communicate(timeout=10)
tun.close()
print(json.dumps({"addresses": state["addresses"], "sources": sorted(sources), "replied": replied,
                  "ping_rc": ping.returncode, "ping": out[-300:]}))
"""


@pytest.mark.root
def test_tun_has_no_ipv6_link_local_and_ipv6_ping_works():
    """No kernel fe80:: on the TUN (so no MLD/RS from it to drop as tx_source); IPv6 still flows."""
    proc, _ = run_in_fresh_namespace(PING6_SCRIPT, "cp", 40)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    print(out)
    assert not [a for a in out["addresses"] if a.startswith("fe80:")], out["addresses"]
    assert not [s for s in out["sources"] if s.startswith("fe80:")], out["sources"]
    assert out["replied"] == 3 and out["ping_rc"] == 0, out["ping"]
    assert "fd77::2" in out["sources"]
