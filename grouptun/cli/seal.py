"""``grouptun seal GROUP FILE [--to m1,m2 | --all | --self] [--ttl 7d]``: seal a file for members.

The file is encrypted here, under a fresh data key wrapped for each
recipient's KEM key from the signed archive (:mod:`grouptun.apps.sealed`); the
provider stores the blob under a DATA-ID, which is printed. Recipients, also
ones offline now, fetch it with ``grouptun unseal GROUP DATA-ID`` until the
TTL runs out; ``grouptun sealed list|delete`` show and remove blobs.
``--all`` includes this member; ``--self`` is self-escrow (see README:
opening it needs this member's key file and credential).

Runs without the daemon: it unlocks the key file with the credential
(``--credential-file``, systemd, ``paths.credential_file`` or a prompt) and
talks to the provider itself, as root (the key file is 0600).
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from pathlib import Path

DEFAULT_CONFIG_DIR = Path("/etc/grouptun")
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd]?)")


def add_member_arguments(parser: argparse.ArgumentParser) -> None:
    """The group and how to find its config and credential (shared by seal, unseal, sealed)."""
    parser.add_argument("group", help="group name, e.g. lan")
    parser.add_argument("--config", type=Path, help="config file (default: CONFIG_DIR/GROUP.toml)")
    parser.add_argument("--config-dir", type=Path, default=DEFAULT_CONFIG_DIR)
    parser.add_argument("--credential-file", type=Path, help="file holding the identification credential")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_member_arguments(parser)
    parser.add_argument("file", type=Path, help="the file to seal")
    chosen = parser.add_mutually_exclusive_group(required=True)
    chosen.add_argument("--to", metavar="M1,M2", help="these members (comma-separated)")
    chosen.add_argument("--all", action="store_true", help="every member of the group, this one included")
    chosen.add_argument("--self", action="store_true", help="only this member (self-escrow)")
    parser.add_argument("--ttl", default="7d", help="how long the provider keeps it: 90s, 10m, 1h, 7d (default 7d)")


def parse_ttl(text: str) -> float:
    from grouptun.errors import UsageError

    match = _DURATION.fullmatch(text.strip())
    if not match:
        raise UsageError(f"--ttl: {text!r} is not a duration like 90s, 10m, 1h, 7d")
    return float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]


KEYS_ONE_BY_ONE = 16  # recipients whose keys are fetched one request each; more: the full archive, once


@dataclass
class MemberSession:
    config: object  # grouptun.config.Config
    keys: object    # grouptun.control.keystore.MemberKeys: signs the requests
    client: object  # grouptun.control.client.ProviderClient
    opener: object = None  # MemberKeys whose KEM key opens sealed data (default: ``keys``)

    @property
    def kem(self):
        return (self.opener or self.keys).kem

    def archive(self, compact: bool = True):
        """The group's current archive, verified against the provider keys pinned at join (a group a linked
        provider owns: through our provider's voucher, PROTOCOL.md 8), not expired, of our group: the compact
        form (PROTOCOL.md 2.2; the full one from a provider without it), or with ``compact`` False the full one."""
        import time

        from grouptun.control import vouchfile
        from grouptun.control.epochaccept import verified_archive
        from grouptun.core.envelope import ProviderKeys
        from grouptun.errors import ProviderError

        p, group = self.config.provider, self.config.group
        archive = verified_archive(self.client.archive(compact), ProviderKeys(p.ed25519_public, p.mldsa65_public),
                                   group.group_id, time.time(), vouchfile.load(self.config.paths.state_dir),
                                   group.member)
        if not compact and archive.compact:
            raise ProviderError("asked for the full archive, the provider answered the compact one")
        return archive

    def kem_keys(self, names: list[str]) -> dict[str, bytes]:
        """The KEM public keys of ``names``: one small request each for a few, the full archive for many
        (the caller checks each against the compact archive's digests)."""
        if len(names) > KEYS_ONE_BY_ONE:
            wanted = set(names)
            return {m.name: m.kem_public for m in self.archive(compact=False).members if m.name in wanted}
        return {name: self.client.kem_public(name) for name in names}

    def close(self) -> None:
        self.client.close()
        for keys in (self.keys, self.opener):
            if keys is not None:
                keys.wipe()


def open_member(args: argparse.Namespace, old_keys: Path | None = None,
                old_credential_file: Path | None = None) -> MemberSession:
    """Config, unlocked keys and a provider client; with ``old_keys`` also that key file (self-escrow
    after a re-enrollment), unlocked with ``old_credential_file`` or else the same credential."""
    from grouptun import config as config_mod
    from grouptun.control import credential
    from grouptun.control import keystore
    from grouptun.errors import ConfigError
    from grouptun.control.client import ProviderClient

    path = args.config or args.config_dir / f"{args.group}.toml"
    cfg = config_mod.load(path)
    if cfg.group.name != args.group:
        raise ConfigError("group.name", f"{path} is for group {cfg.group.name!r}, not {args.group!r}")
    cred = credential.obtain(cfg.group.name, args.credential_file, cfg.paths.credential_file)
    opener = None
    try:
        keys = keystore.load(cfg.keystore_path, cred)
        if old_keys is not None:
            old = credential.read_file(old_credential_file) if old_credential_file else cred
            opener = keystore.load(old_keys, old)
    finally:
        credential.wipe(cred)
    client = ProviderClient(cfg.provider.url, cfg.provider.tls_fingerprint, cfg.provider_group, cfg.group.member,
                            keys.signing_key, timeout=60.0, compact=True)
    return MemberSession(cfg, keys, client, opener)


def run(args: argparse.Namespace) -> int:
    import json
    import sys

    from grouptun.apps import sealed
    from grouptun.errors import UsageError

    ttl = parse_ttl(args.ttl)
    try:
        source = args.file.open("rb")
    except OSError as exc:
        raise UsageError(f"cannot read {args.file}: {exc.strerror}") from exc
    session = open_member(args)
    try:
        archive = session.archive()
        to = None if args.to is None else [n.strip() for n in args.to.split(",") if n.strip()]
        recipients = sealed.choose_recipients(archive, session.config.group.member, to, args.all, args.self,
                                              session.kem_keys)
        with source:
            size = args.file.stat().st_size
            entry = sealed.seal_file(sealed.HttpSealed(session.client), archive, source, size, recipients, ttl)
    finally:
        session.close()
    print(entry["data_id"])
    print(json.dumps({"recipients": entry["recipients"], "size": entry["size"], "expires_at": entry["expires_at"]}),
          file=sys.stderr)
    return 0
