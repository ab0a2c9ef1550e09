"""The attribute grammar (grouptun/core/attributes.py) and the archive's optional membership keys."""

from __future__ import annotations

import os

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519, mldsa
from hypothesis import given
from hypothesis import strategies as st

from grouptun.core import attributes as attrs
from grouptun.core.archive import Archive, GroupMetadata, sign_archive, verify_archive
from grouptun.core.archivemember import ArchiveMember
from grouptun.core.envelope import ProviderKeys
from grouptun.errors import EpochRejected

KEYS = st.from_regex(attrs.KEY, fullmatch=True)
VALUES = st.from_regex(attrs.VALUE, fullmatch=True)
MAPPINGS = st.dictionaries(KEYS, VALUES, max_size=attrs.MAX_ATTRIBUTES)


@given(MAPPINGS)
def test_a_printed_mapping_parses_back_to_itself(mapping):
    assert attrs.parse(attrs.render(mapping)) == mapping


@given(MAPPINGS)
def test_the_printed_form_is_canonical(mapping):
    text = attrs.render(mapping)
    assert attrs.render(attrs.parse(text)) == text
    assert attrs.parse(text.split(",") if text else []) == mapping  # repeated --attr options: the same


@pytest.mark.parametrize("text, fault", [
    ("role", "not key=value"),
    ("Role=x", "key 'Role'"),
    ("1role=x", "key '1role'"),
    ("role=", "value of 'role'"),
    ("role=a b", "value of 'role'"),
    ("role=a,role=b", "given twice"),
    ("role=a,", "not key=value"),
    ("role=\u00e9", "value of 'role'"),
    ("k=" + "v" * 65, "value of 'k'"),
    ("k" * 33 + "=v", "key"),
    (",".join(f"k{i}=v" for i in range(17)), "at most 16"),
])
def test_malformed_attributes_are_refused_naming_the_fault(text, fault):
    with pytest.raises(ValueError) as info:
        attrs.parse(text)
    assert fault in str(info.value)


@pytest.mark.parametrize("bad", [None, ["role=x"], {"role": 1}, {1: "x"}])
def test_check_refuses_what_is_not_a_mapping_of_strings(bad):
    with pytest.raises(ValueError):
        attrs.check(bad)


def _signed(**extra):
    ed, ml = ed25519.Ed25519PrivateKey.generate(), mldsa.MLDSA65PrivateKey.generate()
    keys = ProviderKeys(ed.public_key().public_bytes_raw(), ml.public_key().public_bytes_raw())
    member = ArchiveMember("alice", 0, ("10.77.0.2/24",), (), os.urandom(32), os.urandom(1216), None,
                           **extra.pop("member", {}))
    archive = Archive(os.urandom(16), "lan", 1, None, (member,), "10.77.0.0/24", None, 1420, 2e9, **extra)
    return archive, sign_archive(archive, ed, ml), keys


def test_archive_carries_attributes_deadline_and_metadata_signed():
    archive, signed, keys = _signed(member={"attributes": (("role", "db"), ("site", "hel")), "expires_at": 1.8e9},
                                    metadata=GroupMetadata("ab" * 32, 1.9e9, (("org", "acme"),), ("alice", "bob")))
    back = verify_archive(signed, keys)
    assert back == archive
    assert dict(back.member("alice").attributes) == {"role": "db", "site": "hel"}
    assert back.member("alice").expires_at == 1.8e9
    assert back.metadata == GroupMetadata("ab" * 32, 1.9e9, (("org", "acme"),), ("alice", "bob"))


def test_archive_without_the_extensions_has_the_old_shape_and_parses_as_none():
    archive, signed, keys = _signed()
    document = archive.to_json()
    assert "group_metadata" not in document and "attributes" not in document["members"][0]
    assert "expires_at" not in document["members"][0]
    back = verify_archive(signed, keys)
    assert back.metadata is None and back.member("alice").attributes == () and back.member("alice").expires_at is None


def test_a_signed_archive_with_malformed_attributes_is_refused_at_the_format_step():
    archive, _, keys = _signed(member={"attributes": (("Bad", "x"),)})
    ed, ml = ed25519.Ed25519PrivateKey.generate(), mldsa.MLDSA65PrivateKey.generate()
    keys = ProviderKeys(ed.public_key().public_bytes_raw(), ml.public_key().public_bytes_raw())
    with pytest.raises(EpochRejected) as info:
        verify_archive(sign_archive(archive, ed, ml), keys)
    assert info.value.step == "format" and "Bad" in str(info.value)
