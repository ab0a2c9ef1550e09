"""The admin CLI's membership commands (issue 17; the operations are ``provider/membership.py``)::

    grouptun-provider group create NAME --cidr CIDR --members a,b,c [--token-ttl 1h] [--attr k=v]...
                                       [--member-ttl 8h] [--owner k=v]... [--expires 30d] [--json]
    grouptun-provider group set-meta NAME [--owner k=v]... [--owners a,b] [--expires 30d | --no-expiry] [--json]
    grouptun-provider invite GROUP MEMBER [--ttl 1h] [--attr k=v]... [--member-ttl 8h] [--json]
    grouptun-provider invite GROUP --reusable --uses 20 [--expires 24h] [--attr k=v]... [--member-ttl 8h] [--json]
    grouptun-provider tokens list GROUP [--json] | revoke GROUP ID [--json]
    grouptun-provider member list GROUP [--json] | show GROUP NAME [--json]
    grouptun-provider member extend GROUP NAME 4h [--json]
    grouptun-provider member set-attr GROUP NAME k=v... [--unset KEY]... [--json]
    grouptun-provider member remove GROUP NAME [--json]

``--json`` prints one JSON object (or list) whose keys are documented in
README.md ("Admin --json shapes") and only ever grow. Attributes use the
grammar of ``grouptun.core.attributes``; a bad one is refused before
anything is written, naming the pair.
"""

from __future__ import annotations

import json
import time

from grouptun.core import attributes as attrs
from provider import members as mem
from provider import membership, remote
from provider.errors import InvalidInput


def _print(value, as_json: bool, text: str) -> None:
    print(json.dumps(value, indent=2, sort_keys=True) if as_json else text)


def parse_attrs(values: list[str] | None, flag: str = "--attr") -> dict[str, str]:
    try:
        return attrs.parse(values or [])
    except ValueError as exc:
        raise InvalidInput(f"{flag}: {exc}") from exc


def _token_text(args, secret: str) -> str:
    from grouptun.core.archive import ProviderKeys
    from grouptun.core.jointoken import JoinToken
    from provider.keys import public_urls, read_config, tls_fingerprint

    paths = _paths(args)
    config = read_config(paths)
    keys = ProviderKeys.from_json(config["provider_keys"])
    urls = public_urls(config)  # the replicas' list (issue 16), when the provider has one
    return str(JoinToken(urls[0] if urls else config["url"], tls_fingerprint(paths), keys.fingerprint(), secret, urls))


def _paths(args):
    from provider.cli import _paths as paths

    return paths(args)


def _duration(text: str | None, what: str) -> float | None:
    from provider.cli import parse_duration

    return None if text is None else parse_duration(text, what)


def create_group(args, provider, options: dict) -> int:
    """``group create`` with ``--members``: AddGroup, one transaction, a token per member."""
    names = [n for n in (args.members or "").split(",") if n]
    if args.members is not None and not names:
        raise InvalidInput("--members needs at least one name (a,b,c)")
    expires = _duration(args.expires, "--expires")
    shown, issued = membership.create_group(
        provider, args.name, args.cidr, names, _duration(args.token_ttl, "--token-ttl"), parse_attrs(args.attr),
        _duration(args.member_ttl, "--member-ttl"), parse_attrs(args.owner, "--owner"),
        None if expires is None else provider.clock() + expires, _names(args.owners), **options)
    tokens = [{"member": t["member"], "id": t["id"], "token": _token_text(args, t["secret"])} for t in issued]
    shown["metadata"] = membership.group_metadata(provider, args.name)
    _print({"group": shown, "tokens": tokens}, args.json,
           json.dumps(shown, indent=2) + "\n" + "\n".join(f"{t['member']}\t{t['token']}" for t in tokens))
    return 0


def _names(text: str | None) -> list[str]:
    return [n for n in (text or "").split(",") if n]


def set_meta(args, provider) -> int:
    expires = _duration(args.expires, "--expires")
    meta = membership.set_group_metadata(provider, args.name, parse_attrs(args.owner, "--owner") if args.owner
                                         else None, None if expires is None else provider.clock() + expires,
                                         args.no_expiry, None if args.owners is None else _names(args.owners))
    _print(meta, args.json, f"group {args.name}: owner {attrs.render(meta['owner']) or '-'}, "
                            f"expires {_when(meta['expires_at'])}, provider {meta['provider_id']}")
    return 0


def invite(args, provider) -> int:
    if args.reusable and args.uses is None:
        raise InvalidInput("--reusable needs --uses N")
    if not args.reusable and (args.uses is not None or args.member is None):
        raise InvalidInput("give a MEMBER (a one-time token), or --reusable --uses N (a key for any name)")
    ttl = _duration(args.expires or args.ttl, "--expires" if args.expires else "--ttl")
    member_ttl = _duration(args.member_ttl, "--member-ttl")
    pairs = parse_attrs(args.attr)
    if not args.reusable and remote.remote_group(provider, args.group) is not None:  # a partner's group
        if pairs or member_ttl is not None:
            raise InvalidInput("attributes and --member-ttl of a partner's group are its owner's to set")
        token = _token_text(args, remote.invite(provider, args.group, args.member, ttl))
        _print({"token": token, "group": args.group, "member": args.member}, args.json, token)
        return 0
    secret, ident = membership.invite(provider, args.group, args.member, ttl, args.uses if args.reusable else None,
                                      pairs, member_ttl)
    link = None if args.member is None else mem.foreign_link(args.member)
    # NAME@LINK: nobody redeems the invitation by its secret, the member's own provider enrolls it over the link
    token = None if link is not None else _token_text(args, secret)
    text = token if link is None else (f"invited {args.member} to {args.group}: its own provider enrolls it over "
                                       f"link {link} (no token to hand over)")
    _print({"token": token, "id": ident, "group": args.group, "member": args.member, "reusable": args.reusable,
            "max_uses": args.uses if args.reusable else 1, "expires_at": provider.clock() + ttl,
            "attributes": pairs, "member_ttl": member_ttl}, args.json, text)
    return 0


def tokens(args, provider) -> int:
    if args.action == "list":
        rows = membership.list_tokens(provider, args.group)
        _print(rows, args.json, "\n".join(
            f"{t['id']}  {t['state']:<9} {'reusable' if t['reusable'] else 'one-time'} "
            f"member={t['member'] or '*'} uses={t['uses']}/{t['max_uses']} expires={_when(t['expires_at'])} "
            f"attributes={attrs.render(t['attributes']) or '-'}" for t in rows) or "(no tokens)")
    else:
        result = membership.revoke_token(provider, args.group, args.id)
        _print(result, args.json, f"token {args.id} revoked")
    return 0


def member(args, provider) -> int:
    """``member`` actions: list, show, extend, set-attr, remove."""
    if args.action in ("list", "show"):
        rows = [m for m in provider.list_members(args.group) if args.action == "list" or m["name"] == args.member]
        if args.action == "show" and not rows:
            from provider.errors import NotFound

            raise NotFound(f"no member {args.member!r} in group {args.group!r}")
        _print(rows if args.action == "list" else rows[0], args.json, "\n".join(_member_line(m) for m in rows))
    elif args.action == "extend":
        result = membership.extend(provider, args.group, args.member, _duration(args.by, "extend"))
        _print(result, args.json, f"{args.member}: member until {_when(result['expires_at'])}")
    elif args.action == "set-attr":
        result = membership.set_attributes(provider, args.group, args.member, parse_attrs(args.pairs), args.unset)
        _print(result, args.json, f"{args.member}: {attrs.render(result['attributes']) or '(no attributes)'}")
    else:
        opened = provider.remove_member(args.group, args.member)
        _print({"removed": args.member, "group": args.group, "epoch": opened.epoch, "version": opened.version},
               args.json, f"removed {args.member}; group {args.group} now at epoch {opened.epoch}")
    return 0


def _member_line(m: dict) -> str:
    return (f"{m['name']:<24} index={m['index']} addresses={','.join(m['addresses'])} "
            f"endpoints={','.join(m['endpoints']) or '-'} attributes={attrs.render(m['attributes']) or '-'}"
            + (f" expires={_when(m['expires_at'])}" if m["expires_at"] is not None else ""))


def _when(ts: float | None) -> str:
    if ts is None:
        return "never"
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def add_arguments(parsers: dict) -> None:
    """The membership options on the parsers ``provider/cli.py`` builds (``parsers`` by command name)."""
    g = parsers["group create"]
    g.add_argument("--members", help="AddGroup: comma-separated member names; prints one join token each")
    g.add_argument("--token-ttl", default="1h", help="with --members: how long the tokens are valid")
    g.add_argument("--attr", action="append", metavar="K=V", help="with --members: attributes for every member")
    g.add_argument("--member-ttl", help="with --members: each member expires this long after it joins")
    g.add_argument("--owner", action="append", metavar="K=V", help="free-form owner fields (signed, archive)")
    g.add_argument("--expires", help="the whole group ends this long from now (nobody enrolls after)")
    g.add_argument("--owners", help="comma-separated names of the group's owners (signed in the archive)")
    g.add_argument("--json", action="store_true")
    m = parsers["group set-meta"]
    m.add_argument("name")
    m.add_argument("--owner", action="append", metavar="K=V", help="replace the owner fields")
    m.add_argument("--expires", help="the group ends this long from now")
    m.add_argument("--no-expiry", action="store_true", help="clear the group's expiry")
    m.add_argument("--owners", help="replace the owners: comma-separated names ('' for none)")
    m.add_argument("--json", action="store_true")
    i = parsers["invite"]
    i.add_argument("--reusable", action="store_true", help="an enrollment key for many hosts (any member name)")
    i.add_argument("--uses", type=int, help="with --reusable: how many enrollments it allows")
    i.add_argument("--expires", help="with --reusable: how long the key is valid (like --ttl)")
    i.add_argument("--attr", action="append", metavar="K=V", help="signed attributes for the member(s)")
    i.add_argument("--member-ttl", help="a temporary member: it is removed this long after it joins")
    i.add_argument("--json", action="store_true")
    for name in ("member list", "member remove", "tokens list"):
        parsers[name].add_argument("--json", action="store_true")
    s = parsers["member show"]
    s.add_argument("group")
    s.add_argument("member")
    s.add_argument("--json", action="store_true")
    e = parsers["member extend"]
    e.add_argument("group")
    e.add_argument("member")
    e.add_argument("by", help="how much later the deadline moves (4h)")
    e.add_argument("--json", action="store_true")
    a = parsers["member set-attr"]
    a.add_argument("group")
    a.add_argument("member")
    a.add_argument("pairs", nargs="*", metavar="K=V")
    a.add_argument("--unset", action="append", default=[], metavar="KEY")
    a.add_argument("--json", action="store_true")
    r = parsers["tokens revoke"]
    r.add_argument("group")
    r.add_argument("id", help="the token's id (tokens list)")
    r.add_argument("--json", action="store_true")
