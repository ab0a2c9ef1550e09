"""Statefile: monotonic per group, survives reopen, atomic replace, corrupt -> refuse."""

from __future__ import annotations

import os
import stat

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from grouptun.control import keystore
from grouptun.errors import EpochRejected, KeystoreError
from grouptun.control.statefile import EpochStateFile

G1, G2 = bytes(16), b"\x01" * 16


def test_empty_then_record_then_reopen(tmp_path):
    path = tmp_path / "epochs.json"
    sf = EpochStateFile(path)
    assert sf.highest(G1) == -1
    sf.record(G1, 5)
    sf.record(G2, 2)
    again = EpochStateFile(path)
    assert again.highest(G1) == 5 and again.highest(G2) == 2
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_refuses_going_back_or_repeating(tmp_path):
    sf = EpochStateFile(tmp_path / "epochs.json")
    sf.record(G1, 7)
    for bad in (7, 3, 0):
        with pytest.raises(EpochRejected) as info:  # the acceptance step it breaks, not a bare ValueError
            sf.record(G1, bad)
        assert info.value.step == "epoch"
    assert EpochStateFile(tmp_path / "epochs.json").highest(G1) == 7
    with pytest.raises(EpochRejected):
        sf.record(G1, 2**32)


def test_corrupt_file_stops_the_daemon(tmp_path):
    path = tmp_path / "epochs.json"
    path.write_text("{not json")
    with pytest.raises(KeystoreError, match="corrupt"):
        EpochStateFile(path)
    path.write_text('{"00": "seven"}')
    with pytest.raises(KeystoreError, match="corrupt"):
        EpochStateFile(path)


def test_failed_write_keeps_old_content_and_state(tmp_path, monkeypatch):
    path = tmp_path / "epochs.json"
    sf = EpochStateFile(path)
    sf.record(G1, 1)
    before = path.read_bytes()

    def crash(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(keystore.os, "fsync", crash)
    with pytest.raises(KeystoreError, match="cannot write"):
        sf.record(G1, 2)
    monkeypatch.undo()
    assert path.read_bytes() == before and sf.highest(G1) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["epochs.json"]  # temp file cleaned up
    sf.record(G1, 2)
    assert EpochStateFile(path).highest(G1) == 2


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(0, 2**32 - 1), max_size=12))
def test_highest_is_the_running_maximum(tmp_path_factory, epochs):
    sf = EpochStateFile(tmp_path_factory.mktemp("sf") / "epochs.json")
    best = -1
    for e in epochs:
        if e > best:
            sf.record(G1, e)
            best = e
        else:
            with pytest.raises(EpochRejected):
                sf.record(G1, e)
        assert sf.highest(G1) == best
