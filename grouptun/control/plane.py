"""The cold path: get epochs from the provider, check them, hand them over.

Runs in its own thread (``requests`` blocks; the thread bodies are
:mod:`grouptun.control.planeloops`). At start it draws a fresh 32-byte
challenge and asks the provider for an epoch that lists it (PROTOCOL.md 4);
afterwards it long-polls for new archives. A second thread
(:meth:`ControlPlane.request_loop`) forwards the session's rekey requests
and sends the periodic reports (:mod:`grouptun.control.requestforward`).
What ``status`` shows, and what each answer or failure does to it, is
:mod:`grouptun.control.controlstate`'s.

Groups of fewer than 2 members have no epoch (PROTOCOL.md 1): the provider
answers the start with "waiting for members" and records the challenge;
the daemon logs that once, watches, and installs the first epoch that
lists it. An epoch without it (the provider lost the pending challenge)
makes it start again; the provider's start rate limit (429) backs off.

Archive changes without a new epoch (a member re-reported its endpoint)
update the session's endpoints of the members whose archive endpoint
changed: like WireGuard, an endpoint learned by roaming is kept until the
archive's value for that member changes. A new epoch whose wire value
equals the held one's is refused before anything is fetched (PROTOCOL.md
5) and a rekey is requested; ours never issues one (``provider/epochs.py``).

Every archive, on every path, first passes :meth:`ControlPlane._verified`
(signatures, expiry, group id); every epoch then the rest of the
acceptance order (:mod:`grouptun.control.epochaccept`). The epoch is written to the
statefile (fsync) BEFORE it is installed; a refusal is logged with its
step. If the install then times out (the event loop stalled), the recorded
epoch counts as held -- the statefile forbids it for good, so waiting for
it would wedge the member -- and ``rekey:install-timeout`` is requested.

One running instance per member (PROTOCOL.md 4): the daemon's instance
is SHA-256 of its start challenge. An epoch is installed only if its
archive's entry for our member names our instance, checked before its
capsule is fetched; any archive accepted after the start (a new epoch or
a re-signed one) that names another means the member was started
elsewhere: InstanceSuperseded, and the control path ends (planeloops).

A removed member (its admin removed it, or its membership's time ended:
issue 17) learns it from a verified archive newer than the one it holds
that no longer lists it (MemberRemoved), or from the provider's 410 to any
request it signs (a daemon that was not watching at the time): it stops
sending the same way, ``status`` shows phase "removed" and the reason
(``ControlState.removed``), and the daemon exits with MemberRemoved's
status (67).

A group a linked provider owns (``vouch``, PROTOCOL.md 8): archives are
the owner's, relayed by our provider, so their ``provider_urls`` are not
adopted. Its voucher is renewed before it expires and when an archive
fails the voucher check (:mod:`grouptun.control.vouchrenew`).

Provider URLs: the client fails over between the provider's URLs itself
(:mod:`grouptun.control.client`); an accepted archive's ``provider_urls``
replaces the client's list and is kept in ``urls_file`` for the next start.

Access policy (issue 17 item 6): every archive accepted (installed or
recorded) hands its policy and its epoch's member table to ``policy``, the
daemon's :class:`~grouptun.core.policy.PolicyEnforcer` (an epoch being
installed gets its table before the session sees the epoch), so a policy
or attribute change applies on the next watch, without a new epoch.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Callable, Protocol

from grouptun.control import planeloops
from grouptun.control.backoff import Backoff
from grouptun.control.controlstate import ControlState, ControlStatus
from grouptun.control.credmigrate import SaltProof
from grouptun.control.epochaccept import (apply_policy, build_material, check_archive, check_instance, lists_challenge,
                                          member_info, open_secrets, verified_archive)
from grouptun.control.requestforward import RequestForwarder
from grouptun.control.vouchrenew import VouchHolder
from grouptun.core import keys as keys_mod
from grouptun.core.archive import Archive
from grouptun.core.archivemember import instance_of
from grouptun.core.capsule import KemPrivateKey
from grouptun.core.envelope import ProviderKeys
from grouptun.core.policy import PolicyEnforcer
from grouptun.core.session import MemberInfo
from grouptun.core.wire import wire_epoch
from grouptun.errors import EpochRejected, GrouptunError, InstanceSuperseded, LoopUnavailable, MemberRemoved

log = logging.getLogger("grouptun.control")


class SessionPort(Protocol):
    """How the control path reaches the session (each call runs on the event loop's thread).

    Any call may raise LoopUnavailable (``closed``: shutting down; else the loop did not answer).
    """

    def install(self, material) -> None: ...
    def update_endpoints(self, members: list[MemberInfo]) -> int: ...
    def take_requests(self) -> set[str]: ...
    def packets_sent(self) -> dict[int, int]: ...
    def stop_sending(self) -> None: ...


class ControlPlane:
    """The control thread. ``run(stop)`` returns when ``stop`` is set."""

    def __init__(self, *, client, port: SessionPort, kem: KemPrivateKey, proof: SaltProof,
                 pinned: ProviderKeys, group_id: bytes, member: str, statefile,
                 endpoints: Callable[[], list[str]], can_reach: Callable[[str], bool] = lambda h: True,
                 on_archive: Callable[[Archive], None] | None = None, watch_timeout: float = 15.0,
                 report_interval: float = 30.0, backoff: Backoff | None = None,
                 urandom: Callable[[int], bytes] = os.urandom, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time, metrics=None, request_interval: float = 0.2,
                 secrets: keys_mod.SecretMemory = keys_mod.HEAP,
                 on_superseded: Callable[[InstanceSuperseded | MemberRemoved], None] | None = None,
                 on_trouble: Callable[[str | None], None] = lambda problem: None, urls_file=None,
                 policy: PolicyEnforcer | None = None, vouch: bytes | None = None,
                 on_vouch: Callable[[bytes], None] = lambda signed: None) -> None:
        self.client, self.port, self.kem, self.proof = client, port, kem, proof
        self.urls_file = urls_file  # grouptun.control.providerurls.ProviderUrlsFile, or None: archive lists not kept
        # a group a linked provider owns: our provider's voucher for it, renewed (control/vouchrenew.py) and
        # kept by ``on_vouch`` (the daemon: control/vouchfile.py)
        self.vouches = None if vouch is None else VouchHolder(vouch, pinned, lambda: self.client.vouch(), on_vouch,
                                                              wall)
        self.secrets = secrets  # where opened SS and salt are held (the daemon's locked arena)
        self.pinned, self.group_id, self.member, self.statefile = pinned, group_id, member, statefile
        self.can_reach, self.on_archive = can_reach, on_archive
        self.watch_timeout, self.request_interval = watch_timeout, request_interval
        self.backoff = backoff or Backoff()
        self.urandom, self._wall = urandom, wall  # urandom: the start challenge (planeloops.run)
        self.metrics = metrics  # optional grouptun.ops.metrics.DaemonMetrics (cold-path counters)
        # what status shows; on_trouble gets a refusal (text) and the recovery (None): systemd's STATUS=
        self.status = ControlStatus(client=client, backoff=self.backoff, linked=vouch is not None, wall=wall,
                                    on_trouble=on_trouble, metrics=metrics)
        self.requests = RequestForwarder(client=client, port=port, endpoints=endpoints,
                                         report_interval=report_interval, clock=clock,
                                         on_answer=self.status.contact_ok, metrics=metrics)
        self.archive: Archive | None = None  # newest verified archive of our group (may have no epoch)
        self.held_epoch = -1                 # the epoch installed last (-1: none yet)
        self._waiting = False                # start answered "waiting for members"
        self.instance: bytes | None = None   # instance_of(our start challenge), PROTOCOL.md 4
        self.on_superseded = on_superseded
        self.policy = policy if policy is not None else PolicyEnforcer()

    @property
    def vouch(self) -> bytes | None:
        return None if self.vouches is None else self.vouches.current

    @property
    def state(self) -> ControlState:
        """What ``grouptun status`` shows about the control path (replaced, never mutated)."""
        return self.status.state

    # --- acceptance ---
    def accept(self, signed: bytes, challenge: bytes | None = None) -> bool:
        """Run the acceptance order on ``signed``; True if a new epoch was installed."""
        return self._accept(self._verified(signed), challenge)

    def _verified(self, signed: bytes) -> Archive:
        """Signatures, expiry, group id: what every archive passes before any of it is used."""
        if self.vouches is None:
            return verified_archive(signed, self.pinned, self.group_id, self._wall())
        return self.vouches.verify_or_refresh(  # a fresh voucher once, if this one does not fit (expired, rotated)
            lambda vouch: verified_archive(signed, self.pinned, self.group_id, self._wall(), vouch, self.member))

    def _accept(self, archive: Archive, challenge: bytes | None = None) -> bool:
        """The rest of the order on a :meth:`_verified` archive.

        An archive for the epoch already held (a membership detail changed,
        a report updated endpoints) or without any epoch (fewer than 2
        members) is recorded but installs nothing. ``challenge`` (a start)
        makes its instance ours.
        """
        if challenge is not None:
            self.instance = instance_of(challenge)
        self._check_still_member(archive)
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
        check_instance(archive, self.member, self.instance)  # before the capsule: never install another's
        self._check_wire(archive.epoch.epoch)  # newer, but unusable next to the held one
        self._install(archive, starting=challenge is not None)
        return True

    def _check_still_member(self, archive: Archive) -> None:
        """MemberRemoved if ``archive`` (verified) is newer than one that listed us and does not list us.

        Older versions (a replay, a provider restored from backup) prove
        nothing: only a newer document signed by the pinned keys does.
        """
        held = self.archive
        if (held is not None and held.member(self.member) is not None and archive.version > held.version
                and archive.member(self.member) is None):
            raise MemberRemoved(f"member {self.member!r} was removed from the group: archive version "
                                f"{archive.version} no longer lists it")

    def _install(self, archive: Archive, starting: bool = False) -> None:
        e = archive.epoch.epoch
        sealed_ss = self.client.capsule(e)
        ss, salt = open_secrets(archive, self.member, self.kem, sealed_ss,
                               lambda: self.proof.fetch_salt(self.client, e), self.secrets)
        try:
            material = build_material(archive, self.member, ss, salt, self.can_reach, self.secrets)
            self.statefile.record(self.group_id, e)  # durably BEFORE first use (PROTOCOL.md 4)
            self.status.recorded(e)
        except BaseException:
            self.secrets.free(ss)
            self.secrets.free(salt)
            raise
        apply_policy(self.policy, archive, self.member, e)  # ready before the first packet of epoch e
        try:
            self.port.install(material)
        except LoopUnavailable as exc:
            if not exc.closed:
                self._install_timed_out(archive, starting)
            raise
        previous, self.archive, self.held_epoch = self.archive, archive, e
        self.status.installed(archive.version, e)
        if self.metrics is not None:
            self.metrics.epoch_installed()
        log.info("epoch %d installed (archive version %d, %d members, suite %d)",
                 e, archive.version, archive.epoch.group_size, archive.epoch.suite)
        self._notify_archive(archive)
        self._push_endpoints(previous, archive)  # endpoints that changed in the archive replace roamed ones

    def _install_timed_out(self, archive: Archive, starting: bool) -> None:
        """The statefile holds the epoch now, so it can never be installed again: count it as held.

        Whether the loop runs the install late or drops it (LoopPort wipes
        the material), archives for this epoch are then recorded (addresses,
        endpoints) instead of refused as not newer -- the long-poll hands
        this one back at once -- and a rekey asks for the next epoch. A
        start is retried instead: each start opens a new epoch.
        """
        self.held_epoch = max(self.held_epoch, archive.epoch.epoch)
        if not starting:
            self.requests.queue("rekey:install-timeout")
        log.info("epoch %d is recorded but its install timed out: counted as held; %s", archive.epoch.epoch,
                 "starting again" if starting else "asking for a new epoch")

    def _record(self, archive: Archive) -> None:
        """A newer archive that opens no epoch: keep it, apply its endpoints and addresses."""
        if self.archive is not None and archive.version <= self.archive.version:
            return
        if self.held_epoch >= 0:  # started: every archive from now on must still name our instance
            check_instance(archive, self.member, self.instance)
        self._check_still_member(archive)
        previous, self.archive = self.archive, archive
        held = archive.epoch is not None and archive.epoch.epoch == self.held_epoch
        apply_policy(self.policy, archive, self.member, archive.epoch.epoch if held else None)
        if archive.epoch is None and (previous is None or previous.epoch is not None):
            log.info("the group has fewer than 2 members: no epoch until a second member joins")
        self.status.set(archive_version=archive.version)
        self._notify_archive(archive)
        if self.held_epoch >= 0:
            self._push_endpoints(previous, archive)

    def _push_endpoints(self, previous: Archive | None, archive: Archive) -> None:
        """Hand the session the members whose archive endpoints changed since ``previous``."""
        before = {m.name: m.endpoints for m in previous.members} if previous is not None else {}
        changed = [member_info(m, self.can_reach) for m in archive.members
                   if m.name != self.member and m.endpoints and before.get(m.name) != m.endpoints]
        changed = [m for m in changed if m.endpoint is not None]
        if changed:
            self.port.update_endpoints(changed)
            log.info("endpoints updated from archive version %d: %s", archive.version,
                     ", ".join(m.name for m in changed))

    def _check_wire(self, epoch: int) -> None:
        """Refuse an epoch whose wire value equals the held one's; ask for another (PROTOCOL.md 5)."""
        if self.held_epoch >= 0 and wire_epoch(epoch) == wire_epoch(self.held_epoch):
            self.requests.queue("rekey:wire-collision")
            raise EpochRejected("epoch", f"epoch {epoch} has the wire value of the held epoch {self.held_epoch}")

    def _adopt_urls(self, archive: Archive) -> None:
        """An accepted archive's provider_urls replace the client's list, here and after a restart."""
        urls = archive.provider_urls
        if self.vouch is not None:  # the owner's URLs: we speak only to our own provider (PROTOCOL.md 8)
            return
        if not urls or urls == tuple(self.client.urls):
            return
        log.info("provider URLs from archive version %d: %s", archive.version, ", ".join(urls))
        self.client.use_urls(urls)
        if self.urls_file is not None:
            try:
                self.urls_file.save(urls)
            except OSError as exc:  # the list in memory still serves; the next start uses the config's
                log.warning("cannot keep the provider URLs in %s: %s", self.urls_file.path, exc.strerror or exc)
        self.status.set(provider_urls=urls)

    def _notify_archive(self, archive: Archive) -> None:
        self._adopt_urls(archive)
        if self.on_archive is None:
            return
        try:
            self.on_archive(archive)
        except GrouptunError as exc:
            log.error("applying archive version %d: %s", archive.version, exc)

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
        self.status.contact_ok()
        if signed is None:
            self._waiting = True
            log.info("waiting for a second member: the provider opens the group's first epoch "
                     "(listing our start challenge) when one joins")
            self.status.set(phase="waiting for members")
            return False
        if not self.accept(signed, challenge):
            raise EpochRejected("challenge", "start answered without a new epoch")
        return True

    def _wait_for_members(self, challenge: bytes) -> bool:
        version = self.archive.version if self.archive is not None else 0
        signed = self.client.watch(version, timeout=self.watch_timeout)
        self.status.contact_ok()
        if signed is None:
            return False
        archive = self._verified(signed)
        if archive.epoch is None:
            self._accept(archive)  # membership/addresses only
            return False
        self._waiting = False
        if not lists_challenge(archive, challenge):
            log.info("epoch %d does not list our start challenge: asking for a start again", archive.epoch.epoch)
            self._record(archive)
            return False
        return self._accept(archive, challenge)

    # --- after start ---
    def step(self) -> None:
        """One round after start: requests and report, then one long-poll (tests; run() splits them)."""
        self.service_requests()
        self.watch_once()

    def service_requests(self) -> None:
        """The request thread's round: the voucher renewed when due, then the session's rekey requests and the
        report (:meth:`RequestForwarder.service`)."""
        if self.vouches is not None:
            self.vouches.renew_if_due()  # before it expires (a fetch at most every few minutes)
        self.requests.service()

    def watch_once(self) -> None:
        """A requested fetch, then one long-poll; installs what arrives (the watch thread)."""
        if self.requests.wanted("fetch"):
            signed = self.client.archive()
            self.requests.done("fetch")
            self._handle(signed)
        version = self.archive.version if self.archive else 0
        signed = self.client.watch(version, timeout=self.watch_timeout)
        self.status.contact_ok()
        if signed is not None:
            self._handle(signed)

    def _handle(self, signed: bytes) -> None:
        self.status.contact_ok()
        self.accept(signed)

    def request_loop(self, stop: threading.Event, done: threading.Event | None = None) -> None:
        """Thread body beside the watch (:func:`grouptun.control.planeloops.request_loop`)."""
        planeloops.request_loop(self, stop, done)

    def run(self, stop: threading.Event) -> None:
        """Thread body: start, then watch until ``stop`` (:func:`grouptun.control.planeloops.run`)."""
        planeloops.run(self, stop)
