"""Root: two Session + DataPlane processes on real TUNs in gt-fp-* namespaces, every byte checked.

Underlay: a veth pair between namespaces gt-fp-a and gt-fp-b (10.201.9.0/24);
overlay 10.77.9.0/24 and fd77:9::/64 on TUN gt-fpt0 in each. TCP streams
(odd write sizes, so TSO super-packets of every shape) and UDP datagrams
(odd sizes, and UDP_SEGMENT sends that reach the TUN as USO super-packets)
go alice -> bob over IPv4 and IPv6, with offload "auto" and "off"; what
arrives is compared with what was sent (SHA-256 of the stream, every
datagram's payload).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import fp_tool
from grouptun.lab import netns

pytestmark = pytest.mark.root

TOOL = str(Path(__file__).with_name("fp_tool.py"))
PREFIX = "gt-fp-"
NS = {"alice": "gt-fp-a", "bob": "gt-fp-b"}


def ns_popen(ns: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, TOOL, *args], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def first_line(proc: subprocess.Popen) -> str:
    line = proc.stdout.readline()
    if not line:
        proc.kill()
        raise AssertionError(f"helper died: {proc.stderr.read()[-2000:]}")
    return line.strip()


@pytest.fixture(params=["auto", "off"])
def lab(request):
    for ns in netns.list_ns(PREFIX):
        netns.delete_ns(ns, PREFIX)
    members: dict[str, subprocess.Popen] = {}
    try:
        for ns in NS.values():
            netns.run(["ip", "netns", "add", ns])
            netns.ns_exec(ns, ["ip", "link", "set", "lo", "up"])
        netns.run(["ip", "link", "add", "gt-fpa0", "netns", NS["alice"], "type", "veth",
                   "peer", "name", "gt-fpb0", "netns", NS["bob"]])
        for name, dev in (("alice", "gt-fpa0"), ("bob", "gt-fpb0")):
            netns.ns_exec(NS[name], ["ip", "addr", "add", fp_tool.UNDER[name] + "/24", "dev", dev])
            netns.ns_exec(NS[name], ["ip", "link", "set", dev, "up"])
        for name in NS:
            members[name] = ns_popen(NS[name], "member", name, request.param, "60")
        paths = {name: first_line(proc) for name, proc in members.items()}
        assert all(p.startswith("ready") for p in paths.values()), paths
        yield request.param, paths, members
    finally:
        for proc in members.values():
            if proc.poll() is None:
                proc.stdin.close()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
        for ns in NS.values():
            netns.delete_ns(ns, PREFIX)


def finish(members) -> dict:
    out = {}
    for name, proc in members.items():
        stdout, stderr = proc.communicate(timeout=15)  # closes stdin: the member stops and reports
        assert proc.returncode == 0, stderr[-2000:]
        out[name] = json.loads(stdout.strip().splitlines()[-1])
    return out


def tcp_transfer(host: str, size: int, seed: int) -> None:
    server = ns_popen(NS["bob"], "tcp-server", host, "30")
    assert first_line(server) == "listening"
    client = subprocess.run(["ip", "netns", "exec", NS["alice"], sys.executable, TOOL, "tcp-client", host,
                             str(size), str(seed)], capture_output=True, text=True, timeout=60)
    assert client.returncode == 0, client.stderr[-2000:]
    got, _ = server.communicate(timeout=40)
    assert got.split() == client.stdout.split()  # same length, same SHA-256


def udp_transfer(host: str, spec: str) -> None:
    sizes = []
    for item in spec.split(","):
        if item.startswith("gso:"):
            _, size, many = item.split(":")
            sizes += [int(size)] * int(many)
        else:
            sizes.append(int(item))
    expected = [fp_tool.payload(size, k).hex() for k, size in enumerate(sizes)]
    server = ns_popen(NS["bob"], "udp-server", host, str(len(expected)), "15")
    assert first_line(server) == "listening"
    client = subprocess.run(["ip", "netns", "exec", NS["alice"], sys.executable, TOOL, "udp-client", host, spec],
                            capture_output=True, text=True, timeout=60)
    assert client.returncode == 0, client.stderr[-2000:]
    got, _ = server.communicate(timeout=30)
    assert json.loads(got.strip().splitlines()[-1]) == expected


def test_tcp_and_udp_v4_v6_every_byte(lab):
    mode, paths, members = lab
    assert ("vnet_hdr" in paths["alice"]) == (mode == "auto"), paths
    for host, seed in ((fp_tool.OVER4["bob"], 1), (fp_tool.OVER6["bob"], 2)):
        tcp_transfer(host, 3_000_001 + seed, seed)
        udp_transfer(host, "1,17,1372,1000,gso:1000:9,gso:333:5,1,1300")
    stats = finish(members)
    bob = stats["bob"]
    assert bob["counters"]["internal_errors"] == 0 and stats["alice"]["counters"]["internal_errors"] == 0
    assert not {k: v for k, v in bob["drops"].items() if not k.startswith("tx_")}, bob["drops"]  # tx_: link-local IPv6 chatter
    if mode == "auto":
        assert stats["alice"]["counters"]["udp_tx"] > stats["alice"]["counters"]["tx_runs"]  # TSO came in
