"""reqsign's pre-check of Signature-Input reads keyid/nonce/created without the library's private API."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from http_message_signatures.signatures import HTTPSignatureHandler

from grouptun.control import reqsign
from grouptun.errors import GrouptunError

KEY = ed25519.Ed25519PrivateKey.generate()
NOW = 1_795_400_000.0
URL = "https://provider:8443/v1/groups/lan/report"


def _signed() -> dict:
    headers: dict = {}
    reqsign.sign_headers("POST", URL, headers, b"{}", "alice", KEY, created=NOW, nonce="n" * 22)
    return {k.lower(): v for k, v in headers.items()}


def test_params_do_not_need_the_libraries_private_parser(monkeypatch):
    headers = _signed()
    # A library release may rename or drop its private helper; the pre-check must not care.
    monkeypatch.delattr(HTTPSignatureHandler, "_parse_signature_dictionary")
    assert reqsign._params(headers) == ("alice", "n" * 22, int(NOW))  # noqa: SLF001


@pytest.mark.parametrize("mangle", [
    lambda v: v + ", " + v,                                    # the label twice
    lambda v: v.replace(";keyid=", ';keyid="mallory";keyid='),  # a parameter twice
    lambda v: v.replace("gt=", "other="),                      # not our label
    lambda v: v.replace(";nonce=", ";x="),                     # no nonce
    lambda v: v.replace("created=", 'created="') + '"',        # created not an integer
    lambda v: v[:-1],                                          # malformed structured field
    lambda v: v + "é",                                         # not ASCII
])
def test_malformed_or_ambiguous_signature_input_is_refused(mangle):
    headers = _signed()
    headers["signature-input"] = mangle(headers["signature-input"])
    with pytest.raises(reqsign.SignatureRefused) as info:
        reqsign._params(headers)  # noqa: SLF001
    assert info.value.reason == "signature missing"


def test_verify_still_round_trips():
    got = reqsign.verify_headers("POST", URL, _signed(), b"{}", lambda kid: KEY.public_key(), NOW)
    assert (got.key_id, got.created) == ("alice", int(NOW))


def test_refusals_are_in_the_package_exception_tree():
    assert issubclass(reqsign.SignatureRefused, GrouptunError)
