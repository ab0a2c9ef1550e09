"""Helper processes for test_datapath_root.py, each run inside a gt-fp-* namespace.

    fp_tool.py member NAME OFFLOAD SECONDS   Session + DataPlane on a real TUN (gt-fpt0) and UDP socket;
                                            prints "ready", runs until stdin closes or SECONDS pass, then
                                            prints one JSON line: data-plane counters and session drops
    fp_tool.py tcp-server HOST SECONDS       accepts one connection, prints "<bytes> <sha256>" of what came
    fp_tool.py tcp-client HOST SIZE SEED     sends SIZE pseudo-random bytes in odd-sized writes
    fp_tool.py udp-server HOST COUNT SECS    prints one JSON list: the payloads received (hex), in order
    fp_tool.py udp-client HOST SPEC          sends datagrams of the sizes in SPEC ("1,1372,..."); "gso:N:K"
                                            sends K datagrams of N bytes in one UDP_SEGMENT call
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import random
import select
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

UNDER = {"alice": "10.201.9.1", "bob": "10.201.9.2"}
OVER4 = {"alice": "10.77.9.1", "bob": "10.77.9.2"}
OVER6 = {"alice": "fd77:9::1", "bob": "fd77:9::2"}
PORT = 52000
TUN = "gt-fpt0"


def member(name: str, offload: str, seconds: float) -> int:
    import asyncio

    import uvloop

    from grouptun.core.session import EpochMaterial, MemberInfo, Session
    from grouptun.data.plane import DataPlane
    from grouptun.data.tun import TunDevice
    from grouptun.data.udp import UdpTransport

    members = tuple(MemberInfo(n, i, (ipaddress.ip_address(OVER4[n]), ipaddress.ip_address(OVER6[n])),
                               (UNDER[n], PORT)) for i, n in enumerate(("alice", "bob")))
    material = EpochMaterial(group_id=bytes(16), epoch=3, suite=1, nonce_start=99, group_size=2,
                             own_index=0 if name == "alice" else 1, members=members,
                             shared_secret=bytearray(b"k" * 32), salt=bytearray(b"l" * 32))
    from grouptun import native
    session = Session(name, run_key=native.choose(os.environ.get(native.ENV, "auto")).maker)  # both paths
    session.install_epoch(material, time.monotonic())
    tun = TunDevice(TUN, offload=offload)
    for cmd in (["ip", "addr", "add", OVER4[name] + "/24", "dev", TUN],
                ["ip", "-6", "addr", "add", OVER6[name] + "/64", "dev", TUN, "nodad"],
                ["ip", "link", "set", TUN, "mtu", "1420", "up"]):
        subprocess.run(cmd, check=True, timeout=10)
    udp = UdpTransport("::", PORT, offload=offload)
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    data = DataPlane(session, tun, udp)
    data.attach(loop)
    print("ready", data.path, flush=True)
    done = loop.create_future()
    loop.add_reader(sys.stdin.fileno(), lambda: done.done() or done.set_result(None))
    loop.call_later(seconds, lambda: done.done() or done.set_result(None))
    loop.run_until_complete(done)
    data.detach()
    print(json.dumps({"counters": data.status(), "drops": {k: v for k, v in session.drops.items() if v}}),
          flush=True)
    tun.close()
    udp.close()
    return 0


def tcp_server(host: str, seconds: float) -> int:
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(fam, socket.SOCK_STREAM) as srv:
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind((host, 5201))
        srv.listen(1)
        print("listening", flush=True)
        srv.settimeout(seconds)
        conn, _ = srv.accept()
        digest, total, deadline = hashlib.sha256(), 0, time.monotonic() + seconds
        with conn:
            conn.settimeout(seconds)
            while time.monotonic() < deadline:
                chunk = conn.recv(1 << 20)
                if not chunk:
                    break
                digest.update(chunk)
                total += len(chunk)
        print(total, digest.hexdigest(), flush=True)
    return 0


def stream(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def tcp_client(host: str, size: int, seed: int) -> int:
    data = stream(size, seed)
    sizes = random.Random(seed + 1)
    with socket.create_connection((host, 5201), timeout=20) as conn:
        off = 0
        while off < size:
            n = sizes.choice((1, 7, 999, 1367, 4097, 65537, 200001))
            conn.sendall(data[off:off + n])
            off += n
    print(size, hashlib.sha256(data).hexdigest(), flush=True)
    return 0


def udp_server(host: str, count: int, seconds: float) -> int:
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    got = []
    with socket.socket(fam, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        sock.bind((host, 5202))
        print("listening", flush=True)
        deadline = time.monotonic() + seconds
        while len(got) < count and time.monotonic() < deadline:
            if select.select([sock], [], [], 0.2)[0]:
                got.append(sock.recv(65535).hex())
    print(json.dumps(got), flush=True)
    return 0


def payload(size: int, k: int) -> bytes:
    return bytes((k * 31 + j) % 251 for j in range(size))


def udp_client(host: str, spec: str) -> int:
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(fam, socket.SOCK_DGRAM) as sock:
        k = 0
        for item in spec.split(","):
            if item.startswith("gso:"):
                _, size, many = item.split(":")
                data = b"".join(payload(int(size), k + j) for j in range(int(many)))
                sock.sendmsg([data], [(17, 103, int(size).to_bytes(2, sys.byteorder))], 0, (host, 5202))
                k += int(many)
            else:
                sock.sendto(payload(int(item), k), (host, 5202))
                k += 1
            time.sleep(0.01)
    return 0


def main() -> int:
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "member":
        return member(args[0], args[1], float(args[2]))
    if cmd == "tcp-server":
        return tcp_server(args[0], float(args[1]))
    if cmd == "tcp-client":
        return tcp_client(args[0], int(args[1]), int(args[2]))
    if cmd == "udp-server":
        return udp_server(args[0], int(args[1]), float(args[2]))
    if cmd == "udp-client":
        return udp_client(args[0], args[1])
    raise SystemExit(f"unknown command {cmd}")


if __name__ == "__main__":
    sys.exit(main())
