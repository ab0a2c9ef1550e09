"""Audit retention: the audit table is pruned by age and by row count.

Config keys in ``STATE/provider.json`` (``init`` writes the defaults; a
missing key means its default)::

    "audit_keep_days": 90        rows older than this many days go (1 .. 36500)
    "audit_keep_rows": 1000000   at most this many rows stay, the newest (1000 .. 10^9)

Sealed data past its TTL (and abandoned uploads) is pruned on the same
schedule: ``provider/sealed.py`` registers its job in :attr:`AuditPruner.also`.

Schedule: the server's ticker calls :meth:`AuditPruner.maybe_prune`; it
works at most once per ``PRUNE_INTERVAL`` (the first time at the first
tick), finds the newest row that has to go, then deletes up to it in
transactions of at most ``batch`` rows (so no writer waits long behind it),
at most ``max_batches`` per run; a run that hit that bound runs again at the
next tick instead of an interval later. Each run that deleted something
writes one ``audit-pruned`` row (count, last id, which bound), so a gap in
the log is visibly intended. The admin CLI never prunes.

Limits: deletion goes by ``id`` order (ids only grow), so rows whose ``ts``
is out of order (wall clock stepped back) are judged by the age of the
rows around them. Deleting frees pages for reuse; the file does not shrink
(no VACUUM, which would hold the database for its whole duration).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable

from sqlalchemy import delete, select

from grouptun.errors import ConfigError
from provider.store import Store, add_audit
from provider.tables import audit

DAYS = 86400.0
PRUNE_INTERVAL = 3600.0
PRUNE_BATCH = 5000
PRUNE_MAX_BATCHES = 20
KEEP_DAYS = ("audit_keep_days", 1, 36500, 90)
KEEP_ROWS = ("audit_keep_rows", 1000, 10**9, 1_000_000)


def bounded_setting(config: dict, spec: tuple, kinds: tuple[type, ...], unit: str):
    """``config[key]`` (or the default) of ``spec = (key, low, high, default)``; ConfigError names the key."""
    key, low, high, default = spec
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, kinds) or not low <= value <= high:
        raise ConfigError(key, f"must be {unit} from {low} to {high}, not {value!r} (provider.json)")
    return value


@dataclass(frozen=True)
class AuditRetention:
    """How much of the audit log to keep (both bounds apply)."""

    keep_days: float = KEEP_DAYS[3]
    keep_rows: int = KEEP_ROWS[3]

    @classmethod
    def from_config(cls, config: dict) -> "AuditRetention":
        """Validated from ``provider.json``'s dict; ConfigError names the key at fault."""
        return cls(float(bounded_setting(config, KEEP_DAYS, (int, float), "a number of days")),
                   int(bounded_setting(config, KEEP_ROWS, (int,), "a whole number of rows")))

    def to_config(self) -> dict:
        return {KEEP_DAYS[0]: self.keep_days, KEEP_ROWS[0]: self.keep_rows}


class AuditPruner:
    """Prunes ``store``'s audit table per ``retention`` on a bounded schedule (thread-safe)."""

    def __init__(self, store: Store, retention: AuditRetention, clock: Callable[[], float],
                 interval: float = PRUNE_INTERVAL, batch: int = PRUNE_BATCH,
                 max_batches: int = PRUNE_MAX_BATCHES) -> None:
        self.store, self.retention, self.clock = store, retention, clock
        self.interval, self.batch, self.max_batches = interval, batch, max_batches
        self._next_at: float | None = None  # None: at the first call
        self._lock = threading.Lock()  # one run at a time
        self.also: list[Callable[[float], int]] = []  # more pruning on the same schedule (sealed-data expiry)

    def maybe_prune(self) -> int:
        """Prune if due; the number of rows deleted (0 when not due)."""
        with self._lock:
            now = self.clock()
            if self._next_at is not None and now < self._next_at:
                return 0
            self._next_at = now + self.interval  # set first: a failing run is not retried every tick
            deleted, finished = self._run(now)
            for job in self.also:
                job(now)
            if not finished:
                self._next_at = now  # more is due: go on at the next call
            return deleted

    def _run(self, now: float) -> tuple[int, bool]:
        """(rows deleted, whether everything due went) for one bounded run."""
        cutoff = now - self.retention.keep_days * DAYS
        with self.store.read() as conn:
            last, bound = _last_id_to_drop(conn, cutoff, self.retention.keep_rows)
        if last is None:
            return 0, True
        deleted, finished = 0, False
        ids = select(audit.c.id).where(audit.c.id <= last).order_by(audit.c.id).limit(self.batch)
        for _ in range(self.max_batches):
            with self.store.write() as conn:
                gone = conn.execute(delete(audit).where(audit.c.id.in_(ids.scalar_subquery()))).rowcount
            deleted += gone
            if gone < self.batch:
                finished = True
                break
        if deleted:
            with self.store.write() as conn:
                add_audit(conn, now, "provider", "audit-pruned", None, rows=deleted, through_id=last, bound=bound,
                          keep_days=self.retention.keep_days, keep_rows=self.retention.keep_rows)
        return deleted, finished


def _last_id_to_drop(conn, cutoff: float, keep_rows: int) -> tuple[int | None, str]:
    """The highest audit id that has to go, and which bound says so ("age" or "rows"); None if none."""
    too_old = conn.execute(select(audit.c.id).where(audit.c.ts < cutoff).order_by(audit.c.id.desc())
                           .limit(1)).scalar()
    surplus = conn.execute(select(audit.c.id).order_by(audit.c.id.desc()).offset(keep_rows).limit(1)).scalar()
    if too_old is None and surplus is None:
        return None, ""
    if surplus is None or (too_old is not None and too_old >= surplus):
        return too_old, "age"
    return surplus, "rows"
