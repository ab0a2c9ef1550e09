"""Every admin action as one function returning its ``--json`` shape (README "Admin --json shapes").

The local admin CLI (``provider/cli.py``, ``cli_membership.py``) and the
remote admin API (``provider/admin_routes.py``) both call these, so a
command prints the same JSON whether it wrote the database directly or
went over HTTPS; the rules themselves are in ``membership.py``,
``policy.py``, ``exportrules.py`` and ``service.py``. Durations arrive in
seconds (the CLI parses ``4h``); ``expires_in`` is relative to the
provider's clock. ``join_token(secret)`` makes the printable join token
(``cli_membership.token_maker``).
"""

from __future__ import annotations

from typing import Callable, Mapping

from provider import linkremove, membership, remote
from provider.errors import InvalidInput, NotFound
from provider.members import foreign_link


def group_create(provider, join_token: Callable[[str], str], name: str, cidr: str, members: list[str],
                 token_ttl: float, attributes: Mapping[str, str], member_ttl: float | None,
                 owner: Mapping[str, str], expires_in: float | None, owners: list[str], **options) -> dict:
    """AddGroup: ``{"group": <group show>, "tokens": [{"member", "id", "token"}]}``."""
    issued = membership.create_group(
        provider, name, cidr, members, token_ttl, attributes, member_ttl, owner,
        None if expires_in is None else provider.clock() + expires_in, owners, **options)
    return {"group": group_show(provider, name), "tokens": [{"member": t["member"], "id": t["id"], "token": join_token(t["secret"])}
                                       for t in issued]}


def group_show(provider, name: str) -> dict:
    """The group, its metadata, and the members whose start waits for an epoch (a group of one member has none:
    PROTOCOL.md 1 needs 2), so an admin sees why a lone member's daemon is not up yet."""
    return {**provider.show_group(name), "metadata": membership.group_metadata(provider, name),
            "waiting_starts": sorted(provider.pending_starts(name))}


def group_set_meta(provider, name: str, owner: Mapping[str, str] | None, expires_in: float | None,
                   no_expiry: bool, owners: list[str] | None) -> dict:
    return membership.set_group_metadata(provider, name, owner,
                                         None if expires_in is None else provider.clock() + expires_in,
                                         no_expiry, owners)


def group_rekey(provider, name: str, actor: str) -> dict:
    opened = provider.open_epoch(name, "admin", actor)
    return {"group": name, "epoch": opened.epoch, "version": opened.version}


def invite(provider, join_token: Callable[[str], str], group: str, member: str | None, ttl: float,
           uses: int | None, attributes: Mapping[str, str], member_ttl: float | None) -> dict:
    """A one-time token (``uses`` None) or a reusable key: the ``invite --json`` shape.

    In a partner's group (``link accept``) the token is the partner's to make, through this provider; a
    ``NAME@LINK`` member gets no token (its own provider enrolls it over the link): ``token`` is None."""
    if uses is None and remote.remote_group(provider, group) is not None:
        if attributes or member_ttl is not None:
            raise InvalidInput("attributes and --member-ttl of a partner's group are its owner's to set")
        return {"token": join_token(remote.invite(provider, group, member, ttl)), "group": group, "member": member}
    secret, ident = membership.invite(provider, group, member, ttl, uses, attributes, member_ttl)
    token = join_token(secret) if member is None or foreign_link(member) is None else None
    return {"token": token, "id": ident, "group": group, "member": member, "reusable": uses is not None,
            "max_uses": 1 if uses is None else uses, "expires_at": provider.clock() + ttl,
            "attributes": dict(attributes), "member_ttl": member_ttl}


def member_show(provider, group: str, name: str) -> dict:
    rows = [m for m in provider.list_members(group) if m["name"] == name]
    if not rows:
        raise NotFound(f"no member {name!r} in group {group!r}")
    return rows[0]


def member_remove(provider, group: str, name: str) -> dict:
    """A partner's group (``link accept``): removed here, and at the owner once it confirms (``pending``)."""
    if remote.remote_group(provider, group) is not None:
        return linkremove.remove_member(provider, group, name)
    opened = provider.remove_member(group, name)
    return {"removed": name, "group": group, "epoch": opened.epoch, "version": opened.version}


def route_change(provider, action: str, group: str, member: str, prefix: str) -> dict:
    """``route approve`` / ``route remove``: each opens a new epoch."""
    change = provider.approve_route if action == "approve" else provider.remove_route
    prefix, opened = change(group, member, prefix)
    return {"group": group, "member": member, "prefix": prefix, "action": action, "epoch": opened.epoch,
            "version": opened.version}
