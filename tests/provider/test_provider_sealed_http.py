"""Sealed data over the real HTTPS server (both backends): signed part uploads through the guard,
the limits' status codes and reasons, and a removed member refused."""

from __future__ import annotations

import hashlib
import io
import os

import pytest

from grouptun.apps import sealed
from grouptun.core import sealeddata
from grouptun.core.archive import verify_archive
from grouptun.core.envelope import ProviderKeys
from grouptun.errors import ProviderError, ProviderRefused
from provider.sealed import PART_SIZE
from provider_helpers import TestMember, admin


@pytest.fixture(scope="module")
def members(provider_env):
    out = {}
    for name in ("sa", "sb", "sc"):
        out[name] = TestMember(name)
        out[name].enroll(provider_env.invite(name))
    return out


def archive_of(provider_env, member: TestMember):
    return verify_archive(member.client().archive(), ProviderKeys.from_json(provider_env.config["provider_keys"]))


def seal(provider_env, member: TestMember, plain: bytes, to=None):
    archive = archive_of(provider_env, member)
    recipients = sealed.choose_recipients(archive, member.name, to, to is None, False)
    return sealed.seal_file(sealed.HttpSealed(member.client()), archive, io.BytesIO(plain), len(plain), recipients,
                            3600)


def unseal(provider_env, member: TestMember, data_id: str) -> bytes:
    out = io.BytesIO()
    archive = archive_of(provider_env, member)
    sealed.unseal(sealed.HttpSealed(member.client()), archive.group_id, member.name, member.kem, data_id, out)
    return out.getvalue()


def test_a_multi_part_blob_goes_up_and_down_signed(provider_env, members):
    plain = os.urandom(PART_SIZE + 777)
    entry = seal(provider_env, members["sa"], plain)
    got = unseal(provider_env, members["sb"], entry["data_id"])
    assert hashlib.sha256(got).digest() == hashlib.sha256(plain).digest()
    listed = sealed.HttpSealed(members["sc"].client()).listing()
    assert entry["data_id"] in [e["data_id"] for e in listed]


def test_limits_answer_413_and_reasons(provider_env, members):
    api = sealed.HttpSealed(members["sa"].client())
    with pytest.raises(ProviderRefused) as big:
        api.reserve(3 * 1024**3, ["sb"], 3600)
    assert big.value.status == 413 and "sealed_max_blob_bytes" in big.value.reason
    reserved = api.reserve(PART_SIZE + 10, ["sb"], 3600)
    with pytest.raises(ProviderRefused) as part:
        api.put_part(reserved["data_id"], 0, bytes(PART_SIZE + 2048))
    assert part.value.status == 413
    with pytest.raises(ProviderRefused) as short:
        api.put_part(reserved["data_id"], 1, bytes(9))
    assert (short.value.status, short.value.reason) == (400, "part 1 must be 10 bytes, got 9 (truncated?)")
    api.delete(reserved["data_id"])


def test_a_data_id_that_is_not_one_and_one_of_nobody(provider_env, members):
    api = sealed.HttpSealed(members["sa"].client())
    with pytest.raises(ProviderRefused) as bad:
        api.describe("not-hex")
    assert bad.value.status == 422
    with pytest.raises(ProviderRefused) as unknown:
        api.describe("00" * 16)
    assert unknown.value.status == 404


def test_a_removed_member_is_refused(provider_env, members):
    entry = seal(provider_env, members["sa"], b"before the removal")
    api = sealed.HttpSealed(members["sc"].client())
    assert len(api.get_part(entry["data_id"], 0)) > 0  # a recipient while a member
    admin(provider_env.state, "member", "remove", "lan", "sc")
    for call in (lambda: api.get_part(entry["data_id"], 0), lambda: api.describe(entry["data_id"]), api.listing):
        with pytest.raises(ProviderRefused) as refused:
            call()
        assert refused.value.status == 410 and "removed" in str(refused.value)  # the provider tells a removed member (issue 17)
    assert unseal(provider_env, members["sb"], entry["data_id"]) == b"before the removal"


def test_a_part_request_cut_off_mid_body_stores_nothing(provider_env, members):
    from grouptun.control.reqsign import sign_headers
    from provider_helpers import tls_socket

    member = members["sa"]
    api = sealed.HttpSealed(member.client())
    archive = archive_of(provider_env, member)

    def signed_part(data_id: str) -> tuple[bytes, bytes]:
        path = f"/v1/groups/lan/sealed/{data_id}/parts/0"
        header = sealeddata.Header(archive.group_id, bytes.fromhex(data_id), 16, (("sb", bytes(1168)),)).to_bytes()
        body = header + os.urandom(PART_SIZE - len(header))
        headers = {"Content-Type": "application/octet-stream"}
        sign_headers("PUT", provider_env.url + path, headers, body, member.name, member.ed)
        return (f"PUT {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(body)}\r\n"
                + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n").encode(), body

    whole = api.reserve(PART_SIZE, ["sb"], 3600)["data_id"]  # the same request, sent whole, is stored
    head, body = signed_part(whole)
    with tls_socket(provider_env.port) as sock:
        sock.sendall(head + body)
        assert sock.recv(64).startswith(b"HTTP/1.1 204")
    api.commit(whole)
    api.delete(whole)
    reserved = api.reserve(PART_SIZE, ["sb"], 3600)
    head, body = signed_part(reserved["data_id"])
    with tls_socket(provider_env.port) as sock:
        sock.sendall(head + body[:PART_SIZE // 2])  # then the connection goes: a truncated upload
    with pytest.raises(ProviderRefused) as incomplete:
        api.commit(reserved["data_id"])
    assert (incomplete.value.status, incomplete.value.reason) == (409, "upload incomplete: 0 of 1 parts stored")
    assert provider_env.rows("SELECT count(*) FROM sealed_parts p JOIN sealed s ON s.id = p.blob "
                             "WHERE s.data_id = :d", d=bytes.fromhex(reserved["data_id"])) == [(0,)]
    api.delete(reserved["data_id"])
    assert provider_env.rows("SELECT count(*) FROM sealed WHERE data_id = :d",
                             d=bytes.fromhex(reserved["data_id"])) == [(0,)]


def test_sealing_from_the_compact_archive_fetches_each_key_and_checks_it(provider_env, members):
    """PROTOCOL.md 2.2 over the real server: the compact archive names keys by digest; GET .../members/NAME/kem
    gives the key, used only when it matches; a member not in the group is a 404."""
    keys = ProviderKeys.from_json(provider_env.config["provider_keys"])
    client = members["sa"].client()
    compact = verify_archive(client.archive(compact=True), keys, compact_ok=True)
    assert compact.compact and compact.member("sb").kem_public is None
    recipients = sealed.choose_recipients(compact, "sa", ["sb"], False, False,
                                          lambda names: {n: client.kem_public(n) for n in names})
    assert recipients[0].kem_public == members["sb"].kem.public_bytes()
    entry = sealed.seal_file(sealed.HttpSealed(client), compact, io.BytesIO(b"slim"), 4, recipients, 3600)
    assert unseal(provider_env, members["sb"], entry["data_id"]) == b"slim"
    with pytest.raises(ProviderError, match="not the one signed archive"):  # a key that is not the signed one
        sealed.choose_recipients(compact, "sa", ["sb"], False, False,
                                 lambda names: {n: client.kem_public("sa") for n in names})
    with pytest.raises(ProviderRefused) as missing:
        client.kem_public("nobody")
    assert missing.value.status == 404
