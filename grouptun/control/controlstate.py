"""What ``grouptun status`` shows about the control path, and what each answer or failure does to it.

:class:`ControlStatus` holds the current :class:`ControlState` (replaced,
never mutated, so a reader on another thread sees one whole state) and is
the one place a provider answer, a refusal or a failure of the control path
(:mod:`grouptun.control.plane`, :mod:`grouptun.control.planeloops`) turns
into phase, error, counts and backoff.

Provider answers: each one marks the provider reachable, notes the URL that
answered (``provider_url``: the client fails over between the provider's
URLs itself) and resets the backoff; a refusal (``ProviderRefused``, e.g. a
401) is the provider's decision, logged at error and handed to
``on_trouble`` (systemd's STATUS=), and the next good answer clears it.
An epoch the acceptance order refuses (``EpochRejected``) is counted by
its step (``refusals``) and logged.

A statefile write the disk has no room for (StateDirFull) is retried with
the same backoff as an unreachable provider, not reset by the provider's
answers meanwhile (each retry fetches the sealed salt again: an Argon2id
check at the provider); ``state_dir_full`` tells ``status`` until an
epoch is recorded again.

A group a linked provider owns (PROTOCOL.md 8): our provider relays to the
owner; when it answers that it cannot reach it (``LinkUnavailable``, its
503 naming the link's state) the held epoch stays and ``link`` says
"unreachable" since when and why; the next relayed answer makes it "up"
again.

A member superseded by another daemon or removed by the provider ends in
phase "superseded" or "removed" (with the reason in ``removed``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable

from grouptun.control.backoff import Backoff
from grouptun.errors import (EpochRejected, InstanceSuperseded, LinkUnavailable, MemberRemoved, ProviderError,
                             ProviderRefused, StateDirFull)

log = logging.getLogger("grouptun.control")


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
    state_dir_full: bool = False            # the last statefile write found no room (retrying)
    provider_url: str | None = None         # the provider URL (replica) that answered last
    provider_urls: tuple = ()               # the URLs asked, in order (join token's, or the newest archive's)
    removed: str | None = None              # why the provider removed our member (then phase "removed")
    link: dict | None = None                # a group a linked provider owns: our provider's link to it as last
                                            # seen ({"state": up | unreachable | unknown, "since", "reason",
                                            # "name", "seen_at"}); None: an ordinary group


class ControlStatus:
    """The control path's :class:`ControlState` and its transitions (both control threads write it)."""

    def __init__(self, *, client, backoff: Backoff, linked: bool, wall: Callable[[], float],
                 on_trouble: Callable[[str | None], None], metrics=None) -> None:
        self.client, self.backoff, self.linked = client, backoff, linked
        self._wall, self.on_trouble, self.metrics = wall, on_trouble, metrics
        self.state = ControlState(provider_urls=tuple(client.urls), link={"state": "unknown"} if linked else None)
        self._refusals: dict[str, int] = {}

    def set(self, **changes) -> None:
        values = {**vars(self.state), **changes}
        values["refusals"] = dict(self._refusals)
        self.state = ControlState(**values)

    def contact_ok(self) -> None:
        """The provider answered."""
        if not self.state.provider_ok:
            log.info("provider reachable")
        if self.state.last_error is not None:
            self.on_trouble(None)
        answered = {"provider_ok": True, "last_contact": self._wall(), "provider_url": self.client.answered_by}
        if self.linked:  # our provider relayed the owner's answer: its link to the owner is up
            if self.state.link is not None and self.state.link.get("state") == "unreachable":
                log.info("our provider reaches the group's owner again")
            answered["link"] = {"state": "up", "seen_at": answered["last_contact"]}
        if self.state.state_dir_full:  # the provider answers, but the retry is for the disk: keep backing off
            self.set(**answered)
            return
        self.set(**answered, last_error=None, retry_in=None)
        self.backoff.reset()

    def recorded(self, epoch: int) -> None:
        """The statefile took ``epoch``: a full state dir has room again."""
        if self.state.state_dir_full:
            log.info("state dir has room again: epoch %d recorded", epoch)
            self.set(state_dir_full=False, last_error=None, retry_in=None)

    def installed(self, archive_version: int, epoch: int) -> None:
        self.set(archive_version=archive_version, epoch=epoch, epoch_installed_at=self._wall(), phase="running")

    def refused(self, exc: EpochRejected) -> None:
        """The acceptance order refused an epoch at ``exc.step``."""
        if self.metrics is not None:
            self.metrics.epoch_refused(exc.step)
        self._refusals[exc.step] = self._refusals.get(exc.step, 0) + 1
        log.warning("%s", exc)
        self.set(last_error=str(exc))

    def stopped(self, exc: InstanceSuperseded | MemberRemoved) -> None:
        """Another daemon owns our member, or the provider removed it: the control path ends."""
        log.error("%s; this daemon stopped sending and exits (status %d)", exc, exc.exit_code)
        if isinstance(exc, MemberRemoved):
            self.set(phase="removed", last_error=str(exc), removed=str(exc))
        else:
            self.set(phase="superseded", last_error=str(exc))

    def refused_by_provider(self, exc: ProviderRefused) -> None:
        log.error("%s", exc)
        self.set(last_error=str(exc), provider_ok=True)
        self.on_trouble(str(exc))

    def link_down(self, exc: LinkUnavailable) -> None:
        """Our provider answered but cannot reach the group's owner: we keep the epoch we hold (PROTOCOL.md 8)."""
        link = exc.link
        if self.state.link is None or self.state.link.get("state") != "unreachable":
            log.warning("our provider cannot reach the group's owner: %s (the held epoch keeps carrying traffic)",
                        exc.reason)
        self.set(provider_ok=True, last_contact=self._wall(), provider_url=self.client.answered_by,
                 last_error=str(exc), link={"state": "unreachable" if link.get("contact") != "up" else "up",
                                            "since": link.get("down_since"), "reason": link.get("last_failure"),
                                            "name": link.get("name"), "seen_at": self._wall()})

    def state_dir_full(self, exc: StateDirFull) -> None:
        if not self.state.state_dir_full:
            log.error("%s; retrying with backoff (the held epoch keeps carrying traffic)", exc)
        self.set(state_dir_full=True, last_error=str(exc))

    def provider_trouble(self, exc: ProviderError) -> None:
        """The provider did not answer (or not usably): logged once per distinct trouble."""
        if self.state.provider_ok or self.state.last_error != str(exc):
            log.warning("provider trouble: %s (the data plane keeps running)", exc)
        self.set(provider_ok=False, last_error=str(exc))
