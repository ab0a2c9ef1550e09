"""Parsing of ping and iperf3 output (no root needed); one short iperf3 run
across a bridge lab (root)."""

from __future__ import annotations

import json

import pytest

from grouptun.lab import Lab, list_ns
from grouptun.lab.traffic import iperf3, parse_iperf3, parse_ping, tcp_listening

PING_OK = """PING 10.77.0.2 (10.77.0.2) 56(84) bytes of data.

--- 10.77.0.2 ping statistics ---
3 packets transmitted, 3 received, 0% packet loss, time 402ms
rtt min/avg/max/mdev = 0.310/0.402/0.512/0.081 ms
"""
PING_LOSS = """--- fd77::3 ping statistics ---
3 packets transmitted, 1 received, 66.6667% packet loss, time 2040ms
rtt min/avg/max/mdev = 0.5/0.5/0.5/0.0 ms
"""


def test_parse_ping():
    ok = parse_ping("a", "10.77.0.2", PING_OK)
    assert (ok.sent, ok.received, ok.rtt_avg_ms, ok.ok) == (3, 3, 0.402, True)
    lossy = parse_ping("a", "fd77::3", PING_LOSS)
    assert (lossy.sent, lossy.received, lossy.ok) == (3, 1, False)
    nothing = parse_ping("a", "x", "connect: Network is unreachable\n")
    assert (nothing.sent, nothing.ok) == (0, False)


def _interval(start, nbytes):
    return {"streams": [], "sum": {"start": start, "end": start + 0.2, "bytes": nbytes,
                                   "bits_per_second": nbytes * 40}}


def test_parse_iperf3_tcp_and_stall():
    data = {"intervals": [_interval(0.0, 1000), _interval(0.2, 0), _interval(0.4, 0),
                          _interval(0.6, 0), _interval(0.8, 500), _interval(1.0, 0)],
            "end": {"sum_sent": {"seconds": 1.2, "bits_per_second": 2e8, "retransmits": 7},
                    "sum_received": {"seconds": 1.2, "bits_per_second": 1.5e8}}}
    result = parse_iperf3(json.dumps(data))
    assert result.ok and result.error is None
    assert result.mbps == 150.0 and result.retransmits == 7
    assert abs(result.longest_stall() - 0.6) < 1e-9


def test_parse_iperf3_error_and_garbage():
    err = parse_iperf3(json.dumps({"start": {}, "intervals": [], "end": {},
                                   "error": "unable to connect to server: Connection refused"}))
    assert not err.ok and "Connection refused" in err.error
    junk = parse_iperf3("iperf3: error - unable to connect")
    assert not junk.ok and "no JSON" in junk.error


def test_parse_iperf3_udp():
    data = {"intervals": [_interval(0.0, 100)],
            "end": {"sum": {"seconds": 1.0, "bits_per_second": 1e6, "lost_percent": 2.5}}}
    result = parse_iperf3(json.dumps(data))
    assert result.ok and result.lost_percent == 2.5 and result.retransmits is None


def test_parse_iperf3_udp_as_iperf3_3_12_writes_it():
    # 3.12 adds sum_sent/sum_received to UDP output; the loss is only in "sum".
    data = {"start": {"test_start": {"protocol": "UDP"}}, "intervals": [_interval(0.0, 100)],
            "end": {"sum": {"seconds": 1.0, "bits_per_second": 1e7, "lost_percent": 40.0},
                    "sum_sent": {"seconds": 1.0, "bits_per_second": 1e7, "lost_percent": 40.0},
                    "sum_received": {"seconds": 1.0, "bits_per_second": 6e6, "lost_percent": 40.0}}}
    result = parse_iperf3(json.dumps(data))
    assert result.ok and result.lost_percent == 40.0
    assert result.sent_bps == 1e7 and result.received_bps == 6e6


@pytest.mark.root
def test_iperf3_one_off_server_listens_for_one_test_only():
    with Lab("labt", hosts=("a", "b")) as lab:
        ns_b = lab.host("b").ns
        assert not tcp_listening(ns_b, 5201)
        result = iperf3(lab, "b", "a", lab.host("b").ipv4, seconds=1, interval=0.5)
        assert result.ok and result.received_bps > 0, result.error
        assert not tcp_listening(ns_b, 5201)      # "-s -1": gone after one test
    assert list_ns("gt-labt-") == []
