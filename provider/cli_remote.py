"""The admin CLI over the remote admin API (``provider/admin_routes.py``)::

    grouptun-provider --url https://HOST:PORT --admin-key FILE (--fingerprint HEX | --ca FILE) COMMAND ...
    grouptun admin GROUP COMMAND ...        (on a member host: signs as owner:<group>/<member>; grouptun/cli/admin.py)

COMMAND is any of :data:`REMOTE` with the arguments and ``--json`` shapes of
the direct command (README "Admin --json shapes"): the options are parsed
and checked here as there (durations into seconds, ``k=v`` pairs, a policy
file or ``-``), then sent; the answer is printed by the same text and JSON
functions. ``init``, ``serve``, ``admin-key``, ``audit``, ``backup`` and
``restore`` read or write the state dir itself and stay on the provider host.
``--admin-key`` is the PEM ``init`` wrote (STATE/keys/admin-ID.pem); an
encrypted one is opened with the provider passphrase
(``GROUPTUN_PROVIDER_PASSPHRASE`` or the systemd credential).
"""

from __future__ import annotations

import json
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from grouptun.control.adminclient import AdminClient
from provider import cli_exportrules, cli_membership as cm, cli_policy
from provider.admin import ADMIN_PREFIX, admin_key_id
from provider.errors import InvalidInput, StateDirError

REMOTE = ("group", "invite", "member", "tokens", "route", "policy", "export-rule")
LOCAL_ONLY = "init, serve, admin-key, audit, backup and restore work on the provider host's state dir only"


def load_admin_key(path: str) -> tuple[str, ed25519.Ed25519PrivateKey]:
    """(keyid ``admin:<id>``, the key) from an admin key file; StateDirError naming the file otherwise."""
    from provider.keys import PASSPHRASE_ENV, passphrase

    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise StateDirError(f"--admin-key {path}: {exc.strerror}") from exc
    try:
        key = serialization.load_pem_private_key(raw, passphrase())
    except (ValueError, TypeError) as exc:
        raise StateDirError(f"--admin-key {path}: not a key, or wrong or missing passphrase ({PASSPHRASE_ENV})") \
            from exc
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise StateDirError(f"--admin-key {path}: not an Ed25519 key")
    return ADMIN_PREFIX + admin_key_id(key.public_key()), key


def _seconds(text: str | None, what: str) -> float | None:
    return cm._duration(text, what)


def _group(args, client: AdminClient):
    p = client.path
    if args.action == "create":
        names = cm._names(args.members)
        if args.members is not None and not names:
            raise InvalidInput("--members needs at least one name (a,b,c)")
        body = {"name": args.name, "cidr": args.cidr, "cidr6": args.cidr6, "suite": args.suite,
                "rekey_after": _seconds(args.rekey_after, "--rekey-after"), "rekey_packets": args.rekey_packets,
                "switch_delay": _seconds(args.switch_delay, "--switch-delay"),
                "grace": _seconds(args.grace, "--grace"), "members": names,
                "token_ttl": _seconds(args.token_ttl, "--token-ttl"), "attributes": cm.parse_attrs(args.attr),
                "member_ttl": _seconds(args.member_ttl, "--member-ttl"),
                "owner": cm.parse_attrs(args.owner, "--owner"), "expires_in": _seconds(args.expires, "--expires"),
                "owners": cm._names(args.owners)}
        result = client.call("POST", p("groups"), body)
        return cm._print(result, args.json, cm.create_text(result))
    if args.action == "list":
        return print("\n".join(client.call("GET", p("groups"))["groups"]))
    if args.action == "show":
        return print(json.dumps(client.call("GET", p("groups", args.name)), indent=2))
    if args.action == "set-meta":
        body = {"owner": cm.parse_attrs(args.owner, "--owner") if args.owner else None,
                "expires_in": _seconds(args.expires, "--expires"), "no_expiry": args.no_expiry,
                "owners": None if args.owners is None else cm._names(args.owners)}
        meta = client.call("POST", p("groups", args.name, "meta"), body)
        return cm._print(meta, args.json, cm.meta_text(args.name, meta))
    from provider.cli_local import rekey_text

    return print(rekey_text(client.call("POST", p("groups", args.name, "rekey"))))


def _invite(args, client: AdminClient):
    ttl, uses, pairs, member_ttl = cm.invite_options(args)
    shown = client.call("POST", client.path("groups", args.group, "invites"),
                        {"member": args.member, "ttl": ttl, "uses": uses, "attributes": pairs,
                         "member_ttl": member_ttl})
    cm._print(shown, args.json, shown["token"])


def _tokens(args, client: AdminClient):
    if args.action == "list":
        rows = client.call("GET", client.path("groups", args.group, "tokens"))
    else:
        rows = client.call("POST", client.path("groups", args.group, "tokens", args.id, "revoke"))
    cm._print(rows, args.json, cm.tokens_text(args, rows))


def _member(args, client: AdminClient):
    p = client.path
    if args.action == "list":
        result = client.call("GET", p("groups", args.group, "members"))
    elif args.action == "show":
        result = client.call("GET", p("groups", args.group, "members", args.member))
    elif args.action == "extend":
        result = client.call("POST", p("groups", args.group, "members", args.member, "extend"),
                             {"by": _seconds(args.by, "extend")})
    elif args.action == "set-attr":
        result = client.call("POST", p("groups", args.group, "members", args.member, "attributes"),
                             {"set": cm.parse_attrs(args.pairs), "unset": args.unset})
    else:
        result = client.call("DELETE", p("groups", args.group, "members", args.member))
    cm._print(result, args.json, cm.member_text(args, result))


def _route(args, client: AdminClient):
    from provider.cli_local import route_text

    if args.action == "list":
        done = client.call("GET", client.path("groups", args.group, "routes"))
    else:
        done = client.call("POST", client.path("groups", args.group, "routes", args.action),
                           {"member": args.member, "prefix": args.prefix})
    print(json.dumps(done, indent=2) if args.json else route_text(done))


def _policy(args, client: AdminClient):
    path = client.path("groups", args.group, "policy")
    if args.action == "set":
        shown = client.call("PUT", path, {"text": cli_policy._read(args.file)})
    else:
        shown = client.call("DELETE" if args.action == "clear" else "GET", path)
    cm._print(shown, args.json, cli_policy._text(shown))


def _export_rule(args, client: AdminClient):
    if args.action == "list":
        shown = client.call("GET", client.path("groups", args.group, "export-rules"))
    else:
        path = client.path("groups", args.group, "export-rules", args.label)
        shown = (client.call("PUT", path, {"selector": args.selector}) if args.action == "set"
                 else client.call("DELETE", path))
    cm._print(shown, args.json, cli_exportrules._text(shown))


COMMANDS = {"group": _group, "invite": _invite, "tokens": _tokens, "member": _member, "route": _route,
            "policy": _policy, "export-rule": _export_rule}


def run(args, client: AdminClient) -> int:
    """One admin command ``args`` (parsed by ``provider.cli.build_parser``) over ``client``."""
    if args.command not in COMMANDS:
        raise InvalidInput(f"{args.command} cannot run remotely: {LOCAL_ONLY}")
    try:
        COMMANDS[args.command](args, client)
    finally:
        client.close()
    return 0
