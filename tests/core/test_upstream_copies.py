"""The project's spec and vectors follow the shared design they were taken from.

grouptun/core/PROTOCOL.md records the SHA-256 of the upstream PROTOCOL.md it
was written from, and tests/vectors holds the published vector files. When
the shared design sits beside the repository (a directory ``shared`` next to
the repository root), these tests check that nothing upstream moved on; when
it does not (a plain clone), only those comparisons are skipped.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
VECTORS_DIR = REPO / "tests" / "vectors"  # the same place as tests/conftest.py's vectors_dir
UPSTREAM = REPO.parent.joinpath("shared", "design")
SPEC = REPO / "grouptun" / "core" / "PROTOCOL.md"
VECTOR_FILES = ("protocol-v1.json", "capsules-v1.json")
# The project's own vector files: not published, so never compared (tests/vectors/README.md).
PROJECT_FILES = ("exporter-v1.json", "hmac-drbg-cavp.json", "sealed-v1.json", "vouch-v1.json", "compact-v1.json")


def _recorded_sha256() -> str:
    found = re.findall(r"SHA-256 `([0-9a-f]{64})`", SPEC.read_text())
    assert len(found) == 1, f"{SPEC} must record exactly one upstream SHA-256 near its top"
    return found[0]


def _need(path):
    if not path.exists():
        pytest.skip(f"no shared design beside the repository ({path} absent): nothing upstream to compare")


def test_the_spec_records_its_upstream_and_carries_the_late_rules():
    text = SPEC.read_text()
    _recorded_sha256()
    for heading in ("### 3.1 Exporter", "**One running instance per member.**",
                    "plaintext is `u16(j)`", "its destination is one of the receiver's"):
        assert heading in text


def test_the_spec_follows_the_shared_one():
    upstream = UPSTREAM / "PROTOCOL.md"
    _need(upstream)
    actual = hashlib.sha256(upstream.read_bytes()).hexdigest()
    assert actual == _recorded_sha256(), (
        f"the shared spec changed: update grouptun/core/PROTOCOL.md and the recorded hash "
        f"({upstream} is now SHA-256 {actual})")


@pytest.mark.parametrize("name", VECTOR_FILES)
def test_the_vectors_equal_the_published_ones(name):
    published = UPSTREAM / "vectors" / name
    _need(published)
    ours = (VECTORS_DIR / name).read_bytes()
    assert json.loads(ours) == json.loads(published.read_bytes()), (
        f"tests/vectors/{name} differs from {published}: copy the published file over it")
    assert ours == published.read_bytes(), f"tests/vectors/{name}: same JSON as {published}, other bytes"


def test_no_published_vector_file_is_missing_here():
    published = UPSTREAM / "vectors"
    _need(published)
    assert {p.name for p in published.glob("*.json")} <= {p.name for p in VECTORS_DIR.glob("*.json")}


def test_every_vector_file_here_is_a_published_copy_or_the_projects_own():
    here = {p.name for p in VECTORS_DIR.glob("*.json")}
    assert here == set(VECTOR_FILES) | set(PROJECT_FILES)
    assert not set(VECTOR_FILES) & set(PROJECT_FILES)


def test_no_project_file_shadows_a_published_one():
    published = UPSTREAM / "vectors"
    _need(published)
    names = {p.name for p in published.glob("*.json")}
    assert names <= set(VECTOR_FILES), f"newly published vector files: {sorted(names - set(VECTOR_FILES))}"
    assert not names & set(PROJECT_FILES)
