"""Opening an epoch: numbering, secrets, capsules, forgetting (PROTOCOL.md 2).

Epoch numbers (never reissued, not even after a restore from backup)::

    floor(t)   = int((t - group.created_at) * EPOCH_RATE)      # 4 per second of wall clock
    process_min = floor(process_started_at) + EPOCH_BURST + 1
    number     = max(epoch_hw + 1, floor(now), process_min)
    number    += 1 if number mod 2^16 == epoch_hw mod 2^16  # wire collision
    and only once number <= floor(now) + EPOCH_BURST (else wait, <= MAX_WAIT)

The wire carries ``epoch mod 2^16`` and a member holds the current and the
previous epoch (PROTOCOL.md 5, 6): since numbers jump with the clock, an
epoch exactly 2^16 (or k * 2^16) above the previous one would share its
wire value, and members would refuse it. Such a number is skipped.

``epoch_hw`` is the persisted high-water mark. Every issued number is at
most ``floor(issue time) + EPOCH_BURST``; a process (server or admin CLI)
started after a restore starts above ``floor(its start) + EPOCH_BURST``, so
above every number issued before it started, whatever the restored
``epoch_hw`` says. ``restore`` (provider/backup.py) also raises every
group's ``epoch_hw`` to :func:`restore_floor` (``floor(now) + EPOCH_BURST``),
so replicas that kept running across the restore go on above every number
issued before it too: the floor is time-based, not reported by members (a
member that is offline could not report, the clock always can). The wire
value of the group's current epoch is skipped as well as ``epoch_hw``'s
(after a restore they differ). Costs: at most 4 epochs per second sustained (bursts of
16), the first epoch of a process waits <= 0.25 s, and u32 numbers last
2^32 / 4 s = 34 years per group. Assumption: the wall clock does not step
back; if it does, we wait at most ``MAX_WAIT`` and then go on from
``epoch_hw + 1`` (safe unless a restore coincides with the step).

``build_epoch`` is pure apart from HPKE's own randomness: secrets come from
the ``rand`` callable (``os.urandom``, i.e. getrandom, in production), are
held in buffers of ``secrets`` (the provider's locked arena,
:mod:`grouptun.secmem`, when it runs as a service) and are overwritten
before it returns. ``rand``'s own ``bytes`` cannot be overwritten.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Callable, Sequence

from grouptun.core import keys
from grouptun.core.archive import ArchiveEpoch
from grouptun.core.capsule import capsule_info, salt_info, seal
from provider.errors import Conflict

EPOCH_RATE = 4
EPOCH_BURST = 16
EPOCH_MAX = 2**32 - 1
MAX_WAIT = 2.0
WIRE_EPOCHS = 2**16  # the header carries epoch mod 2^16
NONCE_START_MAX = 2**32 - 1  # u32: s = nonce_start + i + n*N < 2^32 + 2^16 + 2^28 * 2^16 < 2^64


def clock_floor(created_at: float, t: float) -> int:
    return int(max(0.0, t - created_at) * EPOCH_RATE)


def restore_floor(created_at: float, now: float) -> int:
    """At least every epoch number issued before ``now`` (each was at most floor(its time) + EPOCH_BURST)."""
    return clock_floor(created_at, now) + EPOCH_BURST


def next_epoch_number(hw: int, created_at: float, now: float, process_started_at: float,
                      current: int | None = None) -> tuple[int, float]:
    """(number, seconds to wait before it may be issued). Conflict when u32 is exhausted."""
    floor_now = clock_floor(created_at, now)
    number = max(hw + 1, floor_now, clock_floor(created_at, process_started_at) + EPOCH_BURST + 1)
    held = {e % WIRE_EPOCHS for e in (hw, current) if e}
    while number % WIRE_EPOCHS in held:
        number += 1  # never the previous epoch's wire value (PROTOCOL.md 5)
    if number > EPOCH_MAX:
        raise Conflict("epoch counter of this group is exhausted (u32); create a new group")
    excess = number - floor_now - EPOCH_BURST
    return number, (excess / EPOCH_RATE if excess > 0 else 0.0)


@dataclass(frozen=True)
class Recipient:
    name: str
    kem_public: bytes


@dataclass(frozen=True)
class Thresholds:
    suite: int
    rekey_after_seconds: float
    rekey_after_packets: int
    switch_delay: float = 2.0
    grace: float = 30.0


@dataclass(frozen=True)
class SealedEpoch:
    info: ArchiveEpoch
    indices: dict[str, int]  # member name -> index
    sealed: list[tuple[str, int, bytes, bytes]]  # (name, index, capsule, sealed salt)


def _uniform(rand: Callable[[int], bytes], bound: int) -> int:
    """Uniform integer in [0, bound) by rejection sampling over 32-bit draws."""
    limit = (2**32 // bound) * bound
    while True:
        value = struct.unpack(">I", rand(4))[0]
        if value < limit:
            return value % bound


def permutation(n: int, rand: Callable[[int], bytes]) -> list[int]:
    """A uniformly random permutation of 0..n-1 (Fisher-Yates)."""
    order = list(range(n))
    for i in range(n - 1, 0, -1):
        j = _uniform(rand, i + 1)
        order[i], order[j] = order[j], order[i]
    return order


def build_epoch(group_id: bytes, number: int, recipients: Sequence[Recipient], thresholds: Thresholds,
                challenges: Sequence[bytes], now: float, rand: Callable[[int], bytes],
                secrets: keys.SecretMemory = keys.HEAP) -> SealedEpoch:
    """Draw SS and salt, derive data_id and key_check, seal both per member, wipe SS and salt."""
    if not recipients:
        raise Conflict("a group without members has no epoch")
    if len(recipients) > 65535:
        raise Conflict("a group has at most 65535 members")
    order = permutation(len(recipients), rand)
    indices = {r.name: order[k] for k, r in enumerate(recipients)}
    nonce_start = _uniform(rand, NONCE_START_MAX + 1)
    shared_secret, salt = secrets.alloc(keys.SECRET_SIZE), secrets.alloc(keys.SALT_SIZE)
    try:
        shared_secret[:] = rand(keys.SECRET_SIZE)
        salt[:] = rand(keys.SALT_SIZE)
        data_id = keys.data_id(shared_secret)
        schedule = keys.EpochKeys(thresholds.suite, group_id, number, shared_secret, salt, secrets)
        try:
            key_check = schedule.key_check()
        finally:
            schedule.wipe()
        sealed = [
            (r.name, indices[r.name],
             seal(r.kem_public, capsule_info(group_id, number, r.name), shared_secret),
             seal(r.kem_public, salt_info(group_id, number, r.name), salt))
            for r in recipients
        ]
    finally:
        secrets.free(shared_secret)
        secrets.free(salt)
    info = ArchiveEpoch(
        epoch=number, suite=thresholds.suite, nonce_start=nonce_start, group_size=len(recipients),
        data_id=data_id, key_check=key_check, rekey_after_seconds=thresholds.rekey_after_seconds,
        rekey_after_packets=thresholds.rekey_after_packets, switch_delay=thresholds.switch_delay,
        grace=thresholds.grace, challenges=tuple(challenges), opened_at=now,
    )
    return SealedEpoch(info, indices, sealed)
