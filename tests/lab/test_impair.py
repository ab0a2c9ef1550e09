"""The user-space lossy link: it really loses, duplicates and delays, and the
bridge is restored afterwards."""

from __future__ import annotations

import pytest

from grouptun.lab import Lab, LabError, links, list_ns, ping
from grouptun.lab.impair import Impairment, impair


def test_impairment_values_are_checked():
    with pytest.raises(LabError, match="loss"):
        Impairment(loss=1.5)
    with pytest.raises(LabError, match="delay"):
        Impairment(delay=-1)


@pytest.mark.root
@pytest.mark.slow
def test_impaired_link_loses_duplicates_and_is_restored():
    with Lab("labi", hosts=("a", "b")) as lab:
        b = lab.host("b").ipv4
        link = impair(lab, "a", loss=0.3, duplicate=0.3, reorder=0.3, delay=0.005, seed=3)
        try:
            lossy = ping(lab, "a", b, count=60, interval=0.01, wait_s=0.5)
        finally:
            counts = link.stop()
        assert counts["frames"] >= 60 and counts["lost"] > 0
        assert counts["duplicated"] > 0 and counts["delayed"] > 0
        assert 0 < lossy.received < lossy.sent
        assert "duplicates" in lossy.output
        assert "gt-labi-aq" not in links(lab.switch_ns)
        clean = ping(lab, "a", lab.host("b").ipv6, count=5, interval=0.05)
        assert clean.ok and "duplicates" not in clean.output
    assert list_ns("gt-labi-") == []
