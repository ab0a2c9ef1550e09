"""The ``grouptun`` command line.

Every subcommand lives in its own module and is imported only when used,
so ``grouptun vectors`` runs without the daemon's dependencies loaded.
Each module exposes ``add_arguments(parser)`` and ``run(args) -> int``.
Errors from the exception tree (``grouptun.errors``) become one line on
stderr and the exit code of their class (``grouptun.cli.exits``, shared with
``grouptun-provider``).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from grouptun import __version__
from grouptun.cli.exits import run_command

# subcommand -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "join": ("grouptun.cli.join", "enroll this host in a group with a join token"),
    "up": ("grouptun.cli.up", "run the daemon for a group in the foreground"),
    "status": ("grouptun.cli.status", "show interfaces, epochs, members and drops"),
    "ping": ("grouptun.cli.ping", "echo a member through the tunnel: round trip, endpoint, epoch"),
    "down": ("grouptun.cli.down", "stop a running daemon"),
    "export": ("grouptun.cli.export", "a key, TLS PSK, password or key pair of the group's current epoch"),
    "seal": ("grouptun.cli.seal", "encrypt a file for members; the provider keeps it for them (sealed data)"),
    "unseal": ("grouptun.cli.unseal", "fetch sealed data and open it with this member's key"),
    "sealed": ("grouptun.cli.sealed", "list or delete sealed data"),
    "admin": ("grouptun.cli.admin", "manage the group as its owner through the provider's admin API"),
    "vectors": ("grouptun.cli.vectors", "compute every output of a protocol test-vector file"),
}


def build_parser(chosen: str | None = None, every: bool = False) -> argparse.ArgumentParser:
    """The parser; only the ``chosen`` subcommand's module (or ``every`` one) is asked for its arguments."""
    parser = argparse.ArgumentParser(prog="grouptun", description="grouptun group VPN")
    parser.add_argument("--version", action="version", version=f"grouptun {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        if every or name == chosen:
            importlib.import_module(module_name).add_arguments(sub_parser)
    return parser


def full_parser() -> argparse.ArgumentParser:
    """Every subcommand with its arguments: what shell completion and the man page are made from."""
    return build_parser(every=True)


def _chosen_subcommand(argv: list[str]) -> str | None:
    """The subcommand named in argv: the first word that is not an option."""
    for word in argv:
        if not word.startswith("-"):
            return word if word in SUBCOMMANDS else None
    return None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    chosen = _chosen_subcommand(argv)
    args = build_parser(chosen).parse_args(argv)
    module = importlib.import_module(SUBCOMMANDS[args.command][0])
    return run_command(f"grouptun {args.command}", lambda: module.run(args))


if __name__ == "__main__":
    sys.exit(main())
