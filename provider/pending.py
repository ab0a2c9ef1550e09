"""Pending start challenges: daemons waiting for an epoch that lists their challenge.

A group with fewer than 2 members has no epoch (PROTOCOL.md 1), so a
daemon's start challenge cannot be answered yet; it waits until an epoch
lists it. Every start is recorded this way first (table ``starts``,
provider/store.py), so an epoch opened by any replica lists the starts that
reached the others. One challenge per member: a later start of the same
member replaces the earlier one (its daemon was started again, or
elsewhere: PROTOCOL.md 4, one running instance per member; two challenges
of one member are never answered by one epoch). Limits: an epoch lists at
most ``MAX_PENDING_STARTS`` of them (the newest), each for
``PENDING_START_TTL`` seconds; a daemon whose challenge was left out
starts again when it sees an epoch without it.
"""

from __future__ import annotations

MAX_PENDING_STARTS = 256  # per group and epoch; the newest are listed (the others' daemons start again)
PENDING_START_TTL = 600.0
