"""``grouptun-provider``: the trust provider's admin CLI and server.

::

    grouptun-provider init  --state DIR --url https://HOST:PORT [--database-url URL] [--public-url URL ...]
    grouptun-provider init  --state DIR --join --database-url URL [--public-url URL ...]  (a second state dir)
    grouptun-provider serve --state DIR [--listen HOST:PORT] [--metrics]
    grouptun-provider group create NAME --cidr CIDR [--cidr6 CIDR6] [--rekey-after 10m]
                                       [--rekey-packets N] [--suite aes-256-gcm|aes-256-ctr-hmac-sha256]
    grouptun-provider group list | show NAME | rekey NAME
    grouptun-provider invite GROUP MEMBER [--ttl 1h]
    grouptun-provider member list GROUP | remove GROUP MEMBER
    (membership: AddGroup --members, reusable keys, tokens, temporary members, attributes,
     group metadata, --json -- provider/cli_membership.py)
    grouptun-provider policy set GROUP FILE|- | show GROUP | clear GROUP [--json]   (provider/cli_policy.py)
    grouptun-provider export-rule set GROUP LABEL SELECTOR | list GROUP | remove GROUP LABEL [--json]
                                                              (provider/cli_exportrules.py)
    grouptun-provider link self | add NAME --url URL --fingerprint SHA256 --keys-hash H [--groups g1,g2]
                         | check NAME | vouch NAME | accept NAME GROUP [--as ALIAS]
                         | list | remove NAME [--json]      (linked trust providers, provider/cli_links.py)
    grouptun-provider audit [--follow] [--limit N]
    grouptun-provider backup FILE | restore FILE        (provider/backup.py)
    grouptun-provider admin-key create | list           (provider-admin keys, provider/admin.py)
    grouptun-provider --url URL --admin-key FILE (--fingerprint HEX | --ca FILE) group|invite|tokens|member|
                      route|policy|export-rule ...      (the same commands over the admin API: provider/cli_remote.py)

This module builds the command tree and dispatches; ``init``, ``admin-key`` and ``serve`` are
``provider/cli_setup.py``, the other local commands ``provider/cli_local.py`` and the modules named above.
``--state`` defaults to ``$GROUPTUN_PROVIDER_STATE`` or
``/var/lib/grouptun-provider``. The database is SQLite ``STATE/provider.db``
unless ``--database-url``, ``$GROUPTUN_PROVIDER_DATABASE_URL`` or
provider.json's ``database_url`` names a PostgreSQL one (provider/database.py;
``init`` records the URL it used there, without its password). Admin commands
write the same database the server uses; the server sees their changes within
~0.2 s. On SQLite one ``serve`` per state dir (its nonce cache is in its
memory); on PostgreSQL any number of replicas (``init --join`` state dirs
sharing the keys and TLS certificate) serve one database at once: nonces,
pending starts and the audit log are in the database, every write NOTIFYs
the others' watch hubs (provider/hub.py), and one replica at a time runs the
timers. Every
``ProviderFault`` (provider/errors.py) and ``GrouptunError`` is printed as one
line and exits with its ``exit_code``; ``GROUPTUN_DEBUG=1`` shows tracebacks.
Settings in ``STATE/provider.json`` (``init`` writes the defaults; every
command validates them, a bad value names its key): ``audit_keep_days``
(90) and ``audit_keep_rows`` (1000000), the audit retention the server
applies hourly (``provider/retention.py``); ``hardware_rng`` (absent: off),
a device such as ``/dev/hwrng`` mixed into the provider's randomness
(``provider/hwrng.py``); the ``http_*`` connection limits ``serve`` applies
(header size and fields, header and body deadlines, connections per address
and in total: ``provider/connlimits.py``); ``api_docs`` (false), true to
serve ``/openapi.json``, ``/docs`` and ``/redoc``; ``public_urls`` (absent),
every URL members may use in the order they try it (replicas, or one
provider under several addresses; ``init --public-url``, repeatable): join
tokens carry it and every archive this state dir signs carries it as
``provider_urls``, which replaces the members' lists (``provider/keys.py``).
Every replica should carry the same list.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

from sqlalchemy.exc import DatabaseError

from grouptun.cli.exits import run_command
from provider.errors import InvalidInput, StateDirError
from provider.keys import StatePaths, Signer, public_urls, read_config

DEFAULT_STATE = "/var/lib/grouptun-provider"
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd]?)")


def parse_duration(text: str, what: str) -> float:
    match = _DURATION.fullmatch(text.strip())
    if not match:
        raise InvalidInput(f"{what}: {text!r} is not a duration like 90s, 10m, 1h, 2d")
    return float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]


def _paths(args) -> StatePaths:
    return StatePaths(Path(args.state))


def _database(args, config: dict):
    from provider import database

    return database.resolve(args.database_url, os.environ, config, _paths(args))


def _provider(args, application: str | None = None):
    from grouptun.secmem import SecretArena
    from provider import hwrng
    from provider.database import open_store
    from provider.links import vouch_ttl_from_config
    from provider.retention import AuditRetention
    from provider.service import Provider

    paths = _paths(args)
    config = read_config(paths)
    retention = AuditRetention.from_config(config)
    rand = hwrng.from_config(config)
    urls = public_urls(config)
    store = open_store(_database(args, config), config, application)
    # Epoch secrets in locked, non-dumpable memory; the arena zeroes and unmaps itself at exit.
    provider = Provider(store, lambda: Signer.load(paths, urls), rand=rand, audit_retention=retention,
                        secrets=SecretArena())
    provider.vouch_ttl = vouch_ttl_from_config(config)
    return provider



class _Sub:
    """Adds the common options (``--state``) to every leaf parser, so they go after the command."""

    def __init__(self, action, common) -> None:
        self.action, self.common = action, common

    def add_parser(self, name: str, **kwargs):
        return self.action.add_parser(name, parents=[self.common], **kwargs)


def build_parser() -> argparse.ArgumentParser:
    from provider import cli_local, cli_setup  # they import this module's helpers: imported once it is loaded

    parser = argparse.ArgumentParser(prog="grouptun-provider", description="grouptun trust provider")
    remote = parser.add_argument_group("remote admin (the admin API over HTTPS; provider/cli_remote.py)")
    remote.add_argument("--url", dest="remote_url", metavar="URL",
                        help="the provider's https://HOST:PORT: run the command there, signed with --admin-key")
    remote.add_argument("--admin-key", metavar="FILE", help="a provider-admin key (init wrote STATE/keys/admin-ID.pem)")
    # own dests: `link add` has a --fingerprint (the partner's) of its own
    remote.add_argument("--fingerprint", dest="remote_fingerprint", metavar="HEX",
                        help="the provider's TLS certificate SHA-256 (init prints it)")
    remote.add_argument("--ca", dest="remote_ca", metavar="FILE",
                        help="instead of --fingerprint: a CA bundle that signed its certificate")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--state", default=os.environ.get("GROUPTUN_PROVIDER_STATE", DEFAULT_STATE),
                        help="state directory (keys, TLS, database)")
    common.add_argument("--database-url", default=None,
                        help="PostgreSQL URL postgresql+psycopg://USER@HOST/DB (default: "
                             "$GROUPTUN_PROVIDER_DATABASE_URL, provider.json database_url, else SQLite in --state)")
    sub = _Sub(parser.add_subparsers(dest="command", required=True), common)

    p = sub.add_parser("init", help="create provider keys, TLS certificate and database")
    p.add_argument("--url", help="https://HOST:PORT members will use (with --join: default the database's)")
    p.add_argument("--public-url", action="append", default=[], metavar="URL",
                   help="a URL members may use (repeatable, in the order they try them: the replicas, or this "
                        "provider under several addresses); written to provider.json public_urls")
    p.add_argument("--join", action="store_true",
                   help="add this state dir (holding copies of keys/ and tls/) to an existing PostgreSQL database")
    p.set_defaults(func=cli_setup.cmd_init)

    p = sub.action.add_parser("admin-key", help="create or list provider-admin keys (for --admin-key)")
    asub = _Sub(p.add_subparsers(dest="action", required=True), common)
    asub.add_parser("create", help="a new provider-admin key in STATE/keys/admin-ID.pem")
    asub.add_parser("list")
    p.set_defaults(func=cli_setup.cmd_admin_key)

    p = sub.add_parser("serve", help="run the HTTPS API")
    p.add_argument("--listen", help="HOST:PORT (default: 0.0.0.0 and the URL's port)")
    p.add_argument("--metrics", action="store_true", help="mount the Prometheus exporter (provider/metrics.py)")
    p.add_argument("--address-rate", type=float, default=200.0, help="requests per second per client address")
    p.add_argument("--member-rate", type=float, default=20.0, help="signed requests per second per member")
    p.add_argument("--start-rate", type=float, default=0.1, help="daemon starts per second per member (burst 3)")
    p.add_argument("--report-rate", type=float, default=0.5, help="reports per second per member (burst 5)")
    p.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=cli_setup.cmd_serve)

    from provider import cli_membership

    p = sub.action.add_parser("group", help="create, list, show, rekey groups or set their metadata")
    gsub = _Sub(p.add_subparsers(dest="action", required=True), common)
    parsers = {"group set-meta": gsub.add_parser("set-meta")}
    g = parsers["group create"] = gsub.add_parser("create")
    g.add_argument("name")
    g.add_argument("--cidr", required=True)
    g.add_argument("--cidr6")
    g.add_argument("--rekey-after", default="10m")
    g.add_argument("--rekey-packets", type=int, default=2**27)
    g.add_argument("--suite", default="aes-256-gcm", choices=["aes-256-gcm", "aes-256-ctr-hmac-sha256"])
    g.add_argument("--switch-delay", default="2s", help="members send on a new epoch this long after it (0s..60s)")
    g.add_argument("--grace", default="30s", help="the previous epoch is kept this long after the switch (1s..1h)")
    gsub.add_parser("list")
    for action in ("show", "rekey"):
        gsub.add_parser(action).add_argument("name")
    p.set_defaults(func=cli_local.cmd_group)

    p = parsers["invite"] = sub.add_parser("invite", help="print a join token (one-time, or a reusable key)")
    p.add_argument("group")
    p.add_argument("member", nargs="?", help="the member's name (none with --reusable)")
    p.add_argument("--ttl", default="1h")
    p.set_defaults(func=cli_local.cmd_invite)

    p = sub.action.add_parser("member", help="list, show, remove, extend members or set their attributes")
    msub = _Sub(p.add_subparsers(dest="action", required=True), common)
    parsers["member list"] = msub.add_parser("list")
    parsers["member list"].add_argument("group")
    for action in ("show", "extend", "set-attr"):
        parsers[f"member {action}"] = msub.add_parser(action)
    m = parsers["member remove"] = msub.add_parser("remove")
    m.add_argument("group")
    m.add_argument("member")
    p.set_defaults(func=cli_local.cmd_member)

    p = sub.action.add_parser("tokens", help="list or revoke join tokens and reusable keys")
    tsub = _Sub(p.add_subparsers(dest="action", required=True), common)
    parsers["tokens list"] = tsub.add_parser("list")
    parsers["tokens list"].add_argument("group")
    parsers["tokens revoke"] = tsub.add_parser("revoke")
    p.set_defaults(func=cli_local.cmd_tokens)
    cli_membership.add_arguments(parsers)
    p = sub.action.add_parser("route", help="approve, list or remove subnet routes behind members")
    rsub = _Sub(p.add_subparsers(dest="action", required=True), common)
    r = rsub.add_parser("list")
    r.add_argument("group")
    r.add_argument("--json", action="store_true",
                   help="a JSON list of {member, prefix, state (approved|requested), approved_at}")
    for action, what in (("approve", "route PREFIX (a LAN behind MEMBER) to MEMBER; opens a new epoch"),
                         ("remove", "stop routing PREFIX to MEMBER; opens a new epoch")):
        r = rsub.add_parser(action, help=what)
        r.add_argument("group")
        r.add_argument("member")
        r.add_argument("prefix", help="an IP network, e.g. 192.168.5.0/24 (no host bits)")
        r.add_argument("--json", action="store_true")
    p.set_defaults(func=cli_local.cmd_route)
    from provider import cli_policy

    cli_policy.add_parser(sub)
    from provider import cli_exportrules

    cli_exportrules.add_parser(sub)
    from provider import cli_links

    cli_links.add_parser(sub)

    p = sub.add_parser("audit", help="print the audit log")
    p.add_argument("--follow", action="store_true")
    p.add_argument("--follow-for", type=float, default=None, help=argparse.SUPPRESS)
    p.add_argument("--limit", type=int, default=0)
    p.set_defaults(func=cli_local.cmd_audit)

    p = sub.add_parser("backup", help="write a consistent snapshot of the database to FILE (while serving)")
    p.add_argument("file")
    p.set_defaults(func=cli_local.cmd_backup)

    p = sub.add_parser("restore", help="replace the database by backup FILE (every server stopped); "
                                       "epoch numbers go on above every one ever issued")
    p.add_argument("file")
    p.set_defaults(func=cli_local.cmd_restore)
    return parser


def _remote(args) -> int:
    from grouptun.control.adminclient import AdminClient, session_for
    from provider import cli_remote

    if args.admin_key is None:
        raise InvalidInput("--url needs --admin-key FILE (a provider-admin key)")
    key_id, key = cli_remote.load_admin_key(args.admin_key)
    session = session_for(args.remote_fingerprint, args.remote_ca)
    return cli_remote.run(args, AdminClient(args.remote_url, key_id, key, session))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(f"grouptun-provider {args.command}", lambda: _dispatch(args))


def _dispatch(args) -> int | None:
    try:
        if args.remote_url is not None:
            return _remote(args)
        if args.admin_key or args.remote_fingerprint or args.remote_ca:
            raise InvalidInput("--admin-key, --fingerprint and --ca go with --url (the remote admin API)")
        return args.func(args)
    except DatabaseError as exc:  # locked, unreadable or corrupt database: a state-dir fault like the others
        raise StateDirError(f"database error: {exc.orig}") from exc

if __name__ == "__main__":
    sys.exit(main())
