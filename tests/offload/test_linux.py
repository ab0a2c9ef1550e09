import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from grouptun.data.offload import linux, vnet
from offload_pktgen import ref_ip4_ok, ref_l4_ok

REPO = Path(__file__).resolve().parents[2]


def test_bad_tun_name_is_refused():
    from grouptun.errors import SystemSetupError
    with pytest.raises(SystemSetupError):
        linux.open_tun("x" * 16)


@pytest.mark.root
def test_tun_with_vnet_hdr_hands_out_tso_super_packets():
    ns = f"gt-perf-t{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        r = subprocess.run(["ip", "netns", "exec", ns, sys.executable, str(Path(__file__).with_name("tun_tso_probe.py")),
                            str(REPO)], capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        res = json.loads(r.stdout.strip().splitlines()[-1])
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
    assert "offloads=csum+tso4+tso6" in res["describe"]
    assert res["gso_type"] & 0x7F == vnet.GSO_TCPV4
    assert res["flags"] & vnet.F_NEEDS_CSUM and res["csum_start"] == 20 and res["csum_offset"] == 16
    assert res["len"] > 1420  # a super-packet larger than the MTU
    # and the kernel accepts our coalesced GSO_UDP_L4 write, delivering every datagram
    assert res["gro_udp"] == {"writes": 1, "gso_type": vnet.GSO_UDP_L4, "ok": True}
    assert res["gro_tcp"] == {"writes": 1, "gso_type": vnet.GSO_TCPV4, "ok": True}
    segs = [bytes.fromhex(s) for s in res["segments"]]
    assert len(segs) >= 2
    hl = 20 + (segs[0][32] >> 4) * 4
    assert all(len(s) <= 1420 and ref_ip4_ok(s) and ref_l4_ok(s) for s in segs)
    assert b"".join(s[hl:] for s in segs) == bytes.fromhex(res["super"])[hl:]
