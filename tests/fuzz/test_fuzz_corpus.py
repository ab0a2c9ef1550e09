"""Every fuzz target replays its committed corpus, and every recorded crash stays fixed.

The targets (tests/fuzz/fuzz_*.py) are run by atheris in ``scripts/fuzz``; here each committed
input goes through the same ``test_one_input`` once, so the suite notices a target that no longer
runs and a crash that comes back. Crash files of defects still open are strict xfails naming the
defect: when its fix lands they pass, and the entry must go.
"""

from __future__ import annotations

import warnings

import pytest

from fuzz.harness import CORPUS, CRASHES, TARGETS, inputs, load

OPEN: dict[str, str] = {}  # crash file -> the open defect it reproduces (none open now)


@pytest.fixture(autouse=True)
def _quiet_testclient():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*httpx.*")
        yield


@pytest.mark.parametrize("name", TARGETS)
def test_target_replays_its_corpus(name):
    target = load(name)
    files = sorted((CORPUS / name).glob("*"))
    assert files, f"no committed corpus for {name} (scripts/fuzz --make-corpus {name})"
    for path in files:
        target.test_one_input(path.read_bytes())


def _crash_params():
    params = []
    for name in TARGETS:
        for path in inputs(name):
            if path.parent != CRASHES:
                continue
            marks = [pytest.mark.xfail(reason=OPEN[path.name], strict=True)] if path.name in OPEN else []
            params.append(pytest.param(name, path, id=path.name, marks=marks))
    return params


@pytest.mark.parametrize(("name", "path"), _crash_params())
def test_recorded_crash_stays_fixed(name, path):
    load(name).test_one_input(path.read_bytes())


def test_every_crash_file_belongs_to_a_target():
    stray = [p.name for p in CRASHES.glob("*") if p.name.split("-")[0] not in TARGETS and p.name != ".gitkeep"]
    assert stray == []
