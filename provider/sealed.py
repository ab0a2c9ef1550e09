"""Sealed data at the provider: blobs stored under a DATA-ID for listed recipients (issue 20).

The provider holds ciphertext only. A member seals the file itself under a
fresh data key and wraps that key per recipient with HPKE to the KEM keys of
the signed archive (``grouptun.core.sealeddata``); what arrives here is the
blob, whose header the provider parses only to check that it names this
group, this DATA-ID and the announced recipients.

Upload (each step a signed member request, ``provider/sealed_routes.py``)::

    reserve(size, recipients, ttl)   size limit (413) and group quota (409) checked first;
                                     a DATA-ID and a row that nobody can read yet
    put_part(n, bytes)               one part of PART_SIZE bytes (the last: the rest) per request,
                                     each stored in a transaction of its own once its signature
                                     and length checked (a cut request stores nothing)
    commit()                         all parts there: the blob becomes visible, its TTL starts

A reservation not committed within UPLOAD_WINDOW (counted from its last part)
is invisible and goes with the next retention run, as do blobs past their
TTL; reads refuse expired blobs before that.

Storage: in the database (tables ``sealed`` and ``sealed_parts``), not the
state dir: the database is the one place all provider replicas share, a part
commits atomically with its row, and backups of the database carry the blobs.
Cost: blobs count towards the database's size; parts bound each row and each
transaction to PART_SIZE.

Config keys in ``STATE/provider.json`` (a missing key means its default)::

    "sealed_max_blob_bytes": 2147483648      one blob, header and tags included (1 .. 2**40)
    "sealed_group_quota_bytes": 8589934592   all blobs of a group, reservations included (1 .. 2**44)
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import Callable

from sqlalchemy import delete, func, insert, select, update

from grouptun.core import sealeddata
from grouptun.errors import SealedDataError
from provider.errors import Conflict, Forbidden, InvalidInput, NotFound, PayloadTooLarge
from provider.retention import bounded_setting
from provider.store import Store, add_audit, group_row, member_rows
from provider.tables import sealed, sealed_parts

# A part's path below /v1/groups/G: the member route (sealed_routes.py), the relay's allow-list and media
# (linked.py) and its rate bucket (remote.py) all take it from here. 7 digits hold every index up to 2**20.
PART_TAIL = r"/sealed/[0-9a-f]{32}/parts/[0-9]{1,7}"

PART_SIZE = 4 * 1024 * 1024
UPLOAD_WINDOW = 600.0
TTL_MIN, TTL_MAX = 60.0, 366 * 86400.0
MAX_BLOB = ("sealed_max_blob_bytes", 1, 2**40, 2 * 1024**3)
GROUP_QUOTA = ("sealed_group_quota_bytes", 1, 2**44, 8 * 1024**3)


@dataclass(frozen=True)
class SealedLimits:
    max_blob: int = MAX_BLOB[3]
    group_quota: int = GROUP_QUOTA[3]

    @classmethod
    def from_config(cls, config: dict) -> "SealedLimits":
        """Validated from ``provider.json``'s dict; ConfigError names the key at fault."""
        return cls(int(bounded_setting(config, MAX_BLOB, (int,), "a whole number of bytes")),
                   int(bounded_setting(config, GROUP_QUOTA, (int,), "a whole number of bytes")))

    def to_config(self) -> dict:
        return {MAX_BLOB[0]: self.max_blob, GROUP_QUOTA[0]: self.group_quota}


def parse_data_id(text: str) -> bytes:
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raw = b""
    if len(raw) != 16 or text != raw.hex():
        raise InvalidInput("DATA-ID must be 32 lowercase hex digits")
    return raw


def part_count(size: int) -> int:
    return -(-size // PART_SIZE)


class SealedData:
    """The operations of the routes; each one transaction, authorised by the (verified) member name."""

    def __init__(self, store: Store, limits: SealedLimits, clock: Callable[[], float] = time.time,
                 rand: Callable[[int], bytes] = os.urandom) -> None:
        self.store, self.limits, self.clock, self.rand = store, limits, clock, rand

    def reserve(self, group: str, sender: str, size: int, recipients: list[str], ttl: float) -> dict:
        if size > self.limits.max_blob:
            raise PayloadTooLarge(f"sealed data of {size} bytes is over this provider's limit of "
                                  f"{self.limits.max_blob} bytes per blob ({MAX_BLOB[0]})")
        if not 1 <= size or not TTL_MIN <= ttl <= TTL_MAX:
            raise InvalidInput(f"size must be >= 1 and ttl {TTL_MIN:g}..{TTL_MAX:g} seconds")
        if not recipients or len(set(recipients)) != len(recipients):
            raise InvalidInput("recipients: one or more distinct member names")
        now, data_id = self.clock(), self.rand(16)
        with self.store.write() as conn:
            g = _group(conn, group)
            unknown = sorted(set(recipients) - {r.name for r in member_rows(conn, g.id)})
            if unknown:
                raise InvalidInput(f"recipients not in group {group!r}: {', '.join(unknown[:5])}")
            used = conn.execute(select(func.coalesce(func.sum(sealed.c.size), 0)).where(
                sealed.c.group == g.id, sealed.c.expires_at > now)).scalar_one()
            if used + size > self.limits.group_quota:
                raise Conflict(f"group quota exceeded: {used} of {self.limits.group_quota} bytes in use, "
                               f"{size} more do not fit ({GROUP_QUOTA[0]})")
            conn.execute(insert(sealed).values(
                group=g.id, data_id=data_id, sender=sender, recipients=json.dumps(recipients), size=size,
                parts=part_count(size), created_at=now, expires_at=now + UPLOAD_WINDOW, ttl=ttl, complete=0))
        return {"data_id": data_id.hex(), "group_id": g.group_id.hex(), "part_size": PART_SIZE,
                "parts": part_count(size)}

    def put_part(self, group: str, sender: str, data_id: bytes, part: int, data: bytes) -> None:
        now = self.clock()
        with self.store.write() as conn:
            g = _group(conn, group)
            row = self._uploading(conn, g.id, sender, data_id, now)
            if not 0 <= part < row.parts:
                raise InvalidInput(f"part {part} out of range: this blob has parts 0..{row.parts - 1}")
            expected = min(PART_SIZE, row.size - part * PART_SIZE)
            if len(data) != expected:
                raise InvalidInput(f"part {part} must be {expected} bytes, got {len(data)} (truncated?)")
            if part == 0:
                _check_header(data, g, data_id, json.loads(row.recipients))
            if conn.execute(select(sealed_parts.c.part).where(sealed_parts.c.blob == row.id,
                                                              sealed_parts.c.part == part)).first():
                raise Conflict(f"part {part} is stored already")  # writers are serialised: no race
            conn.execute(insert(sealed_parts).values(blob=row.id, part=part, bytes=data))
            conn.execute(update(sealed).where(sealed.c.id == row.id).values(expires_at=now + UPLOAD_WINDOW))

    def commit(self, group: str, sender: str, data_id: bytes) -> dict:
        now = self.clock()
        with self.store.write() as conn:
            g = _group(conn, group)
            row = self._uploading(conn, g.id, sender, data_id, now)
            stored = conn.execute(select(func.count()).select_from(sealed_parts)
                                  .where(sealed_parts.c.blob == row.id)).scalar_one()
            if stored != row.parts:
                raise Conflict(f"upload incomplete: {stored} of {row.parts} parts stored")
            conn.execute(update(sealed).where(sealed.c.id == row.id).values(complete=1, expires_at=now + row.ttl))
            add_audit(conn, now, f"member:{sender}", "sealed-store", group, data_id=data_id.hex(), size=row.size,
                      recipients=len(json.loads(row.recipients)), ttl=row.ttl)
        return self.describe(group, sender, data_id)

    def listing(self, group: str, member: str) -> list[dict]:
        """Blobs ``member`` may fetch or delete (recipient or sender), oldest first."""
        now = self.clock()
        with self.store.read() as conn:
            g = _group(conn, group)
            rows = conn.execute(select(sealed).where(sealed.c.group == g.id, sealed.c.complete == 1,
                                                     sealed.c.expires_at > now).order_by(sealed.c.id))
            return [_entry(r) for r in rows if member == r.sender or member in json.loads(r.recipients)]

    def describe(self, group: str, member: str, data_id: bytes) -> dict:
        with self.store.read() as conn:
            return _entry(self._readable(conn, group, member, data_id, sender_too=True))

    def get_part(self, group: str, member: str, data_id: bytes, part: int) -> bytes:
        with self.store.read() as conn:
            row = self._readable(conn, group, member, data_id, sender_too=False)
            data = conn.execute(select(sealed_parts.c.bytes).where(sealed_parts.c.blob == row.id,
                                                                   sealed_parts.c.part == part)).scalar()
        if data is None:
            raise NotFound(f"part {part} out of range: this blob has parts 0..{row.parts - 1}")
        return data

    def delete(self, group: str, member: str, data_id: bytes) -> None:
        """The sender deletes its blob (also an unfinished upload); recipients cannot."""
        now = self.clock()
        with self.store.write() as conn:
            g = _group(conn, group)
            row = _row(conn, g.id, data_id, group)
            if row.sender != member:
                raise Forbidden("only the member that sealed it deletes sealed data")
            conn.execute(delete(sealed_parts).where(sealed_parts.c.blob == row.id))
            conn.execute(delete(sealed).where(sealed.c.id == row.id))
            add_audit(conn, now, f"member:{member}", "sealed-delete", group, data_id=data_id.hex())

    def prune(self, now: float | None = None) -> int:
        """Delete expired blobs and abandoned uploads; the number of blobs deleted (the retention job)."""
        now = self.clock() if now is None else now
        with self.store.write() as conn:
            ids = [r.id for r in conn.execute(select(sealed.c.id).where(sealed.c.expires_at <= now))]
            if ids:
                conn.execute(delete(sealed_parts).where(sealed_parts.c.blob.in_(ids)))
                conn.execute(delete(sealed).where(sealed.c.id.in_(ids)))
                add_audit(conn, now, "provider", "sealed-pruned", None, blobs=len(ids))
        return len(ids)

    def _uploading(self, conn, group_pk: int, sender: str, data_id: bytes, now: float):
        row = _row(conn, group_pk, data_id, "this group")
        if row.sender != sender:
            raise Forbidden("only the member that reserved this DATA-ID uploads to it")
        if row.complete:
            raise Conflict("this sealed data is complete already")
        if row.expires_at <= now:
            raise Conflict(f"upload window expired ({UPLOAD_WINDOW:g} s without a part): seal again")
        return row

    def _readable(self, conn, group: str, member: str, data_id: bytes, sender_too: bool):
        g = _group(conn, group)
        row = _row(conn, g.id, data_id, group)
        if not row.complete or row.expires_at <= self.clock():
            raise NotFound(f"no sealed data {data_id.hex()} in group {group!r}")
        if member not in json.loads(row.recipients) and not (sender_too and member == row.sender):
            raise Forbidden("this sealed data is not sealed to you")
        return row


def _group(conn, name: str):
    g = group_row(conn, name)
    if g is None:
        raise NotFound(f"no group {name!r}")
    return g


def _row(conn, group_pk: int, data_id: bytes, group: str):
    """The blob of ``data_id`` in this group; another group's DATA-ID is answered as unknown."""
    row = conn.execute(select(sealed).where(sealed.c.group == group_pk, sealed.c.data_id == data_id)).first()
    if row is None:
        raise NotFound(f"no sealed data {data_id.hex()} in group {group!r}")
    return row


def _check_header(first_part: bytes, g, data_id: bytes, recipients: list[str]) -> None:
    try:
        header, _ = sealeddata.parse_header(first_part)
    except SealedDataError as exc:
        raise InvalidInput(f"part 0 does not begin with a sealed-data header: {exc}") from exc
    if header.group_id != g.group_id or header.data_id != data_id:
        raise InvalidInput("the blob's header names another group or DATA-ID")
    if list(header.names()) != recipients:
        raise InvalidInput("the blob's header lists other recipients than were announced")


def _entry(row) -> dict:
    return {"data_id": row.data_id.hex(), "sender": row.sender, "recipients": json.loads(row.recipients),
            "size": row.size, "parts": row.parts, "part_size": PART_SIZE, "created_at": row.created_at,
            "expires_at": row.expires_at}
