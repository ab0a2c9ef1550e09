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
import datetime
import importlib
import json
import math
import os
import re
import socket
import sys
import time
from pathlib import Path

from sqlalchemy.exc import DatabaseError

from grouptun.core.jointoken import check_url
from grouptun.cli.exits import run_command
from provider.errors import InvalidInput, StateDirError
from provider.keys import (PUBLIC_URLS, StatePaths, Signer, checked_public_urls, make_tls, public_urls, read_config,
                           tls_fingerprint)

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


def cmd_init(args) -> int:
    from provider.admin import create_admin_key
    from provider.database import canonical_keys

    paths = _paths(args)
    if paths.config.exists():
        raise StateDirError(f"{paths.root} is initialised already")
    if args.public_url:
        checked_public_urls(args.public_url, "--public-url")  # before anything is written
    setting = _database(args, {})
    if args.join:
        return _join(args, paths, setting)
    if args.url is None:
        raise InvalidInput("init needs --url https://HOST:PORT (or --join to add a replica)")
    url = check_url(args.url)
    store = setting.store(must_exist=False)
    if setting.url is not None:
        try:  # before anything is written: an unreachable or used database leaves no state dir behind
            store.check_empty()
        except StateDirError as exc:
            raise setting.fail(exc) from exc
    paths.root.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(paths.root, 0o700)
    signer = Signer.generate()
    signer.save(paths)
    fingerprint = make_tls(paths, url, datetime.datetime.now(datetime.timezone.utc))
    if setting.url is None:
        os.close(os.open(paths.db, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o600))
    try:
        store.create_schema({"provider_keys": canonical_keys(signer.public.to_json()),
                             "tls_fingerprint": fingerprint, "url": url})
        admin_key = create_admin_key(paths, store, time.time())
    except StateDirError as exc:
        raise setting.fail(exc) from exc
    finally:
        store.close()
    public = checked_public_urls(args.public_url, "--public-url") if args.public_url else ()
    _write_config(paths, url, signer, setting, public)
    print(f"state:            {paths.root}")
    print(f"database:         {setting.describe()}")
    print(f"url:              {url}")
    if public:
        print(f"public urls:      {', '.join(public)}")
    print(f"tls fingerprint:  {fingerprint}")
    print(f"provider keys:    {signer.public.fingerprint()}")
    _print_admin_key(*admin_key)
    return 0


def _print_admin_key(key_id: str, path: Path) -> None:
    from provider.keys import passphrase

    kept = "encrypted with the provider passphrase" if passphrase() else "unencrypted, file mode 0600"
    print(f"admin key:        {key_id} in {path} ({kept}; for --admin-key)")


def cmd_admin_key(args) -> int:
    """``admin-key create`` (another provider-admin key, or the first of a state dir made before them) and
    ``admin-key list``: direct writes, like init (provider/admin.py)."""
    from provider.admin import create_admin_key, list_admin_keys

    provider = _provider(args)
    try:
        if args.action == "create":
            _print_admin_key(*create_admin_key(_paths(args), provider.store, time.time()))
        else:
            print("\n".join(list_admin_keys(provider.store)) or "(no admin keys)")
    finally:
        provider.store.close()
    return 0


def _write_config(paths: StatePaths, url: str, signer: Signer, setting, public: tuple[str, ...]) -> None:
    from provider.app import DOCS_KEY
    from provider.connlimits import HttpLimits
    from provider.links import VOUCH_TTL_DAYS
    from provider.retention import AuditRetention
    from provider.sealed import SealedLimits

    config = {"url": url, "created_at": time.time(), "provider_keys": signer.public.to_json(),
              **AuditRetention().to_config(),  # written out so an admin sees what to edit (provider/retention.py)
              **HttpLimits().to_config(), **SealedLimits().to_config(), DOCS_KEY: False, **setting.to_config(),
              VOUCH_TTL_DAYS[0]: VOUCH_TTL_DAYS[3]}
    if public:
        config[PUBLIC_URLS] = list(public)
    paths.config.write_text(json.dumps(config, indent=2) + "\n")


def _join(args, paths: StatePaths, setting) -> int:
    """A second state dir on an existing PostgreSQL database, from a copy of keys/ and tls/; writes
    only provider.json, and only once the copied keys and certificate are the database's."""
    from provider.database import canonical_keys, open_store
    from provider.store import add_audit

    if setting.url is None:
        raise InvalidInput("init --join needs the shared database: --database-url, "
                           "GROUPTUN_PROVIDER_DATABASE_URL or provider.json's database_url")
    signer = Signer.load(paths)  # the copied signing keys (mode 0600, passphrase as at init)
    fingerprint = tls_fingerprint(paths)
    if not paths.tls_key.exists():
        raise StateDirError(f"{paths.tls_key} is missing: copy tls/ from the first provider")
    store = open_store(setting, {})
    try:
        held = store.identity()
        if held.get("provider_keys") != canonical_keys(signer.public.to_json()):
            raise setting.fail(StateDirError(f"belongs to another provider: the keys in {paths.root / 'keys'} "
                                             f"are not the database's"))
        if held.get("tls_fingerprint") != fingerprint:
            raise setting.fail(StateDirError(f"pins another TLS certificate than {paths.tls_cert}"))
        url = check_url(args.url) if args.url else held["url"]
        with store.write() as conn:
            add_audit(conn, time.time(), "admin", "replica-join", None, state=str(paths.root), url=url)
    finally:
        store.close()
    public = checked_public_urls(args.public_url, "--public-url") if args.public_url else ()
    _write_config(paths, url, signer, setting, public)
    print(f"state:            {paths.root} (joined)")
    print(f"database:         {setting.describe()}")
    print(f"url:              {url}")
    if public:
        print(f"public urls:      {', '.join(public)}")
    print(f"tls fingerprint:  {fingerprint}")
    print(f"provider keys:    {signer.public.fingerprint()}")
    return 0


def _listen(text: str | None, url: str) -> tuple[str, int]:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if text is None:
        return "0.0.0.0", parts.port or 443
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise InvalidInput(f"--listen {text!r} must be HOST:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)


def _lock_state(paths: StatePaths):
    """One server per state dir (held while serving): on SQLite its memory holds the nonce cache that stops
    replays, and ``restore`` needs the lock free."""
    from provider.backup import serve_lock

    lock = serve_lock(paths)
    lock.__enter__()
    return lock


def cmd_serve(args) -> int:
    import uvicorn

    from grouptun.ops.logsetup import setup_logging
    from provider.app import Settings, create_app, docs_from_config
    from provider.cli_membership import token_maker
    from provider.connlimits import HttpLimits, protocol_class
    from provider.sealed import SealedLimits
    from provider.serving import ProviderServer

    paths = _paths(args)
    config = read_config(paths)
    http_limits = HttpLimits.from_config(config)
    docs = docs_from_config(config)
    sealed_limits = SealedLimits.from_config(config)
    lock = _lock_state(paths)  # noqa: F841 -- held for the life of the process
    from provider.store import SERVER_APPLICATION

    provider = _provider(args, f"{SERVER_APPLICATION} {os.getpid()}")  # named: restore refuses while they are
    provider.signer  # noqa: B018 -- load keys now: a wrong passphrase fails before listening
    host, port = _listen(args.listen, config["url"])
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        raise StateDirError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    setup_logging(args.log_level.upper())  # journald priorities for uvicorn's loggers too (log_config=None)
    asgi, app = create_app(provider, Settings(metrics=args.metrics, address_rate=args.address_rate,
                                              address_burst=args.address_rate * 2, member_rate=args.member_rate,
                                              member_burst=args.member_rate * 3, start_rate=args.start_rate,
                                              report_rate=args.report_rate, docs=docs, sealed=sealed_limits,
                                              join_token=token_maker(paths)))
    refused = app.state.metrics.connection_refused if args.metrics else (lambda reason: None)
    # h11, not httptools: h11 bounds an unfinished header (see provider/connlimits.py for the rest).
    server = ProviderServer(uvicorn.Config(
        asgi, ssl_keyfile=str(paths.tls_key), ssl_certfile=str(paths.tls_cert), loop="uvloop",
        log_level=args.log_level, log_config=None, access_log=False, timeout_keep_alive=75, backlog=4096,
        timeout_graceful_shutdown=2, http=protocol_class(http_limits, refused),
        h11_max_incomplete_event_size=http_limits.max_header_bytes), config["url"], app.state.release_watchers)
    # Signatures created before this process started are refused (the nonce cache is in memory),
    # so listen only from the next whole second on: fresh requests then never look stale.
    time.sleep(max(0.0, math.ceil(provider.started_at) - time.time() + 0.01))
    bound = sock.getsockname()
    print(f"grouptun-provider serving https://{host}:{bound[1]} tls={tls_fingerprint(paths)}", flush=True)
    server.run(sockets=[sock])
    return 0


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


class _Sub:
    """Adds the common options (``--state``) to every leaf parser, so they go after the command."""

    def __init__(self, action, common) -> None:
        self.action, self.common = action, common

    def add_parser(self, name: str, **kwargs):
        return self.action.add_parser(name, parents=[self.common], **kwargs)


def build_parser() -> argparse.ArgumentParser:
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
    p.set_defaults(func=cmd_init)

    p = sub.action.add_parser("admin-key", help="create or list provider-admin keys (for --admin-key)")
    asub = _Sub(p.add_subparsers(dest="action", required=True), common)
    asub.add_parser("create", help="a new provider-admin key in STATE/keys/admin-ID.pem")
    asub.add_parser("list")
    p.set_defaults(func=cmd_admin_key)

    p = sub.add_parser("serve", help="run the HTTPS API")
    p.add_argument("--listen", help="HOST:PORT (default: 0.0.0.0 and the URL's port)")
    p.add_argument("--metrics", action="store_true", help="mount the Prometheus exporter (provider/metrics.py)")
    p.add_argument("--address-rate", type=float, default=200.0, help="requests per second per client address")
    p.add_argument("--member-rate", type=float, default=20.0, help="signed requests per second per member")
    p.add_argument("--start-rate", type=float, default=0.1, help="daemon starts per second per member (burst 3)")
    p.add_argument("--report-rate", type=float, default=0.5, help="reports per second per member (burst 5)")
    p.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=cmd_serve)

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
    p.set_defaults(func=cmd_group)

    p = parsers["invite"] = sub.add_parser("invite", help="print a join token (one-time, or a reusable key)")
    p.add_argument("group")
    p.add_argument("member", nargs="?", help="the member's name (none with --reusable)")
    p.add_argument("--ttl", default="1h")
    p.set_defaults(func=cmd_invite)

    p = sub.action.add_parser("member", help="list, show, remove, extend members or set their attributes")
    msub = _Sub(p.add_subparsers(dest="action", required=True), common)
    parsers["member list"] = msub.add_parser("list")
    parsers["member list"].add_argument("group")
    for action in ("show", "extend", "set-attr"):
        parsers[f"member {action}"] = msub.add_parser(action)
    m = parsers["member remove"] = msub.add_parser("remove")
    m.add_argument("group")
    m.add_argument("member")
    p.set_defaults(func=cmd_member)

    p = sub.action.add_parser("tokens", help="list or revoke join tokens and reusable keys")
    tsub = _Sub(p.add_subparsers(dest="action", required=True), common)
    parsers["tokens list"] = tsub.add_parser("list")
    parsers["tokens list"].add_argument("group")
    parsers["tokens revoke"] = tsub.add_parser("revoke")
    p.set_defaults(func=cmd_tokens)
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
    p.set_defaults(func=cmd_route)
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
    p.set_defaults(func=cmd_audit)

    p = sub.add_parser("backup", help="write a consistent snapshot of the database to FILE (while serving)")
    p.add_argument("file")
    p.set_defaults(func=cmd_backup)

    p = sub.add_parser("restore", help="replace the database by backup FILE (every server stopped); "
                                       "epoch numbers go on above every one ever issued")
    p.add_argument("file")
    p.set_defaults(func=cmd_restore)
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
