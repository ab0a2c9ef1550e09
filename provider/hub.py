"""Watch hub, start batching and the time-threshold ticker (the provider's background work).

Change notification: a poller reads every group's version from the DB
every ``POLL_INTERVAL`` (so admin CLI changes reach watchers within ~0.2 s)
and at once after this process's own writes; watchers wait on one asyncio
Event per group (no thread per watcher).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field

from starlette.concurrency import run_in_threadpool

from provider import membership
from provider.errors import ProviderFault
from provider.service import Provider

log = logging.getLogger("grouptun.provider")

POLL_INTERVAL = 0.2
START_WINDOW = 0.2
TICK_INTERVAL = 1.0
MAX_CHALLENGES_PER_EPOCH = 256


@dataclass
class _GroupState:
    version: int = 0
    archive: bytes | None = None
    event: asyncio.Event = field(default_factory=asyncio.Event)


class Hub:
    """Per-group archive cache and change events, fed by polling the DB."""

    def __init__(self, provider: Provider) -> None:
        self.provider = provider
        self.groups: dict[str, _GroupState] = {}
        self._kick = asyncio.Event()
        self.released = False  # the server is stopping: long-polls answer "unchanged" at once

    def release(self) -> None:
        """End every parked long-poll now (server shutdown) and every later one at once."""
        self.released = True
        for state in self.groups.values():
            state.event.set()

    def kick(self) -> None:
        self._kick.set()

    async def refresh(self) -> None:
        versions = await run_in_threadpool(self.provider.store.group_versions)
        for name, version in versions.items():
            state = self.groups.setdefault(name, _GroupState())
            if state.version != version:
                state.version, state.archive = await run_in_threadpool(self.provider.store.archive, name)
                state.event.set()
                state.event = asyncio.Event()

    async def run(self) -> None:
        while True:
            self._kick.clear()
            try:
                await self.refresh()
            except Exception:  # noqa: BLE001 -- keep notifying; the DB may be briefly locked
                log.exception("change poll failed")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._kick.wait(), POLL_INTERVAL)

    async def wait_change(self, group: str, version: int, timeout: float) -> bytes | None:
        deadline = time.monotonic() + timeout
        while True:
            state = self.groups.setdefault(group, _GroupState())
            # Only a newer version answers: a member that saw a version this database does
            # not have (restored from an older backup) waits for the next change.
            if state.version > version and state.archive is not None:
                return state.archive
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.released:
                return None
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(state.event.wait(), remaining)


class StartBatcher:
    """Starts within START_WINDOW of the first one share one new epoch -- of different members only.

    A member already in the collecting batch with another challenge (a
    second daemon of the same member, PROTOCOL.md 4) opens the next batch:
    each start of a member gets an epoch of its own for its new instance.
    A group's batches run one after another, in arrival order, so the
    member's latest start is the one its last epoch names.
    """

    def __init__(self, provider: Provider, hub: Hub) -> None:
        self.provider, self.hub = provider, hub
        self.pending: dict[str, tuple[dict[str, bytes], asyncio.Future]] = {}  # group -> collecting batch
        self._last: dict[str, asyncio.Future] = {}  # group -> the batch that runs last

    async def start(self, group: str, member: str, challenge: bytes) -> bytes | None:
        batch = self.pending.get(group)
        if (batch is None or len(batch[0]) >= MAX_CHALLENGES_PER_EPOCH
                or batch[0].get(member, challenge) != challenge):
            batch = self._new_batch(group)
        batch[0][member] = challenge
        return await asyncio.shield(batch[1])

    def _new_batch(self, group: str) -> tuple[dict[str, bytes], asyncio.Future]:
        loop = asyncio.get_running_loop()
        batch, after = ({}, loop.create_future()), self._last.get(group)
        self.pending[group] = batch
        self._last[group] = batch[1]
        loop.call_later(START_WINDOW, lambda: asyncio.ensure_future(self._run(group, batch, after)))
        return batch

    async def _run(self, group: str, batch, after: asyncio.Future | None) -> None:
        if after is not None:
            await asyncio.wait([after])  # its outcome is its own waiters'
        if self.pending.get(group) is batch:
            del self.pending[group]
        starts, future = batch
        try:
            opened = await run_in_threadpool(self.provider.start, group, dict(starts))
            future.set_result(None if opened is None else opened.archive)
        except Exception as exc:  # noqa: BLE001 -- handed to every waiter
            future.set_exception(exc)
            future.add_done_callback(lambda f: f.exception())  # waiters may all be gone
        if self._last.get(group) is future:
            del self._last[group]
        self.hub.kick()


async def tick(provider: Provider, hub: Hub) -> None:
    """Open epochs whose time threshold passed (members also ask; whoever is first wins); remove expired
    members; prune the audit log."""
    while True:
        await asyncio.sleep(TICK_INTERVAL)
        try:
            for group in await run_in_threadpool(provider.due_for_time_rekey):
                if await run_in_threadpool(provider.time_rekey, group):  # False: a member's rekey came first
                    hub.kick()
        except ProviderFault as exc:
            log.warning("time rekey: %s", exc.reason)
        except Exception:  # noqa: BLE001 -- the ticker must survive a locked DB
            log.exception("time rekey failed")
        try:  # temporary members whose time ended: a new epoch without them (provider/membership.py)
            if await run_in_threadpool(membership.expire_due, provider):
                hub.kick()
        except Exception:  # noqa: BLE001 -- as above; the next tick tries again
            log.exception("member expiry failed")
        try:
            await run_in_threadpool(provider.audit_pruner.maybe_prune)  # bounded: provider/retention.py
        except Exception:  # noqa: BLE001 -- as above; the next due run tries again
            log.exception("audit pruning failed")
