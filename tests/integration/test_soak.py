"""A 30-second hostile-network soak (scripts/soak-hostile's machinery, shortened): impairment relay,
a rekey, a kill -9 and restart, an attacker replaying and copying m1's datagrams."""

from __future__ import annotations

import pytest

from grouptun.lab import Lab
from grouptun.lab.soak import ATTACKER, MEMBERS, Soak, SoakSpec

pytestmark = [pytest.mark.root, pytest.mark.slow]


@pytest.fixture(scope="module")
def report():
    with Lab("sks", hosts=("p", *MEMBERS, ATTACKER)) as lab:
        result = Soak(lab, SoakSpec(minutes=0.5, rekey_every=15.0)).run()
    print("\n" + result.table())
    return result


def test_soak_did_what_it_claims(report):
    kinds = [event[1] for event in report.events]
    assert kinds.count("kill") == 1 and kinds.count("rekey") >= 1
    assert report.attacker["copied"] > 0 and report.attacker["replayed"] > 0
    assert report.underlay["packets"] > 1000
    assert all(d["packets"] > 0 for d in report.delivered.values())
    for name, flow in report.flows.items():
        assert flow["received"] > flow["sent"] / 2, f"{name}: {flow}"
    assert {"m1#0", "m1#1", "m2#0", "m3#0"} <= set(report.drops)
    assert sum(c.get("replay", 0) for c in report.drops.values()) > 0  # the attacker's replays, counted


def test_no_epoch_sequence_pair_sent_twice(report):
    assert report.underlay["reused"] == 0 and report.underlay["repeated"] == 0, report.underlay


def test_no_replay_reaches_the_application(report):
    assert report.duplicates == 0


def test_no_inner_packet_delivered_to_the_wrong_member(report):
    assert report.wrong_member == 0, report.delivered
    # and the copies do not move m1's endpoint at m2 to the attacker (m2 -> m1 traffic keeps flowing)
    for family in (4, 6):
        flow = report.flows[f"m2->m1 IPv{family}"]
        assert flow["received"] > flow["sent"] / 2, flow
