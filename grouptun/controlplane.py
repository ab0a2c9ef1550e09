"""The cold path: get epochs from the provider, check them, hand them over.

Runs in its own thread (``requests`` blocks). At start it draws a fresh
32-byte challenge and asks the provider for an epoch that lists it
(PROTOCOL.md 4); afterwards it long-polls for new archives. A second,
small thread (:meth:`ControlPlane.request_loop`, its own HTTP session)
forwards the session's rekey requests and sends the periodic reports, so
neither waits behind the long-poll: a rekey request reaches the provider
within ``request_interval`` (0.2 s) plus one HTTP round trip.

Groups of fewer than 2 members have no epoch (PROTOCOL.md 1). The
provider then answers the start with "waiting for members" and records the
challenge; the daemon logs that once, watches, and installs the first
epoch that lists its challenge. An epoch that appears without it (the
provider restarted and lost the pending challenge) makes it start again;
the provider's start rate limit answers 429, which backs off.

Archive changes without a new epoch (a member re-reported its endpoint)
update the running session's endpoints of the members whose archive
endpoint changed (``Session.update_endpoints``): like WireGuard, an
endpoint learned by roaming (from authenticated packets) is kept until the
archive's value for that member changes.

A new epoch whose wire value (epoch mod 2^16) equals the held one's is
refused before anything is fetched (PROTOCOL.md 5: a member never holds
two epochs with the same wire value) and a rekey is requested, so the
provider moves on to a usable number; ours never issues one
(``provider/epochs.py``).

Every epoch goes through the acceptance order of PROTOCOL.md 2 before the
session sees it (:func:`accept_epoch`): signatures, group id, newer than
anything held (statefile and session), indices a permutation, capsule
opens and data_id matches, salt opens and key_check matches. The epoch is
written to the statefile (fsync) BEFORE it is installed. Any refusal is
logged with its step and the epoch is not used.

The data plane never waits for this thread: when the provider is
unreachable, calls are retried with exponential backoff and jitter
(bounded by ``backoff_max``) while the installed epoch keeps carrying
traffic. Limits: a "fetch" request (a packet of the next epoch seen) is
served by the watch thread, after the current long-poll -- which returns
at once anyway when the provider has a newer archive.
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
WIRE_EPOCHS = 2**16  # the header carries epoch mod 2^16 (PROTOCOL.md 5)


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


REPORTED_EPOCHS = 4  # the provider looks at the current epoch only; older ones are context


def _latest(packets_sent: dict[int, int]) -> dict[int, int]:
    """The counts of the newest REPORTED_EPOCHS epochs (a report body is bounded at the provider)."""
    return {e: packets_sent[e] for e in sorted(packets_sent)[-REPORTED_EPOCHS:]}


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
                 sealed_ss: bytes, sealed_salt: bytes | Callable[[], bytes]) -> tuple[bytearray, bytearray]:
    """The last steps (capsule, data_id, salt, key_check) via ``accept.check_secrets``.

    ``sealed_salt`` may be a callable that fetches it: it is called only
    once the capsule opened and data_id matched, so the credential is not
    shown to the provider for an epoch this member would refuse anyway.
    Returns (SS, salt) for the caller to hand over or wipe; wipes them itself on refusal.
    """
    e = archive.epoch
    ss = _open(kem, capsule_mod.capsule_info(archive.group_id, e.epoch, member), sealed_ss)
    salt = None
    try:
        if ss is not None and hmac.compare_digest(keys_mod.data_id(ss), e.data_id):
            # Fetch and open the salt only once data_id matched: the order is the order.
            sealed = sealed_salt() if callable(sealed_salt) else sealed_salt
            salt = _open(kem, capsule_mod.salt_info(archive.group_id, e.epoch, member), sealed)
    except BaseException:
        keys_mod.wipe(ss)
        raise
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
                 wall: Callable[[], float] = time.time, metrics=None, request_interval: float = 0.2) -> None:
        self.client, self.port, self.kem, self.credential = client, port, kem, credential
        self.pinned, self.group_id, self.member, self.statefile = pinned, group_id, member, statefile
        self.endpoints, self.can_reach, self.on_archive = endpoints, can_reach, on_archive
        self.watch_timeout, self.report_interval = watch_timeout, report_interval
        self.request_interval = request_interval
        self.backoff = backoff or Backoff()
        self._urandom, self._clock, self._wall = urandom, clock, wall
        self.state = ControlState()
        self.metrics = metrics  # optional grouptun.metrics.DaemonMetrics (cold-path counters)
        self.archive: Archive | None = None  # newest verified archive of our group (may have no epoch)
        self.held_epoch = -1                 # the epoch installed last (-1: none yet)
        self._next_report = 0.0
        self._refusals: dict[str, int] = {}
        self._pending: set[str] = set()      # session requests not yet taken by the provider
        self._requests_lock = threading.Lock()  # _pending and _next_report: both threads
        self._waiting = False                # start answered "waiting for members"

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
        a report updated endpoints) or without any epoch (fewer than 2
        members) is recorded but installs nothing.
        """
        archive = verify_archive(signed, self.pinned)
        if archive.expires_at and archive.expires_at < self._wall():
            raise EpochRejected("expired", f"archive version {archive.version} expired")
        if archive.group_id != self.group_id:
            raise EpochRejected("group_id", "archive of another group")
        if archive.epoch is None:
            if challenge is not None:
                raise EpochRejected("challenge", "the group has no epoch yet (fewer than 2 members)")
            self._record(archive)
            return False
        if challenge is None and archive.epoch.epoch == self.held_epoch:
            self._record(archive)
            return False
        highest = max(self.statefile.highest(self.group_id), self.held_epoch)
        check_archive(archive, self.group_id, self.member, highest, challenge)
        self._check_wire(archive.epoch.epoch)  # newer, but unusable next to the held one
        self._install(archive)
        return True

    def _install(self, archive: Archive) -> None:
        e = archive.epoch.epoch
        sealed_ss = self.client.capsule(e)
        ss, salt = open_secrets(archive, self.member, self.kem, sealed_ss,
                                lambda: self.client.salt(e, bytes(self.credential)))
        try:
            material = build_material(archive, self.member, ss, salt, self.can_reach)
            self.statefile.record(self.group_id, e)  # durably BEFORE first use (PROTOCOL.md 4)
        except BaseException:
            keys_mod.wipe(ss)
            keys_mod.wipe(salt)
            raise
        self.port.install(material)
        previous, self.archive, self.held_epoch = self.archive, archive, e
        self._push_endpoints(previous, archive)  # endpoints that changed in the archive replace roamed ones
        self._set(archive_version=archive.version, epoch=e, epoch_installed_at=self._wall(), phase="running")
        if self.metrics is not None:
            self.metrics.epoch_installed()
        log.info("epoch %d installed (archive version %d, %d members, suite %d)",
                 e, archive.version, archive.epoch.group_size, archive.epoch.suite)
        self._notify_archive(archive)

    def _record(self, archive: Archive) -> None:
        """A newer archive that opens no epoch: keep it, apply its endpoints and addresses."""
        if self.archive is not None and archive.version <= self.archive.version:
            return
        previous, self.archive = self.archive, archive
        if archive.epoch is None and (previous is None or previous.epoch is not None):
            log.info("the group has fewer than 2 members: no epoch until a second member joins")
        if self.held_epoch >= 0:
            self._push_endpoints(previous, archive)
        self._set(archive_version=archive.version)
        self._notify_archive(archive)

    def _push_endpoints(self, previous: Archive | None, archive: Archive) -> None:
        """Hand the session the members whose archive endpoints changed since ``previous``."""
        before = {m.name: m.endpoints for m in previous.members} if previous is not None else {}
        changed = [_member_info(m, self.can_reach) for m in archive.members
                   if m.name != self.member and m.endpoints and before.get(m.name) != m.endpoints]
        changed = [m for m in changed if m.endpoint is not None]
        if not changed:
            return
        update = getattr(self.port, "update_endpoints", None)
        loop, session = getattr(self.port, "loop", None), getattr(self.port, "session", None)
        if update is not None:
            update(changed)
        elif loop is not None and session is not None:
            # The daemon's LoopPort (dataplane.py) has no update_endpoints yet: run it on the
            # loop thread like every other session call, after the install already queued there.
            loop.call_soon_threadsafe(session.update_endpoints, changed)
        else:
            log.debug("session port cannot update endpoints")
            return
        log.info("endpoints updated from archive version %d: %s", archive.version,
                 ", ".join(m.name for m in changed))

    def _check_wire(self, epoch: int) -> None:
        """Refuse an epoch whose wire value equals the held one's; ask for another (PROTOCOL.md 5)."""
        if self.held_epoch >= 0 and epoch % WIRE_EPOCHS == self.held_epoch % WIRE_EPOCHS:
            with self._requests_lock:
                self._pending.add("rekey:wire-collision")
            raise EpochRejected("epoch", f"epoch {epoch} has the wire value of the held epoch {self.held_epoch}")

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

    # --- start (PROTOCOL.md 4) ---
    def start_once(self, challenge: bytes) -> bool:
        """One start step; True once an epoch answering ``challenge`` is installed.

        While the provider answers "waiting for members" each call is one
        long-poll for the epoch that lists ``challenge``; an epoch without
        it sends the next call back to the provider's start.
        """
        if self._waiting:
            return self._wait_for_members(challenge)
        signed = self.client.start(challenge)
        self._contact_ok()
        if signed is None:
            self._waiting = True
            log.info("waiting for a second member: the provider opens the group's first epoch "
                     "(listing our start challenge) when one joins")
            self._set(phase="waiting for members")
            return False
        if not self.accept(signed, challenge):
            raise EpochRejected("challenge", "start answered without a new epoch")
        return True

    def _wait_for_members(self, challenge: bytes) -> bool:
        version = self.archive.version if self.archive is not None else 0
        signed = self.client.watch(version, timeout=self.watch_timeout)
        self._contact_ok()
        if signed is None:
            return False
        archive = verify_archive(signed, self.pinned)
        if archive.epoch is None:
            self.accept(signed)  # membership/addresses only
            return False
        self._waiting = False
        if not any(hmac.compare_digest(challenge, c) for c in archive.epoch.challenges):
            log.info("epoch %d does not list our start challenge: asking for a start again", archive.epoch.epoch)
            self._record(archive)
            return False
        return self.accept(signed, challenge)

    # --- after start ---
    def step(self) -> None:
        """One round after start: requests and report, then one long-poll (tests; run() splits them)."""
        self.service_requests()
        self.watch_once()

    def service_requests(self) -> None:
        """Forward the session's rekey requests and send the report when due (the request thread)."""
        with self._requests_lock:
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
            report_due = self._clock() >= self._next_report
            if report_due:
                self._next_report = self._clock() + self.report_interval
        if report_due:
            try:
                self.client.report(self.endpoints(), _latest(self.port.packets_sent()))
            except ProviderRefused as exc:  # a refused report must not hold up anything
                log.warning("report refused: %s", exc)
            self._contact_ok()

    def watch_once(self) -> None:
        """A requested fetch, then one long-poll; installs what arrives (the watch thread)."""
        with self._requests_lock:
            fetch = "fetch" in self._pending
        if fetch:
            signed = self.client.archive()
            with self._requests_lock:
                self._pending.discard("fetch")
            self._handle(signed)
        version = self.archive.version if self.archive else 0
        signed = self.client.watch(version, timeout=self.watch_timeout)
        self._contact_ok()
        if signed is not None:
            self._handle(signed)

    def _handle(self, signed: bytes) -> None:
        self._contact_ok()
        self.accept(signed)

    def request_loop(self, stop: threading.Event, done: threading.Event | None = None) -> None:
        """Thread body beside the watch: rekey requests and reports every ``request_interval``.

        Runs until ``stop`` or ``done`` is set; it only checks ``stop`` and
        sleeps on ``done`` (run() sets it on return), so the caller's
        ``stop.wait`` is the watch thread's alone.
        """
        done = done or threading.Event()
        failures = 0
        while not done.wait(min(self.request_interval * 2 ** failures, 5.0)) and not stop.is_set():
            if self.held_epoch < 0:
                continue  # nothing to ask for or report before the first epoch
            try:
                self.service_requests()
                failures = 0
            except ProviderError as exc:  # the watch thread logs provider trouble; retry soon
                log.debug("request forwarding: %s", exc)
                failures = min(failures + 1, 5)
            except RuntimeError:  # the event loop closed under us: shutting down
                if stop.is_set():
                    return
                log.exception("request forwarding failed")
                failures = min(failures + 1, 5)
            except Exception:  # noqa: BLE001 - the thread must outlive a bug
                log.exception("request forwarding failed")
                failures = min(failures + 1, 5)

    def run(self, stop: threading.Event) -> None:
        """Thread body: start (challenge rule), then watch until ``stop``; rekeys/reports in a second thread."""
        challenge = self._urandom(CHALLENGE_SIZE)
        log.info("requesting a fresh epoch from the provider (start challenge)")
        done = threading.Event()
        requests = threading.Thread(target=self.request_loop, args=(stop, done), name="grouptun-control-requests",
                                    daemon=True)
        requests.start()
        try:
            self._run(stop, challenge)
        finally:
            done.set()

    def _run(self, stop: threading.Event, challenge: bytes) -> None:
        started = False
        while not stop.is_set():
            try:
                if not started:
                    started = self.start_once(challenge)
                else:
                    self.watch_once()
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
