"""Network-namespace labs for grouptun: build, run, measure, always tear down.

    from grouptun.lab import Lab, ping
    with Lab("lab", hosts=("a", "b", "c")) as lab:
        assert ping(lab, "a", lab.host("b").ipv6).ok

Every name starts with ``gt-<tag>-``; every address exists only inside the
lab's namespaces. Used by tests/integration, scripts/demo, scripts/attack.
Needs root and iproute2 (plus iperf3/tcpdump/tc for the helpers using them).
"""

from grouptun.lab.netns import LabError, list_ns, links
from grouptun.lab.process import Proc
from grouptun.lab.topology import Host, Lab
from grouptun.lab.traffic import IperfResult, IperfRun, PingResult, iperf3, parse_iperf3, ping, wait_ping
from grouptun.lab.wait import wait_until

__all__ = ["Host", "IperfResult", "IperfRun", "Lab", "LabError", "PingResult", "Proc",
           "iperf3", "links", "list_ns", "parse_iperf3", "ping", "wait_ping", "wait_until"]
