"""Member names and subnet routes in a live mesh (lab tag ``nr``: provider p, members a b c).

- ``dig`` inside the namespaces asks a member's DNS server on its tunnel address for
  ``b.lan.grouptun`` (A and AAAA, UDP and TCP); other names get NXDOMAIN or REFUSED; malformed
  queries get FORMERR; a short flood from a is limited to a's own budget and counted, while c's
  queries are still answered and pings still pass.
- A "LAN host" namespace (``gt-nr-l``, 10.66.5.7) sits behind member b. Member a cannot reach it
  until the provider approves 10.66.5.0/24 behind b; then a pings it and talks TCP to it through
  b, without restarting anything; a packet from b's LAN with a source outside the approved
  prefix goes nowhere and is counted (b refuses to seal it); and when b is an insider whose
  daemon seals it anyway, a drops it and counts it (``inner``).
- The same over IPv6: a LAN host fd00:66:5::7 behind b, reached through the approved
  fd00:66:5::/64 (ping and TCP); a source outside it (fd00:66:6::9) is refused by b
  (``tx_source``), and by a when an insider b seals it anyway (``inner``).
The LAN namespace has the lab's prefix, so the lab's teardown removes it, also on failure.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from grouptun.lab import netns, ping
from grouptun.lab.mesh import REPO, drop_counts
from grouptun.lab.topology import Host
from grouptun.lab.wait import wait_until

pytestmark = [pytest.mark.root, pytest.mark.slow]
LAB_TAG = "nr"
LAN, LAN_GATEWAY, LAN_HOST, OUTSIDE = "10.66.5.0/24", "10.66.5.1", "10.66.5.7", "10.66.6.9"
LAN6, LAN6_GATEWAY, LAN6_HOST, OUTSIDE6 = "fd00:66:5::/64", "fd00:66:5::1", "fd00:66:5::7", "fd00:66:6::9"
ECHO_PORT = 7007


def dig(lab, host: str, server: str, name: str, *options: str) -> str:
    proc = lab.exec(host, ["dig", f"@{server}", name, "+time=2", "+tries=1", *options], timeout=15, check=False)
    return proc.stdout


def short(lab, host: str, server: str, name: str, rdtype: str, *options: str) -> list[str]:
    return dig(lab, host, server, name, rdtype, "+short", *options).split()


@pytest.fixture(scope="module")
def need_dig():
    if subprocess.run(["sh", "-c", "command -v dig"], capture_output=True).returncode != 0:
        pytest.skip("dig is not installed (scripts/test installs bind9-dnsutils)")


def test_dig_resolves_member_names_on_the_tunnel_address(lab_mesh, need_dig):
    lab, mesh = lab_mesh
    b = mesh.members["b"]
    for asker, server in (("a", mesh.members["a"].overlay(4)), ("c", b.overlay(4)), ("a", b.overlay(6))):
        assert short(lab, asker, server, "b.lan.grouptun", "A") == [b.overlay(4)]
        assert short(lab, asker, server, "B.Lan.Grouptun", "AAAA") == [b.overlay(6)]
    server = mesh.members["a"].overlay(4)
    assert short(lab, "a", server, "c.lan.grouptun", "A", "+tcp") == [mesh.members["c"].overlay(4)]
    assert "status: NXDOMAIN" in dig(lab, "a", server, "nobody.lan.grouptun", "A")
    assert "status: REFUSED" in dig(lab, "a", server, "example.com", "A")
    assert "flags: qr aa" in dig(lab, "a", server, "b.lan.grouptun", "A")
    assert mesh.status("a")["names"]["domain"] == "lan.grouptun"
    assert f"names: *.lan.grouptun on {server}" in mesh.status_text("a")


FLOOD = r"""
import socket, sys, time
import dns.message
server, seconds, limit = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.setblocking(False)
good = dns.message.make_query("b.lan.grouptun", "A").to_wire()
bad = [good[:-3], b"\x12\x34" + b"\x00" * 30, good[:2] + b"\x01\x00\x00\x05" + good[6:]]
sent, deadline = 0, time.monotonic() + seconds
for junk in bad * 10:
    sock.sendto(junk, (server, 53))
while sent < limit and time.monotonic() < deadline:
    try:
        sock.sendto(good, (server, 53))
        sent += 1
    except BlockingIOError:
        time.sleep(0.001)
print(sent)
"""


CLIENT_RATE, CLIENT_BURST = 50, 50  # the [names] defaults the lab's members run with


def test_malformed_queries_and_a_flood_are_counted_and_the_tunnel_keeps_working(lab_mesh, need_dig):
    lab, mesh = lab_mesh
    b = mesh.members["b"]
    before = mesh.status("b")["names"]
    started = time.monotonic()
    flood = lab.spawn("a", "dns-flood", [sys.executable, "-c", FLOOD, b.overlay(4), "3", "200000"])
    # during a's flood, c (another source) is still answered: the flood used up a's budget only. With
    # retries, as resolvers do: the flood also overflows b's socket buffer (the kernel drops a share of
    # every source's datagrams before the daemon sees them, measured: ~3% of a's queries reach b).
    during = [[line for line in dig(lab, "c", b.overlay(4), "a.lan.grouptun", "A", "+short", "+time=1",
                                    "+tries=3").splitlines() if not line.startswith(";;")] for _ in range(5)]
    pings = ping(lab, "c", b.overlay(4), count=10, interval=0.2)
    assert wait_until(lambda: not flood.alive(), timeout=20.0)
    took = time.monotonic() - started
    after = mesh.status("b")["names"]
    delta = {k: after[k] - before[k] for k in ("answered", "formerr", "client_limited", "rate_limited")}
    print(f"\nflood: {flood.tail(1).strip()} queries sent in {took:.1f} s; b names delta {delta}, "
          f"{after['clients']} clients; ping c->b {pings.received}/{pings.sent}; c during: {during}")
    assert pings.ok, pings.output
    assert during == [[mesh.members["a"].overlay(4)]] * 5
    assert delta["formerr"] >= 10
    assert delta["client_limited"] > 10 * delta["answered"]  # most of the flood was dropped at a's bucket
    # what b answered a: at most its burst plus its rate over the flood (+5 for c, +1 s of slack)
    assert delta["answered"] <= CLIENT_BURST + CLIENT_RATE * (took + 1) + 5
    assert delta["rate_limited"] == 0  # the shared budget stayed available to the others
    assert short(lab, "c", b.overlay(4), "a.lan.grouptun", "A") == [mesh.members["a"].overlay(4)]


def _lan_behind_b(lab) -> Host:
    """Namespace gt-nr-l with 10.66.5.7 and fd00:66:5::7, linked by a veth to b (10.66.5.1,
    fd00:66:5::1), default routes via b. No DAD on the LAN's addresses: usable at once."""
    ns, inside, outside = f"{lab.prefix}l", f"{lab.prefix}l0", f"{lab.prefix}bl"
    b_ns = lab.host("b").ns
    netns.run(["ip", "netns", "add", ns])
    host = Host("l", ns, inside, outside, LAN_HOST, "")
    lab.hosts["l"] = host
    for argv in (["ip", "-n", ns, "link", "set", "lo", "up"],
                 ["ip", "-n", b_ns, "link", "add", outside, "type", "veth", "peer", "name", inside, "netns", ns],
                 ["ip", "-n", b_ns, "addr", "add", f"{LAN_GATEWAY}/24", "dev", outside],
                 ["ip", "-n", b_ns, "link", "set", outside, "up"],
                 ["ip", "-n", ns, "addr", "add", f"{LAN_HOST}/24", "dev", inside],
                 ["ip", "-n", ns, "addr", "add", f"{OUTSIDE}/32", "dev", inside],
                 ["ip", "-n", ns, "link", "set", inside, "up"],
                 ["ip", "-n", ns, "route", "add", "default", "via", LAN_GATEWAY],
                 ["ip", "-n", b_ns, "addr", "add", f"{LAN6_GATEWAY}/64", "dev", outside, "nodad"],
                 ["ip", "-n", ns, "addr", "add", f"{LAN6_HOST}/64", "dev", inside, "nodad"],
                 ["ip", "-n", ns, "addr", "add", f"{OUTSIDE6}/128", "dev", inside, "nodad"],
                 ["ip", "-n", ns, "-6", "route", "add", "default", "via", LAN6_GATEWAY]):
        netns.run(argv)
    lab.sysctl("b", "net.ipv4.ip_forward", 1)
    lab.sysctl("b", "net.ipv6.conf.all.forwarding", 1)
    return host


ECHO = r"""
import socket, sys
server = socket.create_server(("::", int(sys.argv[1])), family=socket.AF_INET6, dualstack_ipv6=True)
server.settimeout(120)
for _ in range(20):
    conn, peer = server.accept()
    with conn:
        conn.settimeout(5)
        conn.sendall(f"{peer[0].removeprefix('::ffff:')} ".encode() + conn.recv(100))
"""

TCP_CLIENT = r"""
import socket, sys
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5) as s:
    s.sendall(b"hello lan")
    print(s.recv(200).decode())
"""


def routed_at_a(lab, prefix: str) -> bool:
    """Does a's kernel route ``prefix`` (the daemon adds it through the tunnel once approved)?"""
    family = "-6" if ":" in prefix else "-4"
    return prefix in lab.exec("a", ["ip", family, "route", "show", prefix], check=False).stdout


def wait_unrouted_at_a(lab, *prefixes: str) -> bool:
    """Once a route is removed at the provider, a drops it with the next archive (bounded wait)."""
    return bool(wait_until(lambda: not any(routed_at_a(lab, p) for p in prefixes), timeout=30.0, interval=0.5))


def _tcp(lab, host: str, address: str) -> subprocess.CompletedProcess:
    return lab.exec(host, [sys.executable, "-c", TCP_CLIENT, address, str(ECHO_PORT)], timeout=20, check=False)


def test_lan_host_behind_b_is_reached_once_the_route_is_approved(lab_mesh):
    lab, mesh = lab_mesh
    _lan_behind_b(lab)
    echo = lab.spawn("l", "lan-echo", [sys.executable, "-c", ECHO, str(ECHO_PORT)])
    assert ping(lab, "b", LAN_HOST, count=1).ok  # the LAN itself works
    assert not ping(lab, "a", LAN_HOST, count=2, interval=0.2).ok  # not approved: no route at a
    assert _tcp(lab, "a", LAN_HOST).returncode != 0

    out = json.loads(mesh.provider_cli("route", "approve", mesh.group, "b", LAN, "--json"))
    assert out["prefix"] == LAN and out["epoch"] is not None
    listed = json.loads(mesh.provider_cli("route", "list", mesh.group, "--json"))
    assert [(r["member"], r["prefix"]) for r in listed] == [("b", LAN)]

    def routed() -> bool:
        return routed_at_a(lab, LAN) and ping(lab, "a", LAN_HOST, count=1).ok
    assert wait_until(routed, timeout=30.0, interval=0.5), "a never reached the LAN host after the approval"
    assert ping(lab, "a", LAN_HOST, count=5, interval=0.1).ok
    answer = _tcp(lab, "a", LAN_HOST)
    assert answer.returncode == 0 and answer.stdout.split() == [mesh.members["a"].overlay(4), "hello", "lan"]
    b_entry = next(m for m in mesh.status("a")["session"]["members"] if m["name"] == "b")
    assert b_entry["routes"] == [LAN]
    assert lab.exec("b", ["ip", "route", "show", LAN], check=False).stdout.split()[1:3] != ["dev", "gt-lan"]

    # a packet from b's LAN whose source is outside the approved prefix: b refuses to seal it
    before_b, before_a = drop_counts(mesh.status("b")), drop_counts(mesh.status("a"))
    spoofed = ping(lab, "l", mesh.members["a"].overlay(4), count=3, interval=0.1, extra=("-I", OUTSIDE))
    assert spoofed.received == 0
    after_b, after_a = drop_counts(mesh.status("b")), drop_counts(mesh.status("a"))
    assert after_b.get("tx_source", 0) - before_b.get("tx_source", 0) >= 3
    assert after_a.get("inner", 0) == before_a.get("inner", 0)  # nothing of it reached a

    mesh.provider_cli("route", "remove", mesh.group, "b", LAN)
    assert wait_unrouted_at_a(lab, LAN)
    assert not ping(lab, "a", LAN_HOST, count=2, interval=0.2).ok
    echo.stop(timeout=3.0)


# b as a misbehaving insider: its own daemon, with its own send-side source check widened to
# 10.66.0.0/16 and fd00:66::/32, so it seals packets from outside its approved prefixes; a's receive
# rule must drop them.
INSIDER = f"""
import ipaddress, sys
sys.path.insert(0, {str(REPO)!r})
from grouptun.core import epoch
from grouptun.core.inner import PrefixMap
installed = epoch.EpochState.__init__
def claims_more(self, *args, **kwargs):
    installed(self, *args, **kwargs)
    self.own_prefixes = PrefixMap([(ipaddress.ip_network("10.66.0.0/16"), True),
                                   (ipaddress.ip_network("fd00:66::/32"), True)])
epoch.EpochState.__init__ = claims_more
from grouptun.cli.main import main
sys.exit(main())
"""


def test_source_outside_the_approved_prefix_from_an_insider_is_dropped_and_counted_at_a(lab_mesh):
    lab, mesh = lab_mesh
    if "l" not in lab.hosts:
        _lan_behind_b(lab)
    mesh.provider_cli("route", "approve", mesh.group, "b", LAN)
    mesh.provider_cli("route", "approve", mesh.group, "b", LAN6)
    b = mesh.members["b"]
    mesh.down("b")
    b.proc = lab.spawn("b", "member-b-insider", [sys.executable, "-c", INSIDER, "up", mesh.group, "--config",
                                                 str(b.config), "--credential-file", str(b.credential_file)])
    try:
        mesh.wait_ready("b")
        for family, inside, outside in ((4, LAN_HOST, OUTSIDE), (6, LAN6_HOST, OUTSIDE6)):
            a_overlay, from_inside = mesh.members["a"].overlay(family), ("-I", inside)
            assert wait_until(lambda: ping(lab, "l", a_overlay, count=1, extra=from_inside).ok,
                              timeout=30.0, interval=0.5)
            before_a, before_b = drop_counts(mesh.status("a")), drop_counts(mesh.status("b"))
            spoofed = ping(lab, "l", a_overlay, count=3, interval=0.1, extra=("-I", outside))
            after_a, after_b = drop_counts(mesh.status("a")), drop_counts(mesh.status("b"))
            print(f"\ninsider b, IPv{family}: a inner drops {before_a.get('inner', 0)} -> {after_a.get('inner', 0)}")
            assert spoofed.received == 0
            assert after_a.get("inner", 0) - before_a.get("inner", 0) >= 3  # sealed by b, refused by a
            assert after_b.get("tx_source", 0) == before_b.get("tx_source", 0)  # the insider did seal them
            assert ping(lab, "l", a_overlay, count=2, interval=0.1, extra=from_inside).ok  # inside: still fine
    finally:
        mesh.down("b")
        mesh.up("b")
        mesh.wait_ready("b")
        mesh.provider_cli("route", "remove", mesh.group, "b", LAN)
        mesh.provider_cli("route", "remove", mesh.group, "b", LAN6)
    assert wait_unrouted_at_a(lab, LAN, LAN6)  # the next test starts without them


def test_ipv6_lan_host_behind_b_is_reached_through_an_approved_fd00_prefix(lab_mesh):
    lab, mesh = lab_mesh
    if "l" not in lab.hosts:
        _lan_behind_b(lab)
    echo = lab.spawn("l", "lan-echo6", [sys.executable, "-c", ECHO, str(ECHO_PORT)])
    a6 = mesh.members["a"].overlay(6)
    assert ping(lab, "b", LAN6_HOST, count=1).ok  # the LAN itself works
    assert not ping(lab, "a", LAN6_HOST, count=2, interval=0.2).ok  # not approved: no route at a

    out = json.loads(mesh.provider_cli("route", "approve", mesh.group, "b", LAN6, "--json"))
    assert out["prefix"] == LAN6 and out["epoch"] is not None

    def routed() -> bool:
        return routed_at_a(lab, LAN6) and ping(lab, "a", LAN6_HOST, count=1).ok
    assert wait_until(routed, timeout=30.0, interval=0.5), "a never reached the IPv6 LAN host after the approval"
    assert ping(lab, "a", LAN6_HOST, count=5, interval=0.1).ok
    answer = _tcp(lab, "a", LAN6_HOST)
    assert answer.returncode == 0 and answer.stdout.split() == [a6, "hello", "lan"], answer.stderr
    b_entry = next(m for m in mesh.status("a")["session"]["members"] if m["name"] == "b")
    assert LAN6 in b_entry["routes"]

    # from b's LAN, a source outside the approved prefix: b refuses to seal it, and counts it
    before_b, before_a = drop_counts(mesh.status("b")), drop_counts(mesh.status("a"))
    spoofed = ping(lab, "l", a6, count=3, interval=0.1, extra=("-I", OUTSIDE6))
    after_b, after_a = drop_counts(mesh.status("b")), drop_counts(mesh.status("a"))
    print(f"\nIPv6 LAN: b tx_source {before_b.get('tx_source', 0)} -> {after_b.get('tx_source', 0)}")
    assert spoofed.received == 0
    assert after_b.get("tx_source", 0) - before_b.get("tx_source", 0) >= 3
    assert after_a.get("inner", 0) == before_a.get("inner", 0)  # nothing of it reached a
    # from inside the prefix: fine. With -I: for fd77::1 the kernel's source selection (RFC 6724)
    # finds both of l's addresses equally near and may pick the outside one
    assert ping(lab, "l", a6, count=2, interval=0.1, extra=("-I", LAN6_HOST)).ok

    mesh.provider_cli("route", "remove", mesh.group, "b", LAN6)
    assert wait_unrouted_at_a(lab, LAN6)
    assert not ping(lab, "a", LAN6_HOST, count=2, interval=0.2).ok
    echo.stop(timeout=3.0)
