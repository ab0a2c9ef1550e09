"""Shell completion and man pages, made from the argparse definitions.

::

    python3 -m grouptun.cli.docs completion bash|zsh grouptun|grouptun-provider
    python3 -m grouptun.cli.docs man grouptun|grouptun-provider
    python3 -m grouptun.cli.docs write DIR     # all six: PROG.bash, _PROG (zsh), PROG.8

Completion comes from shtab, the man page (section 8: both are admin
tools, as wg(8) is) from argparse-manpage; ``scripts/install-host``
installs both. Neither is written by hand, so they cannot drift from the
parsers: ``grouptun.cli.main.full_parser`` and ``provider.cli.build_parser``.
The page's date is ``SOURCE_DATE_EPOCH`` when set (reproducible builds),
else today.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

SECTION = "8"


def _grouptun() -> argparse.ArgumentParser:
    from grouptun.cli.main import full_parser

    return full_parser()


def _provider() -> argparse.ArgumentParser:
    from provider.cli import build_parser

    return build_parser()


PROGRAMS: dict[str, tuple[Callable[[], argparse.ArgumentParser], str]] = {
    "grouptun": (_grouptun, "group VPN member: join a group, run its daemon, show and ping members"),
    "grouptun-provider": (_provider, "grouptun trust provider: serve the member API, manage groups and members"),
}


def completion(prog: str, shell: str) -> str:
    import shtab

    return shtab.complete(PROGRAMS[prog][0](), shell=shell)


def manpage(prog: str) -> str:
    from argparse_manpage.manpage import Manpage

    from grouptun import __version__
    page = Manpage(PROGRAMS[prog][0]())
    page.section, page.manual = SECTION, "grouptun manual"
    page.source, page.description = f"grouptun {__version__}", PROGRAMS[prog][1]
    return str(page)


def write_all(directory: Path) -> list[Path]:
    """Every completion script and man page into ``directory`` (what install-host installs)."""
    written = []
    for prog in PROGRAMS:
        for name, text in ((f"{prog}.bash", completion(prog, "bash")), (f"_{prog}", completion(prog, "zsh")),
                           (f"{prog}.{SECTION}", manpage(prog))):
            (directory / name).write_text(text)
            written.append(directory / name)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m grouptun.cli.docs", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="kind", required=True)
    comp = sub.add_parser("completion", help="a shell completion script")
    comp.add_argument("shell", choices=["bash", "zsh"])
    comp.add_argument("prog", choices=sorted(PROGRAMS))
    sub.add_parser("man", help="a roff man page").add_argument("prog", choices=sorted(PROGRAMS))
    sub.add_parser("write", help="every completion script and man page into DIR").add_argument("dir", type=Path)
    args = parser.parse_args(argv)
    if args.kind == "write":
        write_all(args.dir)
    else:
        sys.stdout.write(completion(args.prog, args.shell) if args.kind == "completion" else manpage(args.prog))
    return 0


if __name__ == "__main__":
    sys.exit(main())
