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
from provider import admin_ops, membership
from provider.members import foreign_link
from provider.errors import InvalidInput


def _print(value, as_json: bool, text: str) -> None:
    print(json.dumps(value, indent=2, sort_keys=True) if as_json else text)


def parse_attrs(values: list[str] | None, flag: str = "--attr") -> dict[str, str]:
    try:
        return attrs.parse(values or [])
    except ValueError as exc:
        raise InvalidInput(f"{flag}: {exc}") from exc


def token_maker(paths):
    """``secret -> printable join token`` for this state dir's provider (URL or public URLs, TLS pin, keys)."""
    from grouptun.core.envelope import ProviderKeys
    from grouptun.core.jointoken import JoinToken
    from provider.keys import public_urls, read_config, tls_fingerprint

    config = read_config(paths)
    keys = ProviderKeys.from_json(config["provider_keys"])
    urls = public_urls(config)  # the replicas' list (issue 16), when the provider has one
    fingerprint = tls_fingerprint(paths)
    return lambda secret: str(JoinToken(urls[0] if urls else config["url"], fingerprint, keys.fingerprint(),
                                        secret, urls))


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
    result = admin_ops.group_create(
        provider, token_maker(_paths(args)), args.name, args.cidr, names, _duration(args.token_ttl, "--token-ttl"),
        parse_attrs(args.attr), _duration(args.member_ttl, "--member-ttl"), parse_attrs(args.owner, "--owner"),
        _duration(args.expires, "--expires"), _names(args.owners), **options)
    _print(result, args.json, create_text(result))
    return 0


def create_text(result: dict) -> str:
    return json.dumps(result["group"], indent=2) + "\n" + "\n".join(f"{t['member']}\t{t['token']}"
                                                                   for t in result["tokens"])


def _names(text: str | None) -> list[str]:
    return [n for n in (text or "").split(",") if n]


def set_meta(args, provider) -> int:
    meta = admin_ops.group_set_meta(provider, args.name, parse_attrs(args.owner, "--owner") if args.owner else None,
                                    _duration(args.expires, "--expires"), args.no_expiry,
                                    None if args.owners is None else _names(args.owners))
    _print(meta, args.json, meta_text(args.name, meta))
    return 0


def meta_text(group: str, meta: dict) -> str:
    return (f"group {group}: owner {attrs.render(meta['owner']) or '-'}, expires {_when(meta['expires_at'])}, "
            f"provider {meta['provider_id']}")


def invite(args, provider) -> int:
    shown = admin_ops.invite(provider, token_maker(_paths(args)), args.group, args.member, *invite_options(args))
    _print(shown, args.json, invite_text(shown))
    return 0


def invite_text(shown: dict) -> str:
    if shown["token"] is not None:
        return shown["token"]
    # NAME@LINK: nobody redeems the invitation by its secret, the member's own provider enrolls it over the link
    return (f"invited {shown['member']} to {shown['group']}: its own provider enrolls it over link "
            f"{foreign_link(shown['member'])} (no token to hand over)")


def check_invite(args) -> None:
    if args.reusable and args.uses is None:
        raise InvalidInput("--reusable needs --uses N")
    if not args.reusable and (args.uses is not None or args.member is None):
        raise InvalidInput("give a MEMBER (a one-time token), or --reusable --uses N (a key for any name)")


def invite_options(args) -> tuple:
    """(ttl, uses or None, attributes, member_ttl) from ``invite``'s options, checked."""
    check_invite(args)
    ttl = _duration(args.expires or args.ttl, "--expires" if args.expires else "--ttl")
    return ttl, args.uses if args.reusable else None, parse_attrs(args.attr), _duration(args.member_ttl,
                                                                                         "--member-ttl")


def tokens(args, provider) -> int:
    if args.action == "list":
        rows = membership.list_tokens(provider, args.group)
    else:
        rows = membership.revoke_token(provider, args.group, args.id)
    _print(rows, args.json, tokens_text(args, rows))
    return 0


def tokens_text(args, result) -> str:
    if args.action != "list":
        return f"token {args.id} revoked"
    return "\n".join(f"{t['id']}  {t['state']:<9} {'reusable' if t['reusable'] else 'one-time'} "
                     f"member={t['member'] or '*'} uses={t['uses']}/{t['max_uses']} expires={_when(t['expires_at'])} "
                     f"attributes={attrs.render(t['attributes']) or '-'}" for t in result) or "(no tokens)"


def member(args, provider) -> int:
    """``member`` actions: list, show, extend, set-attr, remove."""
    if args.action == "list":
        result = provider.list_members(args.group)
    elif args.action == "show":
        result = admin_ops.member_show(provider, args.group, args.member)
    elif args.action == "extend":
        result = membership.extend(provider, args.group, args.member, _duration(args.by, "extend"))
    elif args.action == "set-attr":
        result = membership.set_attributes(provider, args.group, args.member, parse_attrs(args.pairs), args.unset)
    else:
        result = admin_ops.member_remove(provider, args.group, args.member)
    _print(result, args.json, member_text(args, result))
    return 0


def member_text(args, result) -> str:
    if args.action in ("list", "show"):
        return "\n".join(_member_line(m) for m in (result if args.action == "list" else [result]))
    if args.action == "extend":
        return f"{args.member}: member until {_when(result['expires_at'])}"
    if args.action == "set-attr":
        return f"{args.member}: {attrs.render(result['attributes']) or '(no attributes)'}"
    if result.get("pending"):  # a partner's group whose owner could not be told yet (provider/linkremove.py)
        return (f"removed {args.member} here; the owner (link {result['link']}) has not confirmed yet: "
                "retried until it does (link list shows it pending)")
    return f"removed {args.member}; group {args.group} now at epoch {result['epoch']}"


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
