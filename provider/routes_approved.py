"""Subnet routes: the LAN prefixes an admin approved behind a member (a grouptun extension).

A member may ask for prefixes first (``[network] advertise_routes``, sent
by its daemon: :func:`request`); they are listed as ``requested`` and change
nothing until the admin approves them.

``grouptun-provider route approve GROUP MEMBER PREFIX`` stores the prefix
(table ``tables.subnet_routes``) and opens a new epoch whose archive lists it
in the member's entry (``routes``, PROTOCOL.md 2, grouptun extension), so
every member applies it on that archive: the others route the prefix to the
member and accept inner sources from it inside the prefix; the member itself
accepts destinations inside it (it forwards them into its LAN). ``route
remove`` takes one away the same way.

A prefix is refused (InvalidInput, nothing stored) unless it is one IP
network in strict form (no host bits), narrower than the default route, and
outside the group's overlay networks; and (Conflict) when it overlaps a
prefix approved for any member of the group (routing must stay one member
per address) or the member has :data:`MAX_ROUTES` already.
"""

from __future__ import annotations

import ipaddress

from sqlalchemy import delete, insert, select, update

from grouptun.core.archivemember import MAX_ROUTES
from provider.errors import Conflict, InvalidInput, NotFound
from provider.store import add_audit
from provider.tables import members, subnet_routes

__all__ = ["approve", "approved_routes", "check_prefix", "list_routes", "remove", "request"]


def check_prefix(text: str, cidr: str, cidr6: str | None) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """The network ``text`` names, or InvalidInput saying why it cannot be routed through a member."""
    try:
        network = ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        raise InvalidInput(f"prefix {text!r}: {exc}") from exc
    if network.prefixlen == 0:
        raise InvalidInput(f"prefix {text!r}: the default route cannot go through a member")
    for overlay in (cidr, cidr6):
        if overlay and ipaddress.ip_network(overlay).version == network.version \
                and network.overlaps(ipaddress.ip_network(overlay)):
            raise InvalidInput(f"prefix {text!r} overlaps the group's overlay network {overlay}")
    return network


def approved_routes(conn, group_pk: int) -> dict[str, tuple[str, ...]]:
    """member name -> its approved prefixes (sorted), for members that have any."""
    rows = conn.execute(select(members.c.name, subnet_routes.c.prefix)
                        .join(subnet_routes, subnet_routes.c.member == members.c.id)
                        .where(members.c.group == group_pk, subnet_routes.c.approved_at.is_not(None)))
    out: dict[str, list[str]] = {}
    for name, prefix in rows:
        out.setdefault(name, []).append(prefix)
    return {name: tuple(sorted(prefixes, key=_order)) for name, prefixes in out.items()}


def list_routes(conn, g) -> list[dict]:
    """Every route of group row ``g``: [{"member", "prefix", "state", "approved_at"}], by member and prefix;
    state "approved", or "requested" (asked for by the member, approved_at None)."""
    rows = conn.execute(select(members.c.name, subnet_routes.c.prefix, subnet_routes.c.approved_at)
                        .join(subnet_routes, subnet_routes.c.member == members.c.id)
                        .where(members.c.group == g.id))
    listed = [{"member": name, "prefix": prefix, "state": "requested" if at is None else "approved",
               "approved_at": at} for name, prefix, at in rows]
    return sorted(listed, key=lambda r: (r["member"], _order(r["prefix"])))


def approve(conn, g, member: str, text: str, now: float) -> str:
    """Store ``text`` as approved behind ``member`` of group row ``g`` (caller opens the epoch); the prefix."""
    network = check_prefix(text, g.cidr, g.cidr6)
    member_pk = _member_pk(conn, g, member)
    held = approved_routes(conn, g.id)
    for owner, prefixes in held.items():
        for other in map(ipaddress.ip_network, prefixes):
            if other.version == network.version and other.overlaps(network):
                if owner == member and other == network:
                    raise Conflict(f"{network} is approved behind {member} already")
                raise Conflict(f"{network} overlaps {other}, approved behind {owner}")
    if len(held.get(member, ())) >= MAX_ROUTES:
        raise Conflict(f"{member} has {MAX_ROUTES} approved routes already")
    asked = conn.execute(update(subnet_routes).where(subnet_routes.c.member == member_pk,
                                                     subnet_routes.c.prefix == str(network))
                         .values(approved_at=now)).rowcount
    if not asked:
        conn.execute(insert(subnet_routes).values(member=member_pk, prefix=str(network), approved_at=now))
    add_audit(conn, now, "admin", "route-approve", g.name, member=member, prefix=str(network))
    return str(network)


def request(conn, g, member: str, texts: list[str], now: float) -> list[str]:
    """The member's own list of prefixes it routes: replaces its requests not approved yet (approved
    ones stay until the admin removes them). InvalidInput for a bad prefix, nothing changed; the list."""
    if len(texts) > MAX_ROUTES:
        raise InvalidInput(f"prefixes: at most {MAX_ROUTES}")
    wanted = sorted({str(check_prefix(text, g.cidr, g.cidr6)) for text in texts}, key=_order)
    member_pk = _member_pk(conn, g, member)
    conn.execute(delete(subnet_routes).where(subnet_routes.c.member == member_pk,
                                             subnet_routes.c.approved_at.is_(None)))
    held = set(approved_routes(conn, g.id).get(member, ()))
    new = [prefix for prefix in wanted if prefix not in held]
    if new:
        conn.execute(insert(subnet_routes), [{"member": member_pk, "prefix": p, "approved_at": None} for p in new])
    add_audit(conn, now, f"member:{member}", "route-request", g.name, prefixes=wanted)
    return wanted


def remove(conn, g, member: str, text: str, now: float) -> str:
    """Take the approved ``text`` away from ``member`` (caller opens the epoch); NotFound if it was not."""
    try:
        prefix = str(ipaddress.ip_network(text, strict=True))
    except ValueError as exc:
        raise InvalidInput(f"prefix {text!r}: {exc}") from exc
    gone = conn.execute(delete(subnet_routes).where(subnet_routes.c.member == _member_pk(conn, g, member),
                                                    subnet_routes.c.prefix == prefix)).rowcount
    if not gone:
        raise NotFound(f"no approved route {prefix} behind {member!r}")
    add_audit(conn, now, "admin", "route-remove", g.name, member=member, prefix=prefix)
    return prefix


def _member_pk(conn, g, member: str) -> int:
    pk = conn.execute(select(members.c.id).where(members.c.group == g.id, members.c.name == member)).scalar()
    if pk is None:
        raise NotFound(f"no member {member!r} in group {g.name!r}")
    return pk


def _order(prefix: str) -> tuple:
    network = ipaddress.ip_network(prefix)
    return (network.version, network.network_address, network.prefixlen)
