"""Shared test configuration.

Tests marked ``root`` need root, ``ip netns`` and ``/dev/net/tun``; they are
skipped, with the reason, where those are missing.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# The project's own copy of the published vectors (see tests/vectors/README.md).
VECTORS_DIR = REPO / "tests" / "vectors"


def _root_missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    if not os.path.exists("/dev/net/tun"):
        return "needs /dev/net/tun"
    if shutil.which("ip") is None:
        return "needs iproute2"
    return None


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the groups
def pytest_collection_modifyitems(config, items):
    _group_for_workers(config, items)
    reason = _root_missing()
    if reason is None:
        return
    skip = pytest.mark.skip(reason=reason)
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)


def _group_for_workers(config, items) -> None:
    """Under pytest-xdist (scripts/test runs with ``-n`` and ``--dist loadgroup``), every root test
    runs on one worker, one after another: they share the host's TUN, namespaces and CPU-bound
    iperf3 runs, and their timing bounds assume no second lab beside them. Every other test stays
    with the rest of its file, as without workers: module fixtures are set up once, and tests that
    read what the file's earlier tests left (a module's provider and its audit log) see it."""
    if not config.pluginmanager.hasplugin("xdist"):
        return
    for item in items:
        group = "lab" if "root" in item.keywords else item.nodeid.split("::", 1)[0]
        item.add_marker(pytest.mark.xdist_group(group))


@pytest.fixture(scope="session")
def vectors_dir() -> Path:
    if not VECTORS_DIR.is_dir():
        pytest.fail(f"protocol vectors not found at {VECTORS_DIR} (they are part of the repository)")
    return VECTORS_DIR
