"""``grouptun join TOKEN``: enroll this host in a group.

Generates the member's Ed25519 and X-Wing key pairs here (private keys
never leave the host), takes the identification credential (file or
prompt, asked twice), derives the key-file key and the provider
authenticator from it (``grouptun.control.credkeys``: the provider never sees the
credential), enrolls with the provider named in the token (TLS
pinned by the token's fingerprint; the provider keys checked against the
token's hash; the archive verified), then writes

    <state-dir>/<name>/keys.enc     private keys, AES-GCM under the key-file key derived from the credential, 0600
    <config-dir>/<name>.toml        the member config (no secrets), 0644

The token comes from the command line, or with ``--token-file F`` from a
file or (``-``) stdin, so it stays out of ``ps`` and shell history. A
one-time token is single use (a reusable key counts one use): everything that can fail locally (names, paths,
existing files, the credential) is checked before it is spent.
"""

from __future__ import annotations

import argparse
import re
import socket
import time
from pathlib import Path

from grouptun.config import DEFAULT_LISTEN_PORT

_BAD_NAME_CHARS = re.compile(r"[^A-Za-z0-9_.-]")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("token", nargs="?", help="join token (gtjoin1-...) from the group's admin "
                                                 "(visible in ps and shell history: prefer --token-file)")
    parser.add_argument("--token-file", help="read the join token from this file, or from stdin with '-'")
    parser.add_argument("--name", help="local name of the group: config file, socket, interface gt-NAME "
                                       "(default: the provider's group name)")
    parser.add_argument("--member", help="this host's member name (default: the short hostname)")
    parser.add_argument("--endpoint", action="append", default=[], metavar="HOST:PORT",
                        help="where other members reach this host (repeatable; default: the address the "
                             "provider sees, with --listen-port)")
    parser.add_argument("--advertise-route", action="append", default=[], metavar="PREFIX",
                        help="a LAN prefix behind this host to route for (repeatable; [network] advertise_routes): "
                             "asked of the provider at every start, routed once its admin approves")
    parser.add_argument("--listen-port", type=int, default=DEFAULT_LISTEN_PORT)
    parser.add_argument("--listen-address", default="::", help="UDP listen address (:: = dual-stack)")
    parser.add_argument("--config-dir", type=Path, default=Path("/etc/grouptun"))
    parser.add_argument("--state-dir", type=Path, default=Path("/var/lib/grouptun"))
    parser.add_argument("--run-dir", type=Path, default=Path("/run/grouptun"),
                        help="where the control socket goes")
    parser.add_argument("--credential-file", type=Path, help="file holding the credential to set")
    parser.add_argument("--force", action="store_true", help="overwrite an existing config of that name")


def token_text(args: argparse.Namespace) -> str:
    """The join token: the argument, or --token-file's content (``-``: stdin); exactly one of them."""
    import sys

    from grouptun.errors import ConfigError

    if (args.token is None) == (args.token_file is None):
        raise ConfigError("--token-file", "give the join token either as the argument or with --token-file F|-")
    if args.token is not None:
        return args.token
    try:
        text = sys.stdin.read(64 * 1024) if args.token_file == "-" else Path(args.token_file).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError("--token-file", f"cannot read {args.token_file}: {exc}") from exc
    if not text.strip():
        raise ConfigError("--token-file", f"{args.token_file} holds no token")
    return text.strip()


def default_member_name() -> str:
    name = _BAD_NAME_CHARS.sub("-", socket.gethostname().split(".")[0]).strip("-.")
    return name[:64] or "member"


def _paths(args, name: str) -> tuple[Path, Path]:
    return args.config_dir / f"{name}.toml", args.state_dir / name


def _refuse_existing(args, name: str) -> None:
    from grouptun.errors import ConfigError

    config_path, state = _paths(args, name)
    if not args.force and (config_path.exists() or (state / "keys.enc").exists()):
        raise ConfigError("--name", f"group {name!r} already configured here ({config_path}); "
                                    "choose another --name or pass --force")


def _check_arguments(args: argparse.Namespace) -> str:
    """Everything local that can be wrong, checked before the token is spent; returns the member name."""
    import ipaddress

    from grouptun import config as cfg
    from grouptun.errors import ConfigError

    member = args.member or default_member_name()
    if not cfg.NAME_RE.match(member):
        raise ConfigError("--member", f"{member!r}: use 1..64 of A-Z a-z 0-9 _ . -")
    if args.name is not None:
        if not cfg.NAME_RE.match(args.name):
            raise ConfigError("--name", f"{args.name!r}: use 1..64 of A-Z a-z 0-9 _ . -")
        _refuse_existing(args, args.name)
    if not 1 <= args.listen_port <= 65535:
        raise ConfigError("--listen-port", "must be 1..65535")
    try:
        ipaddress.ip_address(args.listen_address)
    except ValueError as exc:
        raise ConfigError("--listen-address", f"not an IP address: {args.listen_address!r}") from exc
    for prefix in args.advertise_route:
        try:
            ipaddress.ip_network(prefix, strict=True)
        except ValueError as exc:
            raise ConfigError("--advertise-route", f"{prefix!r}: {exc}") from exc
    for ep in args.endpoint:
        try:
            cfg.parse_endpoint(ep)
        except ValueError as exc:
            raise ConfigError("--endpoint", str(exc)) from exc
    return member


def _enroll(args: argparse.Namespace, token, member: str):
    """Keys generated here, credential taken, enrollment; returns (result, sealed keystore)."""
    from grouptun.control import credential
    from grouptun.control import keystore
    from grouptun.control.endpoints import seen_endpoints
    from grouptun.control.client import ProviderClient

    cred = credential.obtain(args.name or "", args.credential_file, confirm=True, environ={})
    keys, sealed = keystore.MemberKeys.generate(), None
    try:
        sealed = keystore.seal(keys, cred)  # before the token is spent: a KDF failure costs nothing
        credential.wipe(cred)
        endpoints = list(args.endpoint) or seen_endpoints(token.url, args.listen_address, args.listen_port)
        result = ProviderClient.enroll(token, member, keys.signing_key, keys.kem_public,
                                       bytes(sealed.authenticator), endpoints)
    finally:
        keys.wipe()
        credential.wipe(cred)
        if sealed is not None:
            credential.wipe(sealed.authenticator)
    return result, sealed.blob


def _member_config(args: argparse.Namespace, token, result, archive, name: str):
    from grouptun import config as cfg
    me = archive.member(result.member_name)
    addresses = tuple(me.addresses) if me is not None else tuple(result.addresses)
    config_path, state_dir = _paths(args, name)
    return cfg.Config(
        group=cfg.GroupConfig(name=name, member=result.member_name, group_id=archive.group_id,
                              interface=cfg.default_interface(name), addresses=addresses),
        provider=cfg.ProviderConfig(url=token.url, tls_fingerprint=token.tls_fingerprint,
                                    keys_hash=token.provider_keys_hash,
                                    ed25519_public=result.provider_keys.ed25519_public,
                                    mldsa65_public=result.provider_keys.mldsa65_public,
                                    group=result.group,
                                    urls=(archive.provider_urls if result.vouch is None else ()) or
                                    (token.urls if len(token.urls) > 1 else ())),
        network=cfg.NetworkConfig(listen_address=args.listen_address, listen_port=args.listen_port,
                                  endpoints=tuple(args.endpoint), advertise_routes=tuple(args.advertise_route)),
        paths=cfg.PathsConfig(state_dir=state_dir.resolve(),
                              control_socket=(args.run_dir / f"{name}.sock").resolve()),
    )


def run(args: argparse.Namespace) -> int:
    import tomllib

    from grouptun import config as cfg
    from grouptun.control import keystore
    from grouptun.control import vouchfile
    from grouptun.core.archive import verify_archive
    from grouptun.core.vouch import verify_foreign_archive
    from grouptun.errors import ConfigError, ProviderError
    from grouptun.control.client import parse_join_token

    token = parse_join_token(token_text(args))
    member = _check_arguments(args)
    result, sealed = _enroll(args, token, member)
    archive = (verify_archive(result.archive, result.provider_keys) if result.vouch is None else
               verify_foreign_archive(result.archive, result.provider_keys, result.vouch, result.member_name,
                                      now=time.time()))
    name = args.name or result.group
    if not cfg.NAME_RE.match(name):
        raise ProviderError(f"provider group name {name!r} is not usable as a local name; rerun with --name")
    if args.name is None:
        _refuse_existing(args, name)
    config = _member_config(args, token, result, archive, name)
    text = cfg.render(config)
    cfg.parse(tomllib.loads(text))  # what we write must load
    config_path, state_dir = _paths(args, name)
    try:
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        keystore.write_atomic(state_dir / "keys.enc", sealed, 0o600)
        if result.vouch is not None:  # a group a linked provider owns (PROTOCOL.md 8)
            vouchfile.save(state_dir, result.vouch)
        args.config_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
        keystore.write_atomic(config_path, text.encode(), 0o644)
    except OSError as exc:
        raise ConfigError("--config-dir/--state-dir", f"cannot write: {exc}") from exc
    print(f"joined group {result.group!r} as {result.member_name!r} (index {result.index}), "
          f"addresses {', '.join(config.group.addresses) or '(none)'}")
    print(f"config: {config_path}\nkeys:   {state_dir / 'keys.enc'}")
    print(f"start:  grouptun up {name}" + ("" if args.config_dir == Path("/etc/grouptun")
                                           else f" --config {config_path}"))
    return 0
