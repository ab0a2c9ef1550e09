"""``grouptun-provider init``, ``init --join``, ``admin-key`` and ``serve``: a state dir made, and served.

The state dir and database these commands write are described in ``provider/cli.py`` (the command
tree) and ``provider/keys.py`` (the layout); ``serve`` runs the app ``provider/app.py`` builds.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import socket
import time
from pathlib import Path

from grouptun.core.jointoken import check_url
from provider.cli import _database, _paths, _provider
from provider.errors import InvalidInput, StateDirError
from provider.keys import PUBLIC_URLS, StatePaths, Signer, checked_public_urls, make_tls, read_config, tls_fingerprint


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
    _configure(args, paths, url, signer, setting, fingerprint, "")
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
    _configure(args, paths, url, signer, setting, fingerprint, " (joined)")
    return 0


def _configure(args, paths: StatePaths, url: str, signer: Signer, setting, fingerprint: str, joined: str) -> None:
    """provider.json written last (init and init --join), once the database holds this provider; what it says."""
    public = checked_public_urls(args.public_url, "--public-url") if args.public_url else ()
    _write_config(paths, url, signer, setting, public)
    print(f"state:            {paths.root}{joined}")
    print(f"database:         {setting.describe()}")
    print(f"url:              {url}")
    if public:
        print(f"public urls:      {', '.join(public)}")
    print(f"tls fingerprint:  {fingerprint}")
    print(f"provider keys:    {signer.public.fingerprint()}")


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
