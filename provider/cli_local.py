"""The admin commands run on the state dir's database directly: ``group``, ``route``, ``link``, ``audit``,
``backup``, ``restore``, and the dispatch of ``invite``, ``member``, ``tokens``, ``policy`` and
``export-rule`` to their modules (``provider/cli_membership.py`` ...). ``provider/cli_remote.py`` runs the
same commands over the admin API.
"""

from __future__ import annotations

import datetime
import importlib
import json
import time
from pathlib import Path

from provider.cli import _database, _paths, _provider, parse_duration
from provider.errors import StateDirError
from provider.keys import read_config, tls_fingerprint


def cmd_group(args) -> int:
    from provider import admin_ops, cli_membership

    provider = _provider(args)
    if args.action == "create":
        options = dict(cidr6=args.cidr6, suite=args.suite,
                       rekey_after_seconds=parse_duration(args.rekey_after, "--rekey-after"),
                       rekey_after_packets=args.rekey_packets,
                       switch_delay=parse_duration(args.switch_delay, "--switch-delay"),
                       grace=parse_duration(args.grace, "--grace"))
        # AddGroup: the group and its members' tokens in one transaction (and the --json shape)
        if args.members or args.owner or args.owners or args.expires or args.json:
            return cli_membership.create_group(args, provider, options)
        info = provider.create_group(args.name, args.cidr, **options)
        print(json.dumps(info, indent=2))
    elif args.action == "list":
        for name in provider.list_groups():
            print(name)
    elif args.action == "show":
        print(json.dumps(admin_ops.group_show(provider, args.name), indent=2))
    elif args.action == "set-meta":
        return cli_membership.set_meta(args, provider)
    elif args.action == "rekey":
        print(rekey_text(admin_ops.group_rekey(provider, args.name, "admin")))
    return 0


def rekey_text(done: dict) -> str:
    return f"group {done['group']}: epoch {done['epoch']}, archive version {done['version']}"


def _handled_in(module: str, function: str):
    """A subcommand run by ``provider.MODULE.FUNCTION(args, provider)``, imported only when that command runs."""
    def handler(args) -> int:
        return getattr(importlib.import_module(f"provider.{module}"), function)(args, _provider(args))
    return handler


cmd_invite = _handled_in("cli_membership", "invite")
cmd_member = _handled_in("cli_membership", "member")
cmd_tokens = _handled_in("cli_membership", "tokens")
cmd_policy = _handled_in("cli_policy", "run")
cmd_export_rule = _handled_in("cli_exportrules", "run")


def cmd_route(args) -> int:
    """Subnet routes (provider/routes_approved.py): approve and remove open a new epoch."""
    from provider import admin_ops

    provider = _provider(args)
    if args.action == "list":
        routes = provider.list_routes(args.group)
        print(json.dumps(routes, indent=2) if args.json else route_text(routes))
        return 0
    done = admin_ops.route_change(provider, args.action, args.group, args.member, args.prefix)
    print(json.dumps(done, indent=2) if args.json else route_text(done))
    return 0


def route_text(done) -> str:
    """``route list`` rows, or what ``route approve/remove`` did."""
    if isinstance(done, list):
        return "\n".join(f"{r['member']:<24} {r['prefix']:<24} {r['state']}" for r in done)
    verb = "approved" if done["action"] == "approve" else "removed"
    return f"{verb} {done['prefix']} behind {done['member']}; group {done['group']} now at epoch {done['epoch']}"


def cmd_link(args) -> int:
    from grouptun.core.envelope import ProviderKeys
    from grouptun.errors import EpochRejected
    from provider import cli_links

    paths = _paths(args)
    config = read_config(paths)
    try:  # the public keys provider.json records: `link self` needs no private key (nor its passphrase)
        own_id = ProviderKeys.from_json(config.get("provider_keys")).fingerprint()
    except EpochRejected as exc:
        raise StateDirError(f"{paths.config}: provider_keys: {exc}") from exc
    identity = cli_links.own_identity(config["url"], tls_fingerprint(paths), own_id)
    return cli_links.run(args, _provider(args), identity)


def cmd_audit(args) -> int:
    from provider.store import audit_rows

    provider = _provider(args)
    with provider.store.read() as conn:
        rows = audit_rows(conn, 0, 10**9)
    rows = rows[-args.limit:] if args.limit else rows
    last = rows[-1].id if rows else 0
    deadline = time.monotonic() + args.follow_for if args.follow_for else None
    while True:
        for row in rows:
            when = datetime.datetime.fromtimestamp(row.ts, datetime.timezone.utc).isoformat(timespec="milliseconds")
            print(f"{when} {row.actor} {row.action} {row.group_name or '-'} {row.detail}", flush=True)
            last = row.id
        if not args.follow or (deadline is not None and time.monotonic() > deadline):
            return 0
        time.sleep(0.5)
        with provider.store.read() as conn:
            rows = audit_rows(conn, last)


def cmd_backup(args) -> int:
    from provider import backup
    from provider.database import open_store

    config = read_config(_paths(args))
    setting = _database(args, config)
    open_store(setting, config).close()  # reachable, ours, of our schema: or the error names the setting
    backup.backup(setting, Path(args.file))
    print(f"backup of {setting.describe()} written to {args.file}")
    return 0


def cmd_restore(args) -> int:
    from provider import backup

    paths = _paths(args)
    config = read_config(paths)
    setting = _database(args, config)
    live = backup.restore(setting, paths, config, Path(args.file))
    provider = _provider(args)  # migrates an older backup's schema
    try:
        opened = backup.after_restore(provider, args.file, live)
    finally:
        provider.store.close()
    print(f"restored {setting.describe()} from {args.file}")
    for group, epoch in opened.items():
        print(f"group {group}: " + ("no epoch (fewer than 2 members)" if epoch is None else f"new epoch {epoch}"))
    return 0
