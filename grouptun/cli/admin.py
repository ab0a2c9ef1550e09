"""``grouptun admin GROUP COMMAND ...``: manage GROUP from a member host, as its owner.

COMMAND is a ``grouptun-provider`` admin command line (``invite lan fred
--attr role=web``, ``member set-attr lan bob role=db``, ``policy set lan
FILE``, ... with their ``--json``), sent to the provider's admin API
(``provider/cli_remote.py``) and signed with this member's own key as
``owner:<group>/<member>``: the key the daemon already holds, unlocked with
the member's credential as ``grouptun seal`` does (``--credential-file``,
systemd, ``paths.credential_file`` or a prompt), over the TLS pin from the
member's config. The provider allows it only if the group's signed
``owners`` name this member, and only for this group (else 403, audited).
"""

from __future__ import annotations

import argparse

from grouptun.cli.seal import add_member_arguments, open_member


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_member_arguments(parser)
    parser.add_argument("line", nargs=argparse.REMAINDER, metavar="COMMAND ...",
                        help="a grouptun-provider admin command: group show, invite, tokens, member, route, "
                             "policy, export-rule (see grouptun-provider --help)")


def run(args: argparse.Namespace) -> int:
    from grouptun.control.adminclient import AdminClient
    from grouptun.control.client import pinned_session
    from grouptun.errors import UsageError
    from provider import cli_remote
    from provider.cli import build_parser

    line = args.line[1:] if args.line[:1] == ["--"] else args.line
    if not line:
        raise UsageError("give a command, e.g. grouptun admin lan member list lan")
    command = build_parser().parse_args(line)
    session = open_member(args)
    try:
        cfg = session.config
        key_id = f"owner:{cfg.provider_group}/{cfg.group.member}"
        client = AdminClient(cfg.provider.all_urls[0], key_id, session.keys.signing_key,
                             pinned_session(cfg.provider.tls_fingerprint))
        return cli_remote.run(command, client)
    finally:
        session.close()
