"""The cold path: get epochs from the provider, check them, hand them over.

Runs in its own thread (``requests`` blocks). At start it draws a fresh
32-byte challenge and asks the provider for an epoch that lists it
(PROTOCOL.md 4); afterwards it long-polls for new archives, forwards the
session's rekey/fetch requests and reports endpoints and packet counts.

Every epoch goes through the acceptance order of PROTOCOL.md 2 before the
session sees it (:func:`accept_epoch`): signatures, group id, newer than
anything held (statefile and session), indices a permutation, capsule
opens and data_id matches, salt opens and key_check matches. The epoch is
written to the statefile (fsync) BEFORE it is installed. Any refusal is
logged with its step and the epoch is not used.

The data plane never waits for this thread: when the provider is
unreachable, calls are retried with exponential backoff and jitter
(bounded by ``backoff_max``) while the installed epoch keeps carrying
traffic. Limits: a rekey request waits at most one long-poll
(``watch_timeout``) before it is forwarded.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import random
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Protocol

from grouptun.config import parse_endpoint
from grouptun.core import accept
from grouptun.core import capsule as capsule_mod
from grouptun.core import keys as keys_mod
from grouptun.core.archive import Archive, ProviderKeys, verify_archive
from grouptun.core.epoch import parse_networks
from grouptun.core.session import EpochMaterial, MemberInfo
from grouptun.errors import CapsuleError, EpochRejected, GrouptunError, ProviderError, ProviderRefused

log = logging.getLogger("grouptun.control")

CHALLENGE_SIZE = 32


class SessionPort(Protocol):
    """How the control path reaches the session (on the event loop's thread)."""

    def install(self, material) -> None: ...
    def take_requests(self) -> set[str]: ...
    def packets_sent(self) -> dict[int, int]: ...


class Backoff:
    """Exponential backoff with 'equal jitter': delay in [d/2, d], d = min(cap, base * 2^k)."""

    def __init__(self, base: float = 1.0, cap: float = 60.0, rng: Callable[[], float] = random.random) -> None:
        self.base, self.cap, self._rng = base, cap, rng
        self.attempt = 0

    def next(self) -> float:
        d = min(self.cap, self.base * (2 ** min(self.attempt, 32)))
        self.attempt += 1
        return d / 2 + self._rng() * d / 2

    def reset(self) -> None:
        self.attempt = 0


def resolve_endpoint(text: str, can_reach: Callable[[str], bool]) -> tuple[str, int] | None:
    """``host:port`` -> (ip, port) usable by our socket, resolving names; None if unusable."""
    try:
        host, port = parse_endpoint(text)
    except ValueError:
        return None
    try:
        hosts = [str(ipaddress.ip_address(host))]
    except ValueError:
        try:
            hosts = [info[4][0] for info in socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)]
        except OSError:
            return None
    for h in hosts:
        if can_reach(h):
            return (h, port)
    return None


def _member_info(m, can_reach) -> MemberInfo:
    endpoint = next((ep for ep in (resolve_endpoint(t, can_reach) for t in m.endpoints) if ep), None)
    addrs = tuple(ipaddress.ip_interface(a).ip for a in m.addresses)
    return MemberInfo(name=m.name, index=m.index, addresses=addrs, endpoint=endpoint)


def check_archive(archive: Archive, group_id: bytes, member: str, highest: int,
                  challenge: bytes | None) -> None:
    """Steps of the acceptance order that need only the verified archive.

    ``accept.check_document`` (group_id, epoch, indices), then our own two
    rules: the start challenge is listed (PROTOCOL.md 4) and we are a member.
    """
    e = archive.epoch
    accept.check_document(signatures_ok=True, expected_group_id=group_id, group_id=archive.group_id,
                          epoch=e.epoch, highest_held=highest if highest >= 0 else None,
                          indices=[m.index for m in archive.members], group_size=e.group_size)
    if len({m.name for m in archive.members}) != len(archive.members):
        raise EpochRejected("indices", "duplicate member names")
    if challenge is not None and not any(hmac.compare_digest(challenge, c) for c in e.challenges):
        raise EpochRejected("challenge", f"epoch {e.epoch} does not answer our start challenge")
    if archive.member(member) is None:
        raise EpochRejected("membership", f"{member!r} is not a member of epoch {e.epoch}")


def _open(kem, info: bytes, sealed: bytes) -> bytearray | None:
    try:
        return capsule_mod.open_sealed(kem, info, sealed)
    except CapsuleError as exc:
        log.debug("sealed secret does not open: %s", exc)
        return None


def open_secrets(archive: Archive, member: str, kem: capsule_mod.KemPrivateKey,
                 sealed_ss: bytes, sealed_salt: bytes) -> tuple[bytearray, bytearray]:
    """The last steps (capsule, data_id, salt, key_check) via ``accept.check_secrets``.

    Returns (SS, salt) for the caller to hand over or wipe; wipes them itself on refusal.
    """
    e = archive.epoch
    ss = _open(kem, capsule_mod.capsule_info(archive.group_id, e.epoch, member), sealed_ss)
    salt = None
    if ss is not None and hmac.compare_digest(keys_mod.data_id(ss), e.data_id):
        # Open the salt only once data_id matched: the order is the order.
        salt = _open(kem, capsule_mod.salt_info(archive.group_id, e.epoch, member), sealed_salt)
    try:
        accept.check_secrets(suite=e.suite, group_id=archive.group_id, epoch=e.epoch, shared_secret=ss,
                             data_id_expected=e.data_id, salt=salt, key_check_expected=e.key_check)
    except EpochRejected:
        keys_mod.wipe(ss)
        keys_mod.wipe(salt)
        raise
    return ss, salt


def build_material(archive: Archive, member: str, ss: bytearray, salt: bytearray,
                   can_reach: Callable[[str], bool] = lambda h: True) -> EpochMaterial:
    e = archive.epoch
    nets = (archive.cidr,) + ((archive.cidr6,) if archive.cidr6 else ())
    return EpochMaterial(
        group_id=archive.group_id, epoch=e.epoch, suite=e.suite, nonce_start=e.nonce_start,
        group_size=e.group_size, own_index=archive.member(member).index,
        members=tuple(_member_info(m, can_reach) for m in sorted(archive.members, key=lambda m: m.index)),
        shared_secret=ss, salt=salt, switch_delay=e.switch_delay, grace=e.grace,
        rekey_after_packets=e.rekey_after_packets, rekey_after_seconds=e.rekey_after_seconds,
        networks=parse_networks(nets),
    )


@dataclass
class ControlState:
    """What ``grouptun status`` shows about the control path (replaced, never mutated)."""

    phase: str = "starting"
    provider_ok: bool = False
    last_contact: float | None = None       # wall clock
    last_error: str | None = None
    archive_version: int | None = None
    epoch: int | None = None
    epoch_installed_at: float | None = None  # wall clock
    refusals: dict = field(default_factory=dict)
    retry_in: float | None = None


class ControlPlane:
    """The control thread. ``run(stop)`` returns when ``stop`` is set."""

    def __init__(self, *, client, port: SessionPort, kem: capsule_mod.KemPrivateKey, credential: bytearray,
                 pinned: ProviderKeys, group_id: bytes, member: str, statefile,
                 endpoints: Callable[[], list[str]], can_reach: Callable[[str], bool] = lambda h: True,
                 on_archive: Callable[[Archive], None] | None = None, watch_timeout: float = 15.0,
                 report_interval: float = 30.0, backoff: Backoff | None = None,
                 urandom: Callable[[int], bytes] = os.urandom, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time, metrics=None) -> None:
        self.client, self.port, self.kem, self.credential = client, port, kem, credential
        self.pinned, self.group_id, self.member, self.statefile = pinned, group_id, member, statefile
        self.endpoints, self.can_reach, self.on_archive = endpoints, can_reach, on_archive
        self.watch_timeout, self.report_interval = watch_timeout, report_interval
        self.backoff = backoff or Backoff()
        self._urandom, self._clock, self._wall = urandom, clock, wall
        self.state = ControlState()
        self.metrics = metrics  # optional grouptun.metrics.DaemonMetrics (cold-path counters)
        self.archive: Archive | None = None
        self._next_report = 0.0
        self._refusals: dict[str, int] = {}
        self._pending: set[str] = set()

    # --- state for status ---
    def _set(self, **changes) -> None:
        values = {**vars(self.state), **changes}
        values["refusals"] = dict(self._refusals)
        self.state = ControlState(**values)

    def _contact_ok(self) -> None:
        if not self.state.provider_ok:
            log.info("provider reachable")
        self._set(provider_ok=True, last_contact=self._wall(), last_error=None, retry_in=None)
        self.backoff.reset()

    # --- acceptance ---
    def accept(self, signed: bytes, challenge: bytes | None = None) -> bool:
        """Run the acceptance order on ``signed``; True if a new epoch was installed.

        An archive for the epoch already held (a membership detail changed,
        a report updated endpoints) is recorded but installs nothing.
        """
        archive = verify_archive(signed, self.pinned)
        if archive.expires_at and archive.expires_at < self._wall():
            raise EpochRejected("expired", f"archive version {archive.version} expired")
        current = self.archive.epoch.epoch if self.archive else -1
        if challenge is None and archive.group_id == self.group_id and archive.epoch.epoch == current:
            if archive.version > self.archive.version:
                self.archive = archive
                self._set(archive_version=archive.version)
                self._notify_archive(archive)
            return False
        highest = max(self.statefile.highest(self.group_id), current)
        check_archive(archive, self.group_id, self.member, highest, challenge)
        e = archive.epoch.epoch
        sealed_ss = self.client.capsule(e)
        sealed_salt = self.client.salt(e, bytes(self.credential))
        ss, salt = open_secrets(archive, self.member, self.kem, sealed_ss, sealed_salt)
        try:
            material = build_material(archive, self.member, ss, salt, self.can_reach)
            self.statefile.record(self.group_id, e)  # durably BEFORE first use (PROTOCOL.md 4)
        except BaseException:
            keys_mod.wipe(ss)
            keys_mod.wipe(salt)
            raise
        self.port.install(material)
        self.archive = archive
        self._set(archive_version=archive.version, epoch=e, epoch_installed_at=self._wall(), phase="running")
        if self.metrics is not None:
            self.metrics.epoch_installed()
        log.info("epoch %d installed (archive version %d, %d members, suite %d)",
                 e, archive.version, archive.epoch.group_size, archive.epoch.suite)
        self._notify_archive(archive)
        return True

    def _notify_archive(self, archive: Archive) -> None:
        if self.on_archive is None:
            return
        try:
            self.on_archive(archive)
        except GrouptunError as exc:
            log.error("applying archive version %d: %s", archive.version, exc)

    def _refused(self, exc: EpochRejected) -> None:
        if self.metrics is not None:
            self.metrics.epoch_refused(exc.step)
        self._refusals[exc.step] = self._refusals.get(exc.step, 0) + 1
        log.warning("%s", exc)
        self._set(last_error=str(exc))

    # --- the loop ---
    def start_once(self, challenge: bytes) -> bool:
        """One start attempt; True once an epoch answering ``challenge`` is installed."""
        signed = self.client.start(challenge)
        self._contact_ok()
        return self.accept(signed, challenge)

    def step(self) -> None:
        """One round after start: requests, report, one long-poll."""
        # Requests stay pending until the provider took them, so a failed call loses none.
        self._pending |= self.port.take_requests()
        for req in sorted(r for r in self._pending if r.startswith("rekey:")):
            log.info("asking the provider for a new epoch (%s)", req[6:])
            try:
                self.client.rekey(req[6:])
                if self.metrics is not None:
                    self.metrics.rekey(req[6:])
            except ProviderRefused as exc:  # e.g. rate-limited: the provider decided; don't insist
                log.warning("rekey (%s) not granted: %s", req[6:], exc)
            self._pending.discard(req)
            self._contact_ok()
        if "fetch" in self._pending:
            signed = self.client.archive()
            self._pending.discard("fetch")
            self._handle(signed)
        if self._clock() >= self._next_report:
            self._next_report = self._clock() + self.report_interval
            try:
                self.client.report(self.endpoints(), self.port.packets_sent())
            except ProviderRefused as exc:  # a refused report must not hold up the watch
                log.warning("report refused: %s", exc)
            self._contact_ok()
        version = self.archive.version if self.archive else 0
        signed = self.client.watch(version, timeout=self.watch_timeout)
        self._contact_ok()
        if signed is not None:
            self._handle(signed)

    def _handle(self, signed: bytes) -> None:
        self._contact_ok()
        self.accept(signed)

    def run(self, stop: threading.Event) -> None:
        """Thread body: start (challenge rule), then watch until ``stop``."""
        challenge = self._urandom(CHALLENGE_SIZE)
        log.info("requesting a fresh epoch from the provider (start challenge)")
        started = False
        while not stop.is_set():
            try:
                if not started:
                    started = self.start_once(challenge)
                    if not started:
                        raise EpochRejected("challenge", "start answered without a new epoch")
                else:
                    self.step()
                continue
            except EpochRejected as exc:
                self._refused(exc)
            except ProviderRefused as exc:
                log.error("%s", exc)
                self._set(last_error=str(exc), provider_ok=True)
            except ProviderError as exc:
                if self.state.provider_ok or self.state.last_error != str(exc):
                    log.warning("provider trouble: %s (the data plane keeps running)", exc)
                self._set(provider_ok=False, last_error=str(exc))
            except RuntimeError as exc:  # the event loop closed under us: shutting down
                if stop.is_set():
                    return
                log.exception("control path error: %s", exc)
                self._set(last_error=f"internal: {exc}")
            except Exception as exc:  # noqa: BLE001 - the control thread must outlive a bug
                log.exception("control path error: %s", exc)
                self._set(last_error=f"internal: {type(exc).__name__}: {exc}")
            delay = self.backoff.next()
            self._set(retry_in=delay)
            log.debug("retrying in %.1f s", delay)
            stop.wait(delay)
