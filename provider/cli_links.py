"""The admin CLI's link commands (the operations are ``provider/links.py``)::

    grouptun-provider link self [--json]        this provider's URL and pins, and the `link add` line
                                                the partner's admin runs
    grouptun-provider link add NAME --url URL --fingerprint SHA256 --keys-hash H [--groups g1,g2] [--json]
    grouptun-provider link check NAME [--keys-hash H] [--json]
                                                fetch the partner's keys over the pinned TLS, compare them with
                                                --keys-hash, keep them (the link is then "checked"); with
                                                --keys-hash: the partner rotated its keys, re-pin them
    grouptun-provider link vouch NAME           print the voucher this provider signs for the partner's keys
                                                (what its members verify the partner's groups with)
    grouptun-provider link accept NAME GROUP [--as ALIAS] [--json]
                                                take the partner's GROUP in: this provider's members join it
                                                with `invite ALIAS MEMBER` tokens (provider/remote.py)
    grouptun-provider link list [--json]
    grouptun-provider link remove NAME [--json]

``--json`` prints the link ``{"name", "url", "tls_fingerprint",
"keys_hash", "groups" (null: any group), "created_at", "state" (unchecked | checked),
"checked_at", "contact" (unchecked | up | unreachable: the last link request made or answered,
provider/linkstate.py), "last_ok_at", "last_failure_at", "last_failure", "down_since",
"pending_removals": [{"group", "member", "since", "attempts", "next_at", "last_error"}]}`` for add, check and remove (remove adds ``"excluded": {group: [member, ...]}``, the members
that came through the link, now removed in a new epoch per group), a list
of them for list, and ``{"url", "tls_fingerprint",
"keys_hash"}`` for self. A refused link exits 64 (bad field), 75 (exists
already, or vouch before check), 66 (no such link) or 69 (check: the
partner unreachable, or not holding the pinned certificate and keys)
naming it.
"""

from __future__ import annotations

import json

from provider import linked, links, linkstate, remote


def _line(link: dict) -> str:
    groups = "any group" if link["groups"] is None else ",".join(link["groups"])
    line = f"{link['name']:<16} {link['url']:<32} provider {link['keys_hash'][:16]}...  {link['state']:<9}  {groups}"
    line += f"\n  contact: {linkstate.describe(link)}"
    for r in link.get("pending_removals", ()):
        line += (f"\n  removal pending: {r['member']} from {r['group']} ({r['attempts']} attempt(s)"
                 + (f", last: {r['last_error']}" if r["last_error"] else "") + ")")
    return line


def own_identity(url: str, tls_fingerprint: str, provider_id: str) -> dict:
    return {"url": url, "tls_fingerprint": tls_fingerprint, "keys_hash": provider_id}


def run(args, provider, identity: dict) -> int:
    """``identity``: this provider's own ``own_identity`` (for ``link self``)."""
    if args.action == "self":
        print(json.dumps(identity, indent=2, sort_keys=True) if args.json else
              "give the partner's admin this line (NAME: what they call this provider):\n"
              f"grouptun-provider link add NAME --url {identity['url']} "
              f"--fingerprint {identity['tls_fingerprint']} --keys-hash {identity['keys_hash']}")
        return 0
    if args.action == "list":
        shown = links.list_links(provider)
        print(json.dumps(shown, indent=2, sort_keys=True) if args.json else
              "\n".join(map(_line, shown)) or "no links")
        return 0
    if args.action == "accept":
        shown = remote.accept_group(provider, args.name, args.group, args.alias)
        print(json.dumps(shown, indent=2, sort_keys=True) if args.json else
              f"group {shown['remote_name']} of link {shown['link']} accepted here as {shown['group']}: "
              f"grouptun-provider invite {shown['group']} MEMBER")
        return 0
    if args.action == "vouch":
        print(links.issue_vouch(provider, args.name).decode())
        return 0
    if args.action == "check":
        link = links.check_link(provider, args.name, keys_hash=args.keys_hash)
        text = f"link {link['name']}: {link['url']} holds the pinned certificate and keys (checked)"
    elif args.action == "add":
        groups = None if args.groups is None else [g.strip() for g in args.groups.split(",")]
        link = links.add_link(provider, args.name, args.url, args.fingerprint, args.keys_hash, groups)
        text = f"linked {link['name']}: " + _line(link)
    else:
        link = linked.remove_link(provider, args.name)
        gone = ", ".join(f"{g}: {' '.join(n)}" for g, n in link["excluded"].items())
        text = f"removed link {link['name']} ({link['url']})" + (f"; excluded {gone}" if gone else "")
    print(json.dumps(link, indent=2, sort_keys=True) if args.json else text)
    return 0


def add_parser(sub) -> None:
    """``link`` and its actions on ``sub`` (provider/cli.py's subcommand adder, common options included)."""
    from provider.cli import _Sub
    from provider.cli_local import cmd_link

    p = sub.action.add_parser("link", help="link this provider to another trust provider (pinned both ways)")
    lsub = _Sub(p.add_subparsers(dest="action", required=True), sub.common)
    lsub.add_parser("self", help="print this provider's URL and pins for the partner's `link add`")
    a = lsub.add_parser("add", help="pin a partner provider under NAME (the partner adds this one too)")
    a.add_argument("name", help="what members' names call the partner: bob@NAME")
    a.add_argument("--url", required=True, help="the partner's https://HOST:PORT")
    a.add_argument("--fingerprint", required=True, help="SHA-256 of the partner's TLS certificate (link self)")
    a.add_argument("--keys-hash", required=True, help="the partner's signing keys' fingerprint (link self)")
    a.add_argument("--groups", default=None, help="g1,g2: limit the link to these groups (default: any)")
    c = lsub.add_parser("accept", help="let this provider's members join the partner's GROUP (invite ALIAS ...)")
    c.add_argument("name")
    c.add_argument("group", help="the group's name at the partner")
    c.add_argument("--as", dest="alias", default=None, help="its name here (default: GROUP; no local group's)")
    lsub.add_parser("list")
    for action in ("check", "remove"):
        lsub.add_parser(action).add_argument("name")
    lsub.action.choices["check"].add_argument(
        "--keys-hash", default=None, help="re-pin: the partner rotated its signing keys to these (its link self)")
    for parser in lsub.action.choices.values():
        parser.add_argument("--json", action="store_true")
    lsub.add_parser("vouch", help="print the signed voucher for a checked link").add_argument("name")
    p.set_defaults(func=cmd_link)
