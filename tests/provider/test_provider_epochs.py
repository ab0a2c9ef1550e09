"""Epoch logic with in-memory fakes: store on sqlite :memory:, fake clock, recorded randomness."""

from __future__ import annotations

import asyncio
import json
import os
import random

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from grouptun.core import keys
from grouptun.core.archive import verify_archive
from grouptun.core.archivemember import instance_of
from grouptun.core.jointoken import enroll_message
from grouptun.core.capsule import KemPrivateKey, capsule_info, open_sealed, salt_info
from provider import admin_ops
from provider.epochs import (EPOCH_BURST, EPOCH_RATE, Recipient, Thresholds, build_epoch, next_epoch_number,
                             permutation)
from provider.errors import Conflict, Forbidden, InvalidInput, NotEnoughMembers, NotFound
from provider.archives import parse_own
from provider.backup import after_restore
from provider.hub import StartBatcher
from provider.keys import Signer
from provider.service import MAX_PENDING_STARTS, PENDING_START_TTL, Provider
from provider.store import Store, audit_rows
from provider.tables import members
from provider_helpers import STORE_KINDS, fresh_store
from provider_helpers import dump as dump_rows

SIGNER = Signer.generate()
T0 = 1_795_400_000.0


class FakeClock:
    def __init__(self, t: float = T0) -> None:
        self.t = t
        self.slept = 0.0

    def __call__(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.slept += seconds
        self.t += seconds


class RecordingRandom:
    """Deterministic randomness that remembers every 32-byte draw (SS and salt are among them)."""

    def __init__(self, seed: int = 1) -> None:
        self.rng = random.Random(seed)
        self.secrets: list[bytes] = []

    def __call__(self, n: int) -> bytes:
        out = self.rng.randbytes(n)
        if n == 32:
            self.secrets.append(out)
        return out


# --- numbering -----------------------------------------------------------------------

_EVENT = st.one_of(st.tuples(st.just("issue"), st.floats(0, 3)), st.tuples(st.just("restart"), st.floats(0, 3)),
                   st.tuples(st.just("backup"), st.just(0.0)), st.tuples(st.just("restore"), st.floats(0, 3)))


@given(st.lists(_EVENT, max_size=60))
@settings(max_examples=200, deadline=None)
def test_epoch_numbers_never_reissued_across_restarts_and_restores(events):
    created = now = T0
    hw, backup, started = 0, 0, now
    issued: list[int] = []
    for kind, dt in events:
        now += dt
        if kind == "backup":
            backup = hw
        elif kind in ("restart", "restore"):
            hw = backup if kind == "restore" else hw
            now += 0.001  # a process starts strictly after everything before it
            started = now
        else:
            number, wait = next_epoch_number(hw, created, now, started)
            if wait:
                now += wait
                number, wait = next_epoch_number(hw, created, now, started)
            assert wait == 0.0
            assert number not in issued
            issued.append(number)
            hw = number


def test_first_epoch_of_a_process_waits_at_most_one_tick_and_bursts_are_bounded():
    created, now = T0, T0 + 3600
    number, wait = next_epoch_number(0, created, now, started := now)
    assert 0 < wait <= 1 / EPOCH_RATE
    now += 600  # idle: a burst of EPOCH_BURST is available, then pacing
    waits = []
    hw = number
    for _ in range(EPOCH_BURST + 3):
        number, wait = next_epoch_number(hw, created, now, started)
        waits.append(wait)
        now += wait
        hw = number
    assert waits[:EPOCH_BURST] == [0.0] * EPOCH_BURST and all(w > 0 for w in waits[EPOCH_BURST + 1:])


def test_epoch_counter_exhaustion_is_a_conflict():
    with pytest.raises(Conflict):
        next_epoch_number(2**32 - 1, T0, T0 + 10, T0)


@given(st.integers(1, 300), st.integers(0, 2**32))
@settings(max_examples=100, deadline=None)
def test_permutation_is_a_permutation(n, seed):
    assert sorted(permutation(n, random.Random(seed).randbytes)) == list(range(n))


# --- building an epoch -------------------------------------------------------------------


def _kem() -> KemPrivateKey:
    return KemPrivateKey.from_random(os.urandom(96))


@pytest.mark.parametrize("suite", [1, 2])
def test_build_epoch_seals_for_every_member_and_schedule_reproduces(suite):
    members = {name: _kem() for name in ("a", "b", "c")}
    rand = RecordingRandom()
    group_id = b"\x11" * 16
    sealed = build_epoch(group_id, 42, [Recipient(n, k.public_bytes()) for n, k in members.items()],
                         Thresholds(suite, 600, 2**27), [b"\x00" * 32], T0, rand)
    assert sorted(sealed.indices.values()) == [0, 1, 2]
    assert sealed.info.group_size == 3 and sealed.info.challenges == (b"\x00" * 32,) and 0 <= sealed.info.nonce_start < 2**32
    ss_drawn, salt_drawn = rand.secrets
    for name, index, capsule, sealed_salt in sealed.sealed:
        ss = open_sealed(members[name], capsule_info(group_id, 42, name), capsule)
        salt = open_sealed(members[name], salt_info(group_id, 42, name), sealed_salt)
        assert (bytes(ss), bytes(salt), index) == (ss_drawn, salt_drawn, sealed.indices[name])
        assert keys.data_id(ss) == sealed.info.data_id
        assert keys.EpochKeys(suite, group_id, 42, ss, salt).key_check() == sealed.info.key_check
    with pytest.raises(Exception):  # a capsule is bound to its member and epoch
        open_sealed(members["a"], capsule_info(group_id, 43, "a"), sealed.sealed[0][2])


def test_build_epoch_holds_ss_and_salt_in_locked_memory_and_gives_every_buffer_back():
    from grouptun.secmem import SecretArena

    arena = SecretArena()
    held = []  # high-water mark of buffers out, read from the arena while sealing

    class Watched:
        def alloc(self, size):
            buffer = arena.alloc(size)
            held.append(arena.status()["slots_in_use"])
            return buffer

        def free(self, buffer):
            arena.free(buffer)

    members = {name: _kem() for name in ("a", "b")}
    rand = RecordingRandom()
    sealed = build_epoch(b"\x11" * 16, 7, [Recipient(n, k.public_bytes()) for n, k in members.items()],
                         Thresholds(1, 600, 2**27), [], T0, rand, Watched())
    assert held and max(held) >= 2  # SS and salt (then PRK and nonce_common for key_check) were arena slots
    assert arena.status()["slots_in_use"] == 0 and arena.status()["regions"] == 0  # all zeroed and unmapped
    name, _index, capsule, _salt = sealed.sealed[0]
    assert bytes(open_sealed(members[name], capsule_info(b"\x11" * 16, 7, name), capsule)) == rand.secrets[0]
    arena.close()


# --- the service over an in-memory store ----------------------------------------------------


class Fixture:
    def __init__(self, store: Store | None = None) -> None:
        self.clock = FakeClock()
        self.rand = RecordingRandom()
        self.store = store or fresh_store("sqlite", None)
        self.provider = Provider(self.store, lambda: SIGNER, clock=self.clock, sleep=self.clock.sleep,
                                 rand=self.rand)
        self.provider.create_group("lan", "10.77.0.0/29", "fd77::/64", rekey_after_seconds=60,
                                   rekey_after_packets=5000)
        self.kems: dict[str, KemPrivateKey] = {}

    def enroll(self, name: str, credential: bytes = b"credential!", **kw) -> dict:
        secret = kw.pop("secret", None) or self.provider.invite("lan", name, 3600)
        self.kems[name] = kem = _kem()
        key = ed25519.Ed25519PrivateKey.generate()
        ed = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        name = kw.pop("as_name", name)
        endpoints = ["192.0.2.1:5000"]
        proof = kw.pop("proof", None) or key.sign(enroll_message(secret, name, ed, kem.public_bytes(), credential,
                                                                 endpoints))
        return self.provider.enroll(secret, name, ed, kem.public_bytes(), credential, endpoints, proof)

    def archive(self):
        return verify_archive(self.store.archive("lan")[1], SIGNER.public)

    def audit(self) -> list:
        with self.store.read() as conn:
            return audit_rows(conn)


@pytest.fixture(params=STORE_KINDS)
def fx(request) -> Fixture:
    """The service over each store kind."""
    fixture = Fixture(fresh_store(request.param, request))
    yield fixture
    fixture.store.close()


def test_enroll_remove_and_capsules_follow_membership(fx):
    for name in ("alice", "bob", "carol"):
        answer = fx.enroll(name)
    archive = fx.archive()
    assert answer["index"] == archive.member("carol").index
    assert [m.addresses for m in sorted(archive.members, key=lambda m: m.name)] == [
        ("10.77.0.1/29", "fd77::1/64"), ("10.77.0.2/29", "fd77::2/64"), ("10.77.0.3/29", "fd77::3/64")]
    before = archive.epoch.epoch
    opened = fx.provider.remove_member("lan", "bob")
    after = fx.archive()
    assert opened.epoch == after.epoch.epoch > before and after.member("bob") is None
    assert sorted(m.index for m in after.members) == [0, 1]
    with pytest.raises(NotFound):
        fx.provider.capsule("lan", "bob", after.epoch.epoch)
    with pytest.raises(NotFound):
        fx.provider.capsule("lan", "bob", before)  # its old capsules are gone too
    assert fx.provider.member_key("lan", "bob") is None
    ss = open_sealed(fx.kems["alice"], capsule_info(after.group_id, after.epoch.epoch, "alice"),
                     fx.provider.capsule("lan", "alice", after.epoch.epoch))
    assert keys.data_id(ss) == after.epoch.data_id
    fx.enroll("dave")  # bob's address is free again
    assert fx.archive().member("dave").addresses[0] == "10.77.0.2/29"


def test_address_range_full_is_a_conflict_and_changes_nothing(fx):
    for i in range(6):  # /29 has 6 hosts
        fx.enroll(f"m{i}")
    version = fx.store.archive("lan")[0]
    with pytest.raises(Conflict, match="full"):
        fx.enroll("m6")
    assert fx.store.archive("lan")[0] == version


def test_tokens_are_one_time_expire_and_bind_the_name(fx):
    secret = fx.provider.invite("lan", "alice", 3600)
    fx.enroll("alice", secret=secret)
    with pytest.raises(Forbidden, match="used or expired"):
        fx.enroll("alice", secret=secret)
    late = fx.provider.invite("lan", "bob", 60)
    fx.clock.t += 61
    with pytest.raises(Forbidden, match="used or expired"):
        fx.enroll("bob", secret=late)
    other = fx.provider.invite("lan", "carol", 3600)
    with pytest.raises(Forbidden, match="does not match"):
        fx.enroll("carol", secret=other, as_name="mallory")
    with pytest.raises(Forbidden):
        fx.enroll("x", secret="A" * 43)
    refusals = [json.loads(r.detail)["reason"] for r in fx.audit() if r.action == "refused"]
    assert len(refusals) == 4


def test_salt_needs_the_credential(fx):
    fx.enroll("alice", credential=b"right credential")
    fx.enroll("bob")
    epoch = fx.archive().epoch.epoch
    assert len(fx.provider.salt("lan", "alice", epoch, b"right credential")) == 1168
    for wrong in (b"wrong credential", b"", b"x" * 2000):
        with pytest.raises(Forbidden, match="wrong credential"):
            fx.provider.salt("lan", "alice", epoch, wrong)
    with pytest.raises(InvalidInput):
        fx.enroll("carol", credential=b"short")


def test_thresholds_time_packets_member_rekey(fx):
    fx.enroll("alice")
    fx.enroll("bob")
    epoch = fx.archive().epoch.epoch
    assert fx.provider.due_for_time_rekey() == []
    fx.clock.t += 61
    assert fx.provider.due_for_time_rekey() == ["lan"]
    fx.provider.open_epoch("lan", "time", "provider")
    assert fx.provider.due_for_time_rekey() == []
    current = fx.archive().epoch.epoch
    assert current > epoch
    assert not fx.provider.report("lan", "alice", ["192.0.2.1:5000"], {epoch: 10**6})  # old epoch: ignored
    assert not fx.provider.report("lan", "alice", ["192.0.2.1:5000"], {current: 4999})
    assert fx.provider.report("lan", "alice", ["192.0.2.1:5000"], {current: 5000})
    assert fx.archive().epoch.epoch > current
    assert not fx.provider.member_rekey("lan", "bob", "auth-failures")  # epoch brand new: coalesced
    fx.clock.t += 10
    assert fx.provider.member_rekey("lan", "bob", "auth-failures")
    reasons = [json.loads(r.detail)["reason"] for r in fx.audit() if r.action == "epoch"]
    assert reasons == ["enroll", "time", "packets", "member:auth-failures"]  # one member: no epoch


def test_endpoint_report_resigns_without_new_epoch(fx):
    fx.enroll("alice")
    before = fx.archive()
    fx.provider.report("lan", "alice", ["[2001:db8::1]:5000", "192.0.2.9:5000"], {})
    after = fx.archive()
    assert after.version > before.version and after.epoch == before.epoch
    assert after.member("alice").endpoints == ("[2001:db8::1]:5000", "192.0.2.9:5000")
    fx.provider.report("lan", "alice", ["[2001:db8::1]:5000", "192.0.2.9:5000"], {})
    assert fx.archive().version == after.version  # unchanged endpoints: no new version
    with pytest.raises(InvalidInput):
        fx.provider.report("lan", "alice", ["nonsense"], {})


def _stored_hash(fx, name: str) -> str:
    with fx.store.read() as conn:
        return conn.execute(select(members.c.credential_hash).where(members.c.name == name)).scalar()


def test_a_migration_replaces_the_credential_only_once_it_checks(fx):
    from provider.members import credential_matches  # noqa: PLC0415

    fx.enroll("alice", credential=b"old credential")  # an old member: the provider hashed the credential itself
    fx.enroll("bob")
    epoch = fx.archive().epoch.epoch
    new, other = os.urandom(32), os.urandom(32)
    before = _stored_hash(fx, "alice")
    for wrong in (b"wrong credential", b""):
        with pytest.raises(Forbidden, match="wrong credential"):
            fx.provider.salt("lan", "alice", epoch, wrong, new)
    with pytest.raises(NotFound):
        fx.provider.salt("lan", "alice", epoch + 10_000, b"old credential", new)
    with pytest.raises(InvalidInput):
        fx.provider.salt("lan", "alice", epoch, b"old credential", b"short")
    assert _stored_hash(fx, "alice") == before  # refusals changed nothing

    assert len(fx.provider.salt("lan", "alice", epoch, b"old credential", new)) == 1168
    after = _stored_hash(fx, "alice")
    assert credential_matches(new, after) and not credential_matches(b"old credential", after)
    with pytest.raises(Forbidden):
        fx.provider.salt("lan", "alice", epoch, b"old credential")
    assert len(fx.provider.salt("lan", "alice", epoch, new)) == 1168
    # the member crashed before it renamed its keystore: the same registration again succeeds, unchanged
    assert len(fx.provider.salt("lan", "alice", epoch, b"old credential", new)) == 1168
    assert _stored_hash(fx, "alice") == after
    with pytest.raises(Forbidden):  # another authenticator would need the old credential, which is gone
        fx.provider.salt("lan", "alice", epoch, b"old credential", other)
    assert _stored_hash(fx, "alice") == after
    moved = [r for r in fx.audit() if r.action == "credential-migrate"]
    assert len(moved) == 1 and new.hex() not in moved[0].detail and "old credential" not in moved[0].detail


def test_epochs_strictly_increase_and_db_holds_no_plain_secret(fx):
    for name in ("alice", "bob"):
        fx.enroll(name, credential=b"credential-" + name.encode())
    numbers = [fx.archive().epoch.epoch]
    for challenge in range(5):
        numbers.append(fx.provider.open_epoch("lan", "start", "members", {"alice": bytes([challenge]) * 32}).epoch)
    assert numbers == sorted(set(numbers))
    dump = dump_rows(fx.store).lower()
    assert fx.rand.secrets, "no secret drawn?"
    for secret in fx.rand.secrets:
        assert secret.hex() not in dump
    assert "credential-alice" not in dump and b"credential-alice".hex() not in dump
    for row in fx.audit():
        assert "credential" not in row.detail.lower()


def test_last_member_removed_leaves_no_epoch(fx):
    fx.enroll("alice")
    fx.provider.remove_member("lan", "alice")
    assert fx.store.archive("lan")[1] is None
    assert fx.provider.show_group("lan")["epoch"] is None
    with pytest.raises(Conflict):
        fx.provider.open_epoch("lan", "admin", "admin")


def test_group_validation(fx):
    with pytest.raises(Conflict):
        fx.provider.create_group("lan", "10.0.0.0/24")
    for kwargs in (dict(name="Bad"), dict(cidr="10.0.0.1/24"), dict(cidr6="fd00::/127"), dict(suite="rot13"),
                   dict(rekey_after_seconds=1), dict(rekey_after_packets=2**28)):
        args = dict(name="ok", cidr="10.0.0.0/24") | kwargs
        with pytest.raises(InvalidInput):
            fx.provider.create_group(**args)


def test_epoch_number_skips_the_previous_epochs_wire_value():
    """Numbers jump with the clock: one exactly 2^16 above the previous would collide on the wire."""
    created = T0
    hw = 100
    now = created + (hw + 2**16) / EPOCH_RATE  # the clock floor lands on hw + 2^16
    number, wait = next_epoch_number(hw, created, now, created)
    assert wait == 0.0
    assert number == hw + 2**16 + 1 and number % 2**16 != hw % 2**16


@given(st.integers(1, 2**31), st.floats(0, 2**28, allow_nan=False), st.floats(0, 1000, allow_nan=False))
@settings(max_examples=300, deadline=None)
def test_consecutive_epochs_never_share_a_wire_value(hw, elapsed, since_start):
    created = T0
    now = created + elapsed + since_start
    number, _wait = next_epoch_number(hw, created, now, created + elapsed)
    assert number > hw and number % 2**16 != hw % 2**16


# --- groups below 2 members, pending starts (PROTOCOL.md 1, 4) --------------------------------


def test_one_member_group_has_a_signed_archive_without_epoch(fx):
    answer = fx.enroll("alice")
    archive = fx.archive()
    assert archive.epoch is None and [m.name for m in archive.members] == ["alice"]
    assert answer["index"] == 0 and fx.provider.show_group("lan")["epoch"] is None
    with pytest.raises(NotEnoughMembers):
        fx.provider.open_epoch("lan", "admin", "admin")
    with pytest.raises(NotEnoughMembers):
        fx.provider.member_rekey("lan", "alice", "auth-failures")
    with pytest.raises(NotFound):
        fx.provider.capsule("lan", "alice", 0)
    assert fx.provider.report("lan", "alice", ["192.0.2.9:5000"], {}) is False
    assert fx.archive().epoch is None and fx.archive().member("alice").endpoints == ("192.0.2.9:5000",)


def test_start_below_two_members_is_pending_and_the_first_epoch_lists_it(fx):
    fx.enroll("alice")
    challenge = os.urandom(32)
    assert fx.provider.start("lan", {"alice": challenge}) is None
    assert fx.provider.pending_starts("lan") == {"alice": challenge}
    assert admin_ops.group_show(fx.provider, "lan")["waiting_starts"] == ["alice"]  # what `group show` tells the admin
    assert fx.archive().member("alice").instance is None  # no epoch answered it yet
    fx.enroll("bob")  # the group reaches 2 members: its first epoch answers the waiting start
    archive = fx.archive()
    assert archive.epoch is not None and challenge in archive.epoch.challenges
    assert archive.epoch.group_size == 2 and archive.member("alice").instance == instance_of(challenge)
    assert fx.provider.pending_starts("lan") == {}  # answered: not listed again
    assert admin_ops.group_show(fx.provider, "lan")["waiting_starts"] == []
    fx.clock.t += 10
    opened = fx.provider.start("lan", {"bob": b"\x07" * 32})
    assert opened is not None and challenge not in fx.archive().epoch.challenges
    assert fx.archive().member("alice").instance == instance_of(challenge)  # kept: alice did not start again


def test_pending_starts_keep_the_latest_per_member_are_bounded_and_expire(fx):
    fx.enroll("alice")
    first, second = b"\x01" * 32, b"\x02" * 32
    assert fx.provider.start("lan", {"alice": first}) is None
    assert fx.provider.start("lan", {"alice": second}) is None  # alice started again (or elsewhere)
    assert fx.provider.pending_starts("lan") == {"alice": second}
    fx.enroll("bob")
    archive = fx.archive()
    assert archive.epoch.challenges == (second,) and archive.member("alice").instance == instance_of(second)
    fx.provider.remove_member("lan", "bob")  # back to one member: starts wait again
    many = {f"m{i}": i.to_bytes(32, "big") for i in range(MAX_PENDING_STARTS + 5)}
    for name, challenge in many.items():
        fx.clock.t += 0.001
        assert fx.provider.start("lan", {name: challenge}) is None
    assert list(fx.provider.pending_starts("lan")) == list(many)[5:]  # the oldest are left out
    fx.clock.t += PENDING_START_TTL + 1
    assert fx.provider.pending_starts("lan") == {}


class _NoHub:
    def kick(self) -> None:
        pass


def test_two_starts_of_one_member_in_one_batch_window_get_epochs_of_their_own(fx):
    """PROTOCOL.md 4: a second daemon of alice (a copied config) never shares the first one's epoch."""
    fx.enroll("alice")
    fx.enroll("bob")
    first, bobs, second = b"\x01" * 32, b"\x02" * 32, b"\x03" * 32

    async def three_starts_in_one_window():
        batcher = StartBatcher(fx.provider, _NoHub())
        return await asyncio.gather(batcher.start("lan", "alice", first), batcher.start("lan", "bob", bobs),
                                    batcher.start("lan", "alice", second))

    answer_first, answer_bob, answer_second = (parse_own(opened.archive)
                                               for opened in asyncio.run(three_starts_in_one_window()))
    assert answer_first.epoch.epoch == answer_bob.epoch.epoch  # different members still share a batch
    assert answer_second.epoch.epoch > answer_first.epoch.epoch
    assert set(answer_first.epoch.challenges) == {first, bobs} and answer_second.epoch.challenges == (second,)
    assert answer_first.member("alice").instance == instance_of(first)
    assert answer_first.member("bob").instance == instance_of(bobs)
    latest = fx.archive()
    assert latest.epoch.epoch == answer_second.epoch.epoch
    assert latest.member("alice").instance == instance_of(second)  # the latest start owns alice
    assert latest.member("bob").instance == instance_of(bobs)
    fx.clock.t += 61
    fx.provider.open_epoch("lan", "time", "provider")  # later epochs keep naming the owners
    assert fx.archive().member("alice").instance == instance_of(second) and fx.archive().epoch.challenges == ()


def test_an_epoch_answers_one_start_per_member(fx):
    fx.enroll("alice")
    fx.enroll("bob")
    opened = fx.provider.start("lan", {"alice": b"\x04" * 32})
    archive = parse_own(opened.archive)
    assert archive.epoch.challenges == (b"\x04" * 32,) and archive.member("alice").instance == instance_of(b"\x04" * 32)
    assert archive.member("bob").instance is None  # bob never started


def test_removal_down_to_one_member_leaves_no_epoch(fx):
    fx.enroll("alice")
    fx.enroll("bob")
    epoch = fx.archive().epoch.epoch
    fx.provider.remove_member("lan", "bob")
    archive = fx.archive()
    assert archive.epoch is None and [m.name for m in archive.members] == ["alice"]
    with pytest.raises(NotFound):
        fx.provider.capsule("lan", "alice", epoch)  # the old epoch's secrets are gone
    assert fx.provider.due_for_time_rekey() == []


def test_enrollment_needs_proof_of_possession(fx):
    secret = fx.provider.invite("lan", "alice", 3600)
    stranger = ed25519.Ed25519PrivateKey.generate()
    with pytest.raises(Forbidden, match="proof"):
        fx.enroll("alice", secret=secret, proof=stranger.sign(b"anything"))
    bad = bytearray(64)
    with pytest.raises(Forbidden, match="proof"):
        fx.enroll("alice", secret=secret, proof=bytes(bad))
    fx.enroll("alice", secret=secret)  # the token was not consumed by the refused attempts
    assert fx.archive().member("alice") is not None


def test_enrollment_proof_covers_the_kem_key_and_token(fx):
    """A request altered in transit (another KEM key) or replayed with another token does not verify."""
    secret = fx.provider.invite("lan", "alice", 3600)
    key = ed25519.Ed25519PrivateKey.generate()
    ed = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    mine, theirs = _kem().public_bytes(), _kem().public_bytes()
    proof = key.sign(enroll_message(secret, "alice", ed, mine, b"credential!", []))
    with pytest.raises(Forbidden, match="proof"):
        fx.provider.enroll(secret, "alice", ed, theirs, b"credential!", [], proof)
    other = fx.provider.invite("lan", "bob", 3600)
    with pytest.raises(Forbidden, match="proof"):
        fx.provider.enroll(other, "alice", ed, mine, b"credential!", [], proof)
    assert fx.provider.enroll(secret, "alice", ed, mine, b"credential!", [], proof)["member_name"] == "alice"


def test_after_restore_a_long_running_process_never_reissues_an_epoch(fx):
    """A process started before the restore (its own floor is old) still goes on above every number ever issued:
    restore raises the persisted floor (time-based, epochs.restore_floor), with no help from the replaced database."""
    fx.enroll("alice")
    fx.enroll("bob")
    with fx.store.read() as conn:
        backed_up = conn.exec_driver_sql("SELECT epoch_hw FROM groups").scalar()
    issued = []
    for _ in range(20):  # epochs after the backup, as fast as numbering allows
        fx.clock.t += 0.3
        issued.append(fx.provider.open_epoch("lan", "admin", "admin").epoch)
    with fx.store.write() as conn:  # the backup comes back: its high-water mark is the old one
        conn.exec_driver_sql(f"UPDATE groups SET epoch_hw = {backed_up}, current_epoch = {backed_up}")
    opened = after_restore(fx.provider, "backup-file", {})
    assert opened["lan"] > max(issued)
    assert fx.archive().epoch.epoch == opened["lan"]
    assert [r.detail for r in fx.audit() if r.action == "restore"] == ['{"backup": "backup-file", "live_groups": 0}']
