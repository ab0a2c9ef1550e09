"""Crafting attack datagrams (pure part; the live part is in tests/integration)."""

from __future__ import annotations

import pytest

from grouptun.core import wire
from grouptun.lab.attack import AttackReport, craft, grouptun_datagrams
from grouptun.lab.netns import LabError
from grouptun.lab.pcap import Datagram


def _dgram(src, dst, seq, body=b"b" * 40):
    payload = wire.encode(wire.Header(wire.TYPE_DATA, 3, seq)) + body + b"t" * 16
    return Datagram(1.0, src, 51820, dst, 51820, payload, len(payload))


def test_craft_kinds_and_targets():
    captured = [_dgram("10.99.0.2", "10.99.0.3", 100 + 3 * n) for n in range(6)]
    members = {a: a for a in ("10.99.0.2", "10.99.0.3", "10.99.0.4")}
    out = craft(captured, members, group_size=3, random_bytes=lambda n: b"\x55" * n, per_kind=2)
    kinds = [c.kind for c in out]
    assert kinds.count("replayed") == kinds.count("flipped") == kinds.count("forged") == 2
    assert kinds.count("junk") == 3
    replayed = [c for c in out if c.kind == "replayed"]
    assert [c.data for c in replayed] == [d.payload for d in captured[:2]]
    for c, d in zip([c for c in out if c.kind == "flipped"], captured):
        assert c.dst == "10.99.0.4"                    # a member that never saw it
        diff = [i for i in range(len(c.data)) if c.data[i] != d.payload[i]]
        assert len(diff) == 1 and diff[0] >= wire.HEADER_SIZE
        assert bin(c.data[diff[0]] ^ d.payload[diff[0]]).count("1") == 1
    for c, d in zip([c for c in out if c.kind == "forged"], captured):
        h, orig = wire.decode(c.data), wire.decode(d.payload)
        assert (h.sequence - orig.sequence) % 3 == 0 and h.sequence > orig.sequence + 2000
        assert len(c.data) == len(d.payload)
    junk = [c.data for c in out if c.kind == "junk"]
    for data in junk:
        with pytest.raises(Exception):
            wire.decode(data)
    copied = [c for c in out if c.kind == "copied"]
    assert len(copied) == 2
    for c, d in zip(copied, captured):
        assert c.data == d.payload and c.dst == "10.99.0.4"  # unchanged, to a member it was not for
    # after every flipped datagram: those go to the same member with the same (epoch, s)
    assert kinds.index("copied") > max(i for i, k in enumerate(kinds) if k == "flipped")


def test_report_names_every_moved_peer_endpoint():
    drops = {"b": {"not_for_me": 0}}
    held = AttackReport({"copied": 1}, drops, {"b": {"not_for_me": 1}}, {},
                        {"b": {"a": "10.99.0.2:51820"}}, {"b": {"a": "10.99.0.2:51820"}})
    assert held.redirected() == [] and held.delta("not_for_me") == 1
    moved = AttackReport({"copied": 1}, drops, drops, {},
                         {"b": {"a": "10.99.0.2:51820"}}, {"b": {"a": "10.99.0.9:40000"}})
    assert moved.redirected() == ["b: a 10.99.0.2:51820 -> 10.99.0.9:40000"]
    assert "10.99.0.9:40000" in moved.table()


def test_craft_needs_captures_and_filter_keeps_data_only():
    with pytest.raises(LabError, match="no grouptun"):
        craft([], {}, 3, lambda n: b"\0" * n)
    keep = _dgram("10.99.0.2", "10.99.0.3", 5)
    other_port = Datagram(1.0, "10.99.0.2", 1, "10.99.0.3", 53, keep.payload, keep.length)
    cut = Datagram(1.0, "10.99.0.2", 1, "10.99.0.3", 51820, keep.payload[:20], keep.length)
    assert grouptun_datagrams([keep, other_port, cut], 51820) == [keep]
