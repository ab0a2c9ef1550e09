"""The ``grouptun`` command line.

Every subcommand lives in its own module and is imported only when used,
so ``grouptun vectors`` runs without the daemon's dependencies loaded.
Each module exposes ``add_arguments(parser)`` and ``run(args) -> int``.
Errors from the exception tree (``grouptun.errors``) become one line on
stderr and the exit code of their class; nothing else prints a traceback
unless ``GROUPTUN_DEBUG=1``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from grouptun import __version__
from grouptun.errors import GrouptunError

# subcommand -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "join": ("grouptun.cmd_join", "enroll this host in a group with a join token"),
    "up": ("grouptun.cmd_up", "run the daemon for a group in the foreground"),
    "status": ("grouptun.cmd_status", "show interfaces, epochs, members and drops"),
    "down": ("grouptun.cmd_down", "stop a running daemon"),
    "vectors": ("grouptun.cmd_vectors", "compute every output of a protocol test-vector file"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="grouptun", description="grouptun group VPN")
    parser.add_argument("--version", action="version", version=f"grouptun {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        sub_parser.set_defaults(_module=module_name)
        # Arguments are added lazily in main(): only the chosen module is imported.
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    # First pass finds the subcommand; its module then adds its own arguments.
    known, _ = parser.parse_known_args(argv)
    module = importlib.import_module(known._module)
    sub_parser = parser._subparsers._group_actions[0].choices[known.command]  # noqa: SLF001
    module.add_arguments(sub_parser)
    args = parser.parse_args(argv)
    try:
        return int(module.run(args) or 0)
    except GrouptunError as exc:
        if os.environ.get("GROUPTUN_DEBUG") == "1":
            raise
        print(f"grouptun {args.command}: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
