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


def pytest_collection_modifyitems(config, items):
    reason = _root_missing()
    if reason is None:
        return
    skip = pytest.mark.skip(reason=reason)
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def vectors_dir() -> Path:
    if not VECTORS_DIR.is_dir():
        pytest.fail(f"protocol vectors not found at {VECTORS_DIR} (they are part of the repository)")
    return VECTORS_DIR
