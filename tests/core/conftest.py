"""Fixtures of the core tests (builders live in builders.py)."""

from __future__ import annotations

import pytest

from grouptun.core.session import Session

from .builders import NAMES, FakeNet, material


@pytest.fixture
def group():
    """Three sessions with epoch 1 installed at t=0, and a FakeNet joining them."""
    def build(suite: int = 1, names=NAMES, **extra):
        sessions = {}
        for name in names:
            session = Session(name, keepalive_interval=10.0)
            session.install_epoch(material(name, 1, suite, names, **extra), 0.0)
            sessions[name] = session
        return sessions, FakeNet(sessions)
    return build
