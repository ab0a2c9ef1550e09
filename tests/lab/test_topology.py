"""The lab itself: build, reach every pair, always tear down."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from grouptun.lab import Lab, LabError, links, list_ns, ping, wait_until
from grouptun.lab.topology import remove_tag

REPO = Path(__file__).resolve().parents[2]


def _nothing_left(prefix: str) -> None:
    assert list_ns(prefix) == []
    assert [name for name in links() if name.startswith(prefix)] == []


@pytest.mark.root
@pytest.mark.slow
def test_three_host_bridge_lab_pings_every_pair_and_leaves_nothing():
    with Lab("lab", hosts=("a", "b", "c")) as lab:
        assert sorted(list_ns("gt-lab-")) == ["gt-lab-a", "gt-lab-b", "gt-lab-c", "gt-lab-sw"]
        # nothing of the lab in our own namespace, even while it is up
        assert [n for n in links() if n.startswith("gt-lab")] == []
        failures = []
        for src, dst in itertools.permutations("abc", 2):
            for addr in (lab.host(dst).ipv4, lab.host(dst).ipv6):
                result = ping(lab, src, addr, count=2, interval=0.1)
                if not result.ok:
                    failures.append(f"{src}->{dst} {addr}: {result.output.strip()[-200:]}")
        assert failures == []
        # a host outside the subnet is unreachable: no route leaves the lab
        assert not ping(lab, "a", "10.98.0.1", count=1, wait_s=0.3).ok
    _nothing_left("gt-lab-")


@pytest.mark.root
def test_teardown_on_exception_stops_processes_in_the_lab():
    with pytest.raises(RuntimeError, match="boom"):
        with Lab("labx", hosts=("a",)) as lab:
            proc = lab.spawn("a", "sleeper", ["sleep", "300"])
            assert proc.alive()
            raise RuntimeError("boom")
    assert not proc.alive()
    _nothing_left("gt-labx-")


@pytest.mark.root
def test_lab_processes_share_our_session_but_not_our_process_group():
    # Our session: the scheduler's autogroup (one per session) must not hand each daemon its own
    # CPU share, or benchmarks compare grouptun and the peers under different rules.
    # Own process group: a Ctrl-C in the terminal reaches only the lab's owner.
    with Lab("labs", hosts=("a",)) as lab:
        proc = lab.spawn("a", "sleeper", ["sleep", "300"])
        assert os.getsid(proc.pid) == os.getsid(0)
        assert os.getpgid(proc.pid) == proc.pid != os.getpgid(0)
    _nothing_left("gt-labs-")


@pytest.mark.root
@pytest.mark.slow
def test_sigterm_to_the_owner_still_removes_the_lab(tmp_path):
    script = textwrap.dedent("""
        import sys, time
        from grouptun.lab import Lab
        with Lab("labt", hosts=("a", "b")) as lab:
            lab.spawn("a", "sleeper", ["sleep", "300"])
            print("UP", flush=True)
            time.sleep(60)
    """)
    child = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE,
                             text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert child.stdout.readline().strip() == "UP"
        assert len(list_ns("gt-labt-")) == 3
        child.send_signal(signal.SIGTERM)
        assert child.wait(timeout=30) == 128 + signal.SIGTERM
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=5)
        remove_tag("labt")  # belt and braces if an assert above failed
    _nothing_left("gt-labt-")


@pytest.mark.root
def test_up_removes_leftovers_of_a_crashed_run():
    subprocess.run(["ip", "netns", "add", "gt-laby-a"], check=True)
    try:
        with Lab("laby", hosts=("a",)) as lab:
            assert lab.host("a").ns == "gt-laby-a"
            assert ping(lab, "a", lab.host("a").ipv4, count=1).ok
    finally:
        subprocess.run(["ip", "netns", "del", "gt-laby-a"], check=False, capture_output=True)
    _nothing_left("gt-laby-")


def test_bad_tag_and_long_names_are_refused():
    with pytest.raises(LabError, match="tag"):
        Lab("Bad-Tag")
    with pytest.raises(LabError, match="private"):
        Lab("ok", subnet4="8.8.8.0/24")


@pytest.mark.root
def test_long_host_name_is_refused_before_anything_is_made():
    with Lab("labz", hosts=()) as lab:
        with pytest.raises(LabError, match="longer than 15"):
            lab.add_host("averyverylongname")
        assert list_ns("gt-labz-") == ["gt-labz-sw"]
    _nothing_left("gt-labz-")


def test_wait_until_is_bounded():
    calls = []
    assert wait_until(lambda: calls.append(1), timeout=0.3, interval=0.05) is None
    assert 2 <= len(calls) <= 10
    assert wait_until(lambda: 42, timeout=0) == 42


@pytest.mark.root
def test_detach_adopt_add_and_remove_host():
    lab = Lab("labd", hosts=("a",))
    try:
        with lab:
            lab.detach()                      # like demo --keep: survives the with block
        assert \
            sorted(list_ns("gt-labd-")) == ["gt-labd-a", "gt-labd-sw"]
        other = Lab.adopt(lab.describe())     # like scripts/attack, from the description
        e = other.add_host("e")
        assert e.ipv4 == "10.99.0.2"          # next free address after a
        assert ping(other, "e", other.host("a").ipv6, count=1).ok
        other.remove_host("e")
        assert sorted(list_ns("gt-labd-")) == ["gt-labd-a", "gt-labd-sw"]
    finally:
        remove_tag("labd")
        import shutil
        shutil.rmtree(lab.workdir, ignore_errors=True)
    _nothing_left("gt-labd-")
    with pytest.raises(LabError, match="not running"):
        Lab.adopt(lab.describe())


@pytest.mark.root
def test_sysctl_is_per_namespace():
    with Lab("labs", hosts=("a", "b")) as lab:
        lab.sysctl("a", "net.ipv4.icmp_echo_ignore_broadcasts", 0)
        read = lambda h: lab.exec(h, ["cat", "/proc/sys/net/ipv4/icmp_echo_ignore_broadcasts"]).stdout
        assert (read("a"), read("b")) == ("0\n", "1\n")
        assert lab.exec("a", ["cat", "/proc/sys/net/ipv6/conf/all/disable_ipv6"]).stdout == "0\n"
        assert lab.exec("a", ["cat", "/proc/sys/net/ipv6/conf/all/accept_dad"]).stdout == "0\n"
    _nothing_left("gt-labs-")
