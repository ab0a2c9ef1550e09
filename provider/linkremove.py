"""Removing a linked provider's member at its home (issue 19 item 6; PROTOCOL.md 8): both ends.

At bob's home provider H (``grouptun-provider member remove ALIAS bob``,
``ALIAS`` a group the owner O holds, ``link accept``):

- :func:`remove_member` drops bob's record here and queues the removal for
  O in the same transaction (table ``link_removals``): from that commit H
  relays nothing more for him (his signed requests get 410 with the reason,
  from ``remote_removed``, so his daemon stops as a removed member's does),
  and the removal survives a restart. Audited ``member-remove``. Then it
  delivers at once (:func:`deliver`; the row's first retry time is
  ``RETRY_BASE`` later, so the timer of a running server does not send it
  a second time meanwhile, and picks it up if this process died first): ``POST
  /v1/links/groups/GROUP/members/remove`` with ``gt-member: bob`` and the
  body ``{}``, RFC 9421-signed as every link request. O's 200 (removed, a
  new epoch without him) or 404 (nothing left to remove: O's admin was
  first) confirms it: the row goes, audited ``link-remove-confirmed``.
  A refusal no retry can change (``REFUSING``) ends it too, audited
  ``link-remove-refused``. Anything else (unreachable, 5xx, 401) keeps it
  with ``attempts`` and the reason, audited ``link-remove-failed``, and
  :func:`retry_due` (the
  provider's timer, ``provider/hub.py``) tries again after a backoff
  doubling from ``RETRY_BASE`` to ``RETRY_MAX``, ``RETRY_BATCH`` rows per
  tick. ``link list`` shows what is pending per link (``provider/links.py``).

At O: :func:`remove_forwarded` takes the request (``provider/link_routes.py``;
the link caller's signature checked first) for ``bob@LINK`` of the signing
link only: a member of that name whose ``home`` is another provider is 403,
none at all 404, both audited as refusals. It removes him and opens the
next epoch in one transaction, audited ``link-member-remove``.
"""

from __future__ import annotations

import json

from sqlalchemy import delete, insert, select, update

from provider import linked, linkstate, membership
from provider import members as mem
from provider.errors import Forbidden, LinkError, NotFound
from provider.store import add_audit
from provider.tables import link_removals, links, members, remote_groups, remote_members, remote_removed

RETRY_BASE = 2.0     # seconds before the first retry; doubled per failed attempt
RETRY_MAX = 300.0    # the longest wait between two attempts
RETRY_BATCH = 32     # removals tried per timer tick (each a bounded HTTPS request)
TICK_BUDGET = 20.0   # seconds of one timer tick spent delivering: the tick's other timers must not wait on a dead owner
# A delivery under way owns its row this long (longer than one request may take: remote.py's connect and answer
# timeouts), so the CLI's own attempt and the server's timer never send the same removal twice at once.
IN_FLIGHT = 30.0
CONFIRMING = (200, 404)  # removed now, or already gone at the owner
REFUSING = (400, 403, 410, 422)  # the owner will never take this one: retrying cannot help


def remove_member(provider, alias: str, name: str) -> dict:
    """Home side: remove ``name`` from remote group ``alias`` here and tell the owner (or queue it)."""
    mem.check_member_name(name)
    now = provider.clock()
    with provider.store.write() as conn:
        g = conn.execute(select(remote_groups).where(remote_groups.c.name == mem.check_group_name(alias))).first()
        row = None if g is None else conn.execute(select(remote_members).where(
            remote_members.c.remote_group == g.id, remote_members.c.name == name)).first()
        if row is None:
            raise NotFound(f"no member {name!r} in group {alias!r}")
        conn.execute(delete(remote_members).where(remote_members.c.id == row.id))
        conn.execute(insert(remote_removed).values(  # his later requests: 410 with the reason, as a local member
            remote_group=g.id, owner_name=row.owner_name, ed25519_public=row.ed25519_public, removed_at=now,
            reason=f"{name!r} was removed from {alias!r} by its home provider's admin"))
        queued = conn.execute(insert(link_removals).values(
            link=g.link, remote_name=g.remote_name, alias=alias, name=name, owner_name=row.owner_name,
            created_at=now, attempts=0, next_at=now + IN_FLIGHT).returning(link_removals.c.id)).scalar_one()
        add_audit(conn, now, "admin", "member-remove", alias, member=name, link=g.link, as_name=row.owner_name)
    answer = deliver(provider, queued)
    refused = None if answer is None else answer.get("refused")
    return {"removed": name, "group": alias, "link": g.link, "pending": answer is None,
            "epoch": None if answer is None else answer.get("epoch"),
            "version": None if answer is None else answer.get("version"),
            **({"refused": refused} if refused else {})}


def deliver(provider, ident: int) -> dict | None:
    """Send queued removal ``ident`` to the owner: O's answer once confirmed (row gone), ``{"refused": reason}``
    once O refused it for good (row gone: audited ``link-remove-refused``), None if still pending."""
    with provider.store.read() as conn:
        row = conn.execute(select(link_removals).where(link_removals.c.id == ident)).first()
        link = None if row is None else conn.execute(select(links).where(links.c.name == row.link)).first()
    if row is None:
        return None
    try:
        if link is None or link.provider_keys is None:
            raise LinkError(f"link {row.link!r} is gone or not checked")
        url = f"{link.url}/v1/links/groups/{row.remote_name}/members/remove"
        status, answer = linked.exchange(provider, link, provider.link_send(link), "POST", url, row.name, b"{}")
    except LinkError as exc:
        _failed(provider, row, exc.reason)
        return None
    said = f"{link.url} answered {status}: {answer[:120].decode('utf-8', 'replace')}"
    if status not in CONFIRMING + REFUSING:
        _failed(provider, row, said)
        return None
    now = provider.clock()
    with provider.store.write() as conn:
        conn.execute(delete(link_removals).where(link_removals.c.id == row.id))
        add_audit(conn, now, f"link:{row.link}",
                  "link-remove-confirmed" if status in CONFIRMING else "link-remove-refused", row.alias,
                  member=row.name, as_name=row.owner_name, status=status, attempts=row.attempts + 1,
                  **({} if status in CONFIRMING else {"reason": said[:200]}))
        linkstate.record(conn, row.link, now)
    if status in REFUSING:
        return {"refused": said[:200]}
    try:
        shown = json.loads(answer) if status == 200 else {}
    except ValueError:
        shown = {}
    return shown if isinstance(shown, dict) else {}


def _failed(provider, row, reason: str) -> None:
    now = provider.clock()
    attempts = row.attempts + 1
    wait = min(RETRY_MAX, RETRY_BASE * 2 ** min(attempts - 1, 16))
    with provider.store.write() as conn:
        conn.execute(update(link_removals).where(link_removals.c.id == row.id).values(
            attempts=attempts, next_at=now + wait, last_error=reason[:200]))
        add_audit(conn, now, f"link:{row.link}", "link-remove-failed", row.alias, member=row.name,
                  attempts=attempts, retry_in=wait, reason=reason[:200])


def retry_due(provider) -> int:
    """The timer's job: deliver up to RETRY_BATCH removals whose retry time came, for at most TICK_BUDGET
    seconds; how many the owner answered for good. Each row is claimed first (its retry time moved IN_FLIGHT
    ahead, only if still due), so no other attempt sends it meanwhile."""
    started = provider.clock()
    with provider.store.read() as conn:
        due = [r.id for r in conn.execute(select(link_removals.c.id).where(link_removals.c.next_at <= started)
                                          .order_by(link_removals.c.next_at).limit(RETRY_BATCH))]
    done = 0
    for ident in due:
        now = provider.clock()
        if now - started > TICK_BUDGET:
            break
        with provider.store.write() as conn:
            claimed = conn.execute(update(link_removals).where(
                link_removals.c.id == ident, link_removals.c.next_at <= now).values(next_at=now + IN_FLIGHT)).rowcount
        if claimed == 1:
            done += deliver(provider, ident) is not None
    return done


def remove_forwarded(provider, who: linked.Linked, group: str) -> dict:
    """Owner side: remove ``who.member@LINK`` at its home's request (only the link it came through)."""
    if mem.foreign_link(who.member) is not None:
        raise Forbidden(f"a linked provider speaks only for its own members, not {who.member!r}")
    name = mem.check_member_name(f"{mem.check_member_name(who.member)}@{who.link.name}")

    def mutate(conn, g, now):
        home = conn.execute(select(members.c.home).where(members.c.group == g.id, members.c.name == name)).first()
        if home is None:
            raise NotFound(f"no member {name!r} in group {group!r}")
        if home.home != who.link.keys_hash:
            raise Forbidden(f"{name!r} did not come through link {who.link.name!r}")
        membership.bury(conn, g, name, now, f"{name!r} was removed by its home provider ({who.link.name})")
        add_audit(conn, now, f"link:{who.link.name}", "link-member-remove", g.name, member=name)
        linkstate.record(conn, who.link.name, now)

    opened = provider.change_and_open(group, "remove", mutate)[1]
    return {"group": group, "removed": name, "epoch": opened.epoch, "version": opened.version}
