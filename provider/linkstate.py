"""Each link's reachability as this provider last saw it (issue 19 item 6: ``status`` on both sides).

Every link request this provider makes (a forwarded member, a relayed
request, a removal, ``link check``) and every one it answers (a linked
provider's verified request) is recorded on the link's row in the
transaction that audits it: ``last_ok_at`` when the other side answered
(any HTTP status: the provider was there), ``last_failure_at`` and
``last_failure`` (the reason: a host and an exception name, never a
header or body) when it could not be reached, and ``down_since``, the
first failure after the last success (cleared by the next success).

:func:`shown` turns those into what ``link list`` prints: ``contact`` is
``unchecked`` (no link request either way yet), ``up`` or
``unreachable``; :func:`describe` is the one-line form (``unreachable
since 12:04:05 (reason)``) the home provider also puts in its 503 to a
member (``provider/remote.py``), so the member's ``grouptun status`` shows
the same words.
"""

from __future__ import annotations

import time

from sqlalchemy import select, update

from provider.tables import links

MAX_REASON = 200


def record(conn, link: str, now: float, failure: str | None = None) -> None:
    """Note a link request to or from ``link`` that got through (``failure`` None) or did not (its reason)."""
    if failure is None:
        values = {"last_ok_at": now, "down_since": None}
    else:
        row = conn.execute(select(links.c.down_since).where(links.c.name == link)).first()
        if row is None:  # the link was removed meanwhile: nothing to record on
            return
        values = {"last_failure_at": now, "last_failure": failure[:MAX_REASON],
                  "down_since": now if row.down_since is None else row.down_since}
    conn.execute(update(links).where(links.c.name == link).values(**values))


def failed(provider, link: str, reason: str) -> dict:
    """Record a failure in its own transaction (the caller's request is refused); the link's state after it."""
    now = provider.clock()
    with provider.store.write() as conn:
        record(conn, link, now, reason)
        row = conn.execute(select(links).where(links.c.name == link)).first()
    return {"name": link, "contact": "unreachable", "down_since": now, "last_failure": reason[:MAX_REASON]} \
        if row is None else {"name": link, **shown(row)}


def state(row) -> str:
    if row.down_since is not None:
        return "unreachable"
    return "unchecked" if row.last_ok_at is None else "up"


def shown(row) -> dict:
    """The link row's contact fields as ``link list --json`` prints them."""
    return {"contact": state(row), "last_ok_at": row.last_ok_at, "last_failure_at": row.last_failure_at,
            "last_failure": row.last_failure, "down_since": row.down_since}


def describe(contact: dict) -> str:
    """``up (last contact HH:MM:SS UTC)``, ``unchecked`` or ``unreachable since HH:MM:SS UTC (reason)`` of a
    :func:`shown` dict (the partner stays "up" here while it sends nothing: the time says how long ago)."""
    if contact["contact"] == "unreachable":
        return f"unreachable since {_clock(contact['down_since'])} ({contact['last_failure']})"
    if contact["contact"] == "up" and contact.get("last_ok_at") is not None:
        return f"up (last contact {_clock(contact['last_ok_at'])})"
    return contact["contact"]


def _clock(when: float) -> str:
    return time.strftime("%H:%M:%S UTC", time.gmtime(when))
