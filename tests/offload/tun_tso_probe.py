"""Run inside a fresh network namespace (by test_linux.py): prove TUN TSO works.

Opens a TUN with a virtio-net header and offloads, answers one TCP SYN with a
hand-made SYN-ACK, lets the kernel send 60 KB on the connection, and prints
one JSON line describing the first data packet read from the TUN. Bounded in
time (socket timeouts, a read deadline).
"""

import json
import os
import select
import socket
import struct
import subprocess
import sys
import time

sys.path.insert(0, sys.argv[1])
from grouptun.data.offload import linux, segment, vnet  # noqa: E402
from grouptun.data.offload.checksum import checksum, ones_sum  # noqa: E402

NAME, LOCAL, PEER = "gt-perf-tun0", "10.213.0.1", "10.213.0.2"


def read_packet(tun, deadline):
    buf = bytearray(70000)
    while time.monotonic() < deadline:
        r, _, _ = select.select([tun.fd], [], [], 0.2)
        if r:
            n = tun.read_into(buf)
            return vnet.decode(buf), bytes(buf[vnet.VNET_HDR_LEN:n])
    raise TimeoutError("nothing read from the TUN")


def syn_ack(syn: bytes) -> bytes:
    ihl = (syn[0] & 15) * 4
    sport, dport, seq = struct.unpack_from("!HHI", syn, ihl)
    opts = struct.pack("!BBH", 2, 4, 1400) + b"\x01\x01\x01\x01"  # MSS 1400, padding
    tcp = bytearray(struct.pack("!HHIIBBHHH", dport, sport, 5000, seq + 1, (28 // 4) << 4, 0x12, 65535, 0, 0) + opts)
    ip = bytearray(struct.pack("!BBHHHBBH", 0x45, 0, 20 + len(tcp), 1, 0x4000, 64, 6, 0)
                   + socket.inet_aton(PEER) + socket.inet_aton(LOCAL))
    struct.pack_into("!H", ip, 10, checksum(ip))
    src, dst = ip[12:16], ip[16:20]
    struct.pack_into("!H", tcp, 16, checksum(tcp, ones_sum(bytes(src + dst), 6 + len(tcp))))
    return bytes(ip + tcp)


def gro_write_delivers(tun):
    """Coalesce 5 UDP datagrams (PEER -> LOCAL:5300) into one GSO_UDP_L4 write; return what a socket gets."""
    from grouptun.data.offload.coalesce import Coalescer
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind((LOCAL, 5300))
    rx.settimeout(2)
    co = Coalescer(udp=True)
    sent = [bytes([65 + i]) * 1000 for i in range(4)] + [b"tail"]
    for i, body in enumerate(sent):
        udp = bytearray(struct.pack("!HHHH", 4000, 5300, 8 + len(body), 0) + body)
        ip = bytearray(struct.pack("!BBHHHBBH", 0x45, 0, 28 + len(body), 100 + i, 0x4000, 64, 17, 0)
                       + socket.inet_aton(PEER) + socket.inet_aton(LOCAL))
        struct.pack_into("!H", ip, 10, checksum(ip))
        struct.pack_into("!H", udp, 6, checksum(udp, ones_sum(bytes(ip[12:20]), 17 + len(udp))) or 0xFFFF)
        co.add(bytes(ip + udp))
    writes = co.flush()
    for w in writes:
        tun.write(w)
    got = [rx.recv(2000) for _ in sent]
    rx.close()
    return {"writes": len(writes), "gso_type": vnet.decode(writes[0]).gso_type, "ok": got == sent}


def tcp_gro_write_delivers(tun, client, data_pkt):
    """Coalesce 4 in-order segments PEER -> client into one GSO_TCPV4 write; return what the socket reads."""
    from grouptun.data.offload.coalesce import Coalescer
    ihl = (data_pkt[0] & 15) * 4
    sport, dport, cseq = struct.unpack_from("!HHI", data_pkt, ihl)
    co = Coalescer()
    bodies = [bytes([97 + i]) * 1000 for i in range(4)]
    for i, body in enumerate(bodies):
        tcp = bytearray(struct.pack("!HHIIBBHHH", dport, sport, 5001 + 1000 * i, cseq, 5 << 4, 0x10, 65535, 0, 0) + body)
        ip = bytearray(struct.pack("!BBHHHBBH", 0x45, 0, 20 + len(tcp), 200 + i, 0x4000, 64, 6, 0)
                       + socket.inet_aton(PEER) + socket.inet_aton(LOCAL))
        struct.pack_into("!H", ip, 10, checksum(ip))
        struct.pack_into("!H", tcp, 16, checksum(tcp, ones_sum(bytes(ip[12:20]), 6 + len(tcp))))
        co.add(bytes(ip + tcp))
    writes = co.flush()
    for w in writes:
        tun.write(w)
    got = b""
    while len(got) < 4000:
        chunk = client.recv(8000)
        if not chunk:
            break
        got += chunk
    return {"writes": len(writes), "gso_type": vnet.decode(writes[0]).gso_type, "ok": got == b"".join(bodies)}


def main():
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    tun = linux.open_tun(NAME, vnet_hdr=True)
    subprocess.run(["ip", "addr", "add", f"{LOCAL}/24", "dev", NAME], check=True)
    subprocess.run(["ip", "link", "set", NAME, "up", "mtu", "1420"], check=True)
    client = socket.socket()
    client.setblocking(False)
    client.connect_ex((PEER, 5201))
    deadline = time.monotonic() + 5
    while True:
        hdr, pkt = read_packet(tun, deadline)
        if pkt[0] >> 4 == 4 and pkt[9] == 6 and pkt[33] & 0x02:
            break
    tun.write(bytes(vnet.VNET_HDR_LEN) + syn_ack(pkt))
    select.select([], [client], [], 3)
    client.setblocking(True)
    client.settimeout(3)
    client.send(os.urandom(60000))
    while True:
        hdr, pkt = read_packet(tun, deadline)
        if len(pkt) > 40 and pkt[9] == 6 and len(pkt) > 20 + (pkt[32] >> 4) * 4:
            break
    segs = segment.segment(pkt, hdr)
    gro = gro_write_delivers(tun)
    tcp_gro = tcp_gro_write_delivers(tun, client, pkt)
    print(json.dumps({"describe": tun.describe(), "gso_type": hdr.gso_type, "gso_size": hdr.gso_size,
                      "flags": hdr.flags, "csum_start": hdr.csum_start, "csum_offset": hdr.csum_offset,
                      "len": len(pkt), "gro_udp": gro, "gro_tcp": tcp_gro, "segments": [s.hex() for s in segs], "super": pkt.hex()}))
    client.close()
    tun.close()


if __name__ == "__main__":
    main()
