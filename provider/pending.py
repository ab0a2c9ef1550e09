"""Pending start challenges: daemons waiting for an epoch that lists their challenge.

A group with fewer than 2 members has no epoch (PROTOCOL.md 1), so a
daemon's start challenge cannot be answered yet; it waits until an epoch
lists it. Every start is recorded this way first (table ``starts``,
provider/tables.py), so an epoch opened by any replica lists the starts that
reached the others. One challenge per member: a later start of the same
member replaces the earlier one (its daemon was started again, or
elsewhere: PROTOCOL.md 4, one running instance per member; two challenges
of one member are never answered by one epoch). Limits: an epoch lists at
most ``MAX_PENDING_STARTS`` of them (the newest), each for
``PENDING_START_TTL`` seconds; a daemon whose challenge was left out
starts again when it sees an epoch without it.
"""

from __future__ import annotations

from sqlalchemy import delete, select
from sqlalchemy.engine import Connection

from provider.store import upsert
from provider.tables import starts

MAX_PENDING_STARTS = 256  # per group and epoch; the newest are listed (the others' daemons start again)
PENDING_START_TTL = 600.0


def record_start(conn: Connection, group_pk: int, member: str, challenge: bytes, expires_at: float) -> None:
    """A daemon's start challenge, pending until an epoch lists it; replaces the member's earlier one."""
    upsert(conn, starts, {"group": group_pk, "member": member, "challenge": challenge, "expires_at": expires_at},
           ["group", "member"], ["challenge", "expires_at"])


def pending_start_rows(conn: Connection, group_pk: int, now: float, limit: int) -> dict[str, bytes]:
    """The newest ``limit`` unexpired pending starts of the group (member -> challenge), oldest first."""
    rows = conn.execute(select(starts.c.member, starts.c.challenge).where(
        starts.c.group == group_pk, starts.c.expires_at > now).order_by(starts.c.expires_at.desc()).limit(limit))
    return dict(reversed([(r.member, r.challenge) for r in rows]))


def drop_starts(conn: Connection, group_pk: int, listed: dict[str, bytes], now: float) -> None:
    """Forget the starts an epoch listed (unless replaced meanwhile) and the expired ones."""
    for member, challenge in listed.items():
        conn.execute(delete(starts).where(starts.c.group == group_pk, starts.c.member == member,
                                          starts.c.challenge == challenge))
    conn.execute(delete(starts).where(starts.c.group == group_pk, starts.c.expires_at <= now))
