"""Sealed data end to end in process: member side (grouptun.apps.sealed) into the provider's rules (provider/sealed.py),
on SQLite and PostgreSQL. The HTTP routes with real signed requests: test_provider_sealed_http.py."""

from __future__ import annotations

import hashlib
import io
import os

import pytest
from sqlalchemy import func, select, update

from grouptun.apps import sealed
from grouptun.core import sealeddata
from grouptun.errors import ConfigError, SealedDataError, UsageError
from provider.archives import parse_own
from provider.errors import Conflict, Forbidden, InvalidInput, NotFound, PayloadTooLarge
from provider.sealed import PART_SIZE, SealedData, SealedLimits, parse_data_id
from provider.tables import sealed as sealed_table
from provider.tables import sealed_parts
from provider_helpers import STORE_KINDS, InProcessSealed, dump, fresh_store, sealed_world


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=STORE_KINDS)
def world(request):
    provider, kems, _ = sealed_world(fresh_store(request.param, request))
    clock = Clock()
    data = SealedData(provider.store, SealedLimits(max_blob=64 * 1024 * 1024, group_quota=96 * 1024 * 1024), clock)
    archive = parse_own(provider.store.archive("lan")[1])
    return provider, kems, data, archive, clock


def seal(world, plain: bytes, sender="alice", to=None, everyone=True, ttl=3600.0, api=None):
    provider, kems, data, archive, _ = world
    recipients = sealed.choose_recipients(archive, sender, to, to is None and everyone, False)
    return sealed.seal_file(api or InProcessSealed(data, "lan", sender), archive, io.BytesIO(plain), len(plain),
                            recipients, ttl)


def unseal(world, name: str, data_id: str) -> bytes:
    provider, kems, data, archive, _ = world
    out = io.BytesIO()
    digest = sealed.unseal(InProcessSealed(data, "lan", name), archive.group_id, name, kems[name], data_id, out)
    assert digest == hashlib.sha256(out.getvalue()).hexdigest()
    return out.getvalue()


def stored(provider) -> tuple[int, int]:
    with provider.store.read() as conn:
        return (conn.execute(select(func.count()).select_from(sealed_table)).scalar_one(),
                conn.execute(select(func.count()).select_from(sealed_parts)).scalar_one())


def test_sealed_to_all_every_member_opens_it_over_several_parts(world):
    plain = os.urandom(2 * PART_SIZE + 12345)
    entry = seal(world, plain)
    assert entry["parts"] == 3 and sorted(entry["recipients"]) == ["alice", "bob", "carol"]
    for name in ("alice", "bob", "carol"):
        assert unseal(world, name, entry["data_id"]) == plain
    assert [e["data_id"] for e in world[2].listing("lan", "carol")] == [entry["data_id"]]



def test_only_listed_recipients_fetch_and_only_the_sender_deletes(world):
    provider, _, data, _, _ = world
    entry = seal(world, b"for bob", to=["bob"])
    assert unseal(world, "bob", entry["data_id"]) == b"for bob"
    with pytest.raises(Forbidden, match="not sealed to you"):
        unseal(world, "carol", entry["data_id"])
    assert data.listing("lan", "carol") == []
    assert [e["data_id"] for e in data.listing("lan", "alice")] == [entry["data_id"]]  # the sender sees it
    with pytest.raises(Forbidden, match="only the member that sealed it"):
        data.delete("lan", "bob", parse_data_id(entry["data_id"]))
    data.delete("lan", "alice", parse_data_id(entry["data_id"]))
    assert stored(provider) == (0, 0)


def test_self_escrow_is_for_the_sender_alone(world):
    provider, kems, data, archive, _ = world
    recipients = sealed.choose_recipients(archive, "alice", None, False, True)
    entry = sealed.seal_file(InProcessSealed(data, "lan", "alice"), archive, io.BytesIO(b"mine"), 4, recipients, 60)
    assert entry["recipients"] == ["alice"] and unseal(world, "alice", entry["data_id"]) == b"mine"


def test_unknown_recipients_are_refused_before_anything_is_stored(world):
    provider, _, data, archive, _ = world
    with pytest.raises(UsageError, match="'mallory' is not a member"):
        sealed.choose_recipients(archive, "alice", ["bob", "mallory"], False, False)
    with pytest.raises(InvalidInput, match="not in group 'lan': mallory"):
        data.reserve("lan", "alice", 100, ["bob", "mallory"], 60)
    assert stored(provider) == (0, 0)


def test_an_oversize_blob_is_413_and_stores_nothing(world):
    provider = world[0]
    with pytest.raises(PayloadTooLarge, match="over this provider's limit of 67108864 bytes per blob "
                                              r"\(sealed_max_blob_bytes\)"):
        seal(world, b"x" * (64 * 1024 * 1024))
    assert stored(provider) == (0, 0)


def test_the_group_quota_is_409_and_stores_nothing_more(world):
    provider = world[0]
    seal(world, os.urandom(50 * 1024 * 1024))
    before = stored(provider)
    with pytest.raises(Conflict, match=r"group quota exceeded: \d+ of 100663296 bytes in use.*sealed_group_quota"):
        seal(world, os.urandom(50 * 1024 * 1024))
    assert stored(provider) == before


def test_a_truncated_part_is_refused_and_the_reservation_goes(world):
    provider, _, data, _, _ = world
    with pytest.raises(InvalidInput, match=r"part 1 must be \d+ bytes, got \d+ \(truncated\?\)"):
        seal(world, os.urandom(PART_SIZE + 100), api=InProcessSealed(data, "lan", "alice", cut_part=1))
    assert stored(provider) == (0, 0)


def test_an_unfinished_upload_is_invisible_and_pruned_after_its_window(world):
    provider, _, data, _, clock = world
    reserved = data.reserve("lan", "alice", 10, ["bob"], 60)
    data_id = parse_data_id(reserved["data_id"])
    with pytest.raises(NotFound):
        data.describe("lan", "bob", data_id)
    with pytest.raises(Conflict, match="upload incomplete: 0 of 1 parts"):
        data.commit("lan", "alice", data_id)
    assert data.listing("lan", "bob") == [] and stored(provider) == (1, 0)
    clock.now += 601
    assert data.prune() == 1 and stored(provider) == (0, 0)


def test_expired_blobs_are_refused_then_pruned_by_the_retention_job(world):
    from provider.app import create_app

    provider, _, data, _, clock = world
    entry = seal(world, b"short-lived", ttl=60)
    provider.clock = clock
    provider.audit_pruner.clock = clock
    create_app(provider)  # registers the sealed-data pruning on the audit pruner's schedule
    clock.now += 61
    with pytest.raises(NotFound):
        data.describe("lan", "bob", parse_data_id(entry["data_id"]))
    assert stored(provider) == (1, 1)
    provider.audit_pruner.maybe_prune()
    assert stored(provider) == (0, 0)


def test_a_data_id_of_another_group_is_unknown_here(world):
    provider, _, data, _, _ = world
    provider.create_group("other", "10.88.0.0/24")
    entry = seal(world, b"lan only")
    data_id = parse_data_id(entry["data_id"])
    for call in (lambda: data.describe("other", "bob", data_id), lambda: data.get_part("other", "bob", data_id, 0),
                 lambda: data.delete("other", "alice", data_id)):
        with pytest.raises(NotFound, match=f"no sealed data {entry['data_id']} in group 'other'"):
            call()
    assert stored(provider) == (1, 1)


def test_a_header_for_other_recipients_than_announced_is_refused(world):
    provider, kems, data, archive, _ = world
    reserved = data.reserve("lan", "alice", 2000, ["bob"], 60)
    data_id = parse_data_id(reserved["data_id"])
    header = sealeddata.Header(archive.group_id, data_id, 16, (("carol", bytes(1168)),)).to_bytes()
    with pytest.raises(InvalidInput, match="other recipients than were announced"):
        data.put_part("lan", "alice", data_id, 0, header + bytes(2000 - len(header)))
    other = sealeddata.Header(bytes(16), data_id, 16, (("bob", bytes(1168)),)).to_bytes()
    with pytest.raises(InvalidInput, match="another group or DATA-ID"):
        data.put_part("lan", "alice", data_id, 0, other + bytes(2000 - len(other)))
    with pytest.raises(InvalidInput, match="does not begin with a sealed-data header"):
        data.put_part("lan", "alice", data_id, 0, bytes(2000))
    assert stored(provider) == (1, 0)


def test_a_tampered_blob_is_refused_with_a_clear_error(world):
    provider = world[0]
    entry = seal(world, os.urandom(PART_SIZE + 5000))
    with provider.store.write() as conn:
        row = conn.execute(select(sealed_parts).where(sealed_parts.c.part == 1)).first()
        flipped = bytes([row.bytes[0] ^ 0x01]) + row.bytes[1:]
        conn.execute(update(sealed_parts).where(sealed_parts.c.part == 1).values(bytes=flipped))
    with pytest.raises(SealedDataError, match="altered, reordered or truncated"):
        unseal(world, "bob", entry["data_id"])


def test_the_database_holds_neither_plaintext_nor_data_key(world):
    provider, kems, data, archive, _ = world
    plain = b"the secret plan: " + os.urandom(3000)
    entry = seal(world, plain)
    first = InProcessSealed(data, "lan", "bob").get_part(entry["data_id"], 0)
    header, _ = sealeddata.parse_header(first)
    key = bytes(sealeddata.unwrap_key(kems["bob"], header, "bob"))  # recovered on a member
    everything = dump(provider.store)
    assert plain[:17].hex() not in everything and plain[100:132].hex() not in everything
    assert key.hex() not in everything


def test_limits_config_names_the_key_at_fault():
    assert SealedLimits.from_config({}) == SealedLimits()
    with pytest.raises(ConfigError, match="sealed_max_blob_bytes"):
        SealedLimits.from_config({"sealed_max_blob_bytes": 0})
    with pytest.raises(ConfigError, match="sealed_group_quota_bytes"):
        SealedLimits.from_config({"sealed_group_quota_bytes": "8G"})


def test_self_escrow_after_re_enrollment_opens_only_with_the_kept_key(world):
    from grouptun.core.jointoken import enroll_message
    from grouptun.core.capsule import KemPrivateKey
    from cryptography.hazmat.primitives.asymmetric import ed25519

    provider, kems, data, archive, _ = world
    recipients = sealed.choose_recipients(archive, "alice", None, False, True)
    entry = sealed.seal_file(InProcessSealed(data, "lan", "alice"), archive, io.BytesIO(b"escrow"), 6, recipients, 600)
    provider.remove_member("lan", "alice")
    signing, new_kem = ed25519.Ed25519PrivateKey.generate(), KemPrivateKey.from_random(os.urandom(96))
    ed, pub, secret = signing.public_key().public_bytes_raw(), new_kem.public_bytes(), provider.invite("lan", "alice", 600)
    provider.enroll(secret, "alice", ed, pub, b"credential", [], signing.sign(enroll_message(secret, "alice", ed, pub,
                                                                                           b"credential", [])))
    api = InProcessSealed(data, "lan", "alice")
    with pytest.raises(SealedDataError, match="does not open with this member's key"):
        sealed.unseal(api, archive.group_id, "alice", new_kem, entry["data_id"], io.BytesIO())
    out = io.BytesIO()
    sealed.unseal(api, archive.group_id, "alice", kems["alice"], entry["data_id"], out)  # the kept key file
    assert out.getvalue() == b"escrow"


def test_an_empty_file_seals_and_opens(world):
    entry = seal(world, b"")
    assert entry["size"] == sealeddata.header_size(entry["recipients"]) + sealeddata.TAG_SIZE
    assert unseal(world, "carol", entry["data_id"]) == b""


@pytest.mark.parametrize("kind", STORE_KINDS)
def test_a_database_from_before_sealed_data_gets_its_tables(kind, request):
    from sqlalchemy import inspect

    from provider.tables import SCHEMA_VERSION

    store = fresh_store(kind, request)
    with store.write() as conn:
        conn.exec_driver_sql("DROP TABLE sealed_parts")
        conn.exec_driver_sql("DROP TABLE sealed")
        conn.exec_driver_sql("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    store.check_schema()
    with store.read() as conn:
        assert {"sealed", "sealed_parts"} <= set(inspect(conn).get_table_names())
        assert conn.exec_driver_sql("SELECT value FROM meta WHERE key = 'schema_version'").scalar() == str(SCHEMA_VERSION)
    provider, kems, _ = sealed_world(store)
    data = SealedData(store, SealedLimits())
    archive = parse_own(store.archive("lan")[1])
    entry = sealed.seal_file(InProcessSealed(data, "lan", "alice"), archive, io.BytesIO(b"after the migration"), 19,
                             sealed.choose_recipients(archive, "alice", ["bob"], False, False), 60)
    out = io.BytesIO()
    sealed.unseal(InProcessSealed(data, "lan", "bob"), archive.group_id, "bob", kems["bob"], entry["data_id"], out)
    assert out.getvalue() == b"after the migration"
    store.close()
