"""Export rules (grouptun/core/exportrules.py): matching, the selector grammar shared with the policy, the archive field."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519, mldsa

from grouptun.core import exportrules as R
from grouptun.core import policy as P
from grouptun.core.archive import Archive, parse_document, sign_archive, verify_archive
from grouptun.core.envelope import ProviderKeys
from grouptun.errors import EpochRejected

RULES = R.from_json({"db-admin": "role=db,site=hel", "web": "role=web", "open": "*"})


def test_a_rule_holds_only_when_every_pair_does_and_names_without_a_rule_stay_open():
    assert RULES.refusal("web", {"role": "web", "site": "ber"}) is None
    assert RULES.refusal("db-admin", {"role": "db", "site": "hel", "tier": "1"}) is None
    why = RULES.refusal("db-admin", {"role": "db", "site": "ber"})
    assert why == ("label 'db-admin' is limited to members with role=db,site=hel (export rule); "
                   "this member's signed attributes: role=db,site=ber")
    assert "attributes: none" in RULES.refusal("web", {})
    assert RULES.refusal("open", {}) is None           # "*": any member
    assert RULES.refusal("backup", {}) is None         # no rule: open, as without rules
    assert RULES.refusal("Web", {"role": "db"}) is None  # names are exact (case matters, as in the label)
    assert R.ExportRules().refusal("web", {}) is None


def test_the_selector_is_the_policy_selector():
    assert R.parse_rule("web", "site=hel,role=db") == ("web", P.parse_selector("role=db,site=hel"))
    assert P.parse_rule("role=db,site=hel -> * any allow").source == P.parse_selector("site=hel,role=db")
    assert RULES.to_json() == {"db-admin": "role=db,site=hel", "open": "*", "web": "role=web"}


@pytest.mark.parametrize("name, selector, fault", [
    ("web", "role", "export rule 'web' ('role'): selector: 'role' is not key=value"),
    ("web", "Role=db", "key 'Role' must match"),
    ("web", "role=db,role=web", "key 'role' given twice"),
    ("web", "", "is not key=value"),
    ("has space", "role=db", "export rule 'has space': the label must be 1..64 characters"),
    ("x" * 65, "role=db", "the label must be"),
    ("web", 5, "the selector is not a string"),
])
def test_a_bad_rule_is_a_value_error_naming_it(name, selector, fault):
    with pytest.raises(ValueError) as info:
        R.parse_rule(name, selector)
    assert fault in str(info.value)


def _signed(rules) -> tuple[bytes, ProviderKeys]:
    ed, ml = ed25519.Ed25519PrivateKey.generate(), mldsa.MLDSA65PrivateKey.generate()
    keys = ProviderKeys(ed.public_key().public_bytes_raw(), ml.public_key().public_bytes_raw())
    archive = Archive(bytes(16), "lan", 5, None, (), "10.77.0.0/24", None, 1420, 0.0, export_rules=rules)
    return sign_archive(archive, ed, ml), keys


def test_the_archive_carries_the_rules_under_its_signature_and_absent_means_none():
    signed, keys = _signed(RULES)
    assert verify_archive(signed, keys).export_rules == RULES
    assert b'\\"export_rules\\":{' in signed
    for none in (None, R.ExportRules()):
        signed_none, keys_none = _signed(none)
        assert b"export_rules" not in signed_none and verify_archive(signed_none, keys_none).export_rules is None
    with pytest.raises(EpochRejected) as info:
        verify_archive(signed.replace(b"site=hel", b"site=ber"), keys)
    assert info.value.step == "signature"


@pytest.mark.parametrize("obj, fault", [
    (["web"], "not an object"),
    ({"web": "site=hel,role=db"}, "not the canonical selector"),
    ({"web": "role"}, "export rule 'web' ('role')"),
    ({"a b": "*"}, "the label must be"),
    ({f"l{n}": "*" for n in range(R.MAX_RULES + 1)}, "more than 256 rules"),
])
def test_an_archive_with_bad_rules_is_refused_at_the_format_step(obj, fault):
    document = Archive(bytes(16), "lan", 5, None, (), "10.77.0.0/24", None, 1420, 0.0).to_json()
    with pytest.raises(EpochRejected) as info:
        parse_document({**document, "export_rules": obj})
    assert info.value.step == "format" and fault in str(info.value)
