"""The admin CLI's policy commands (the operations are ``provider/policy.py``)::

    grouptun-provider policy set GROUP FILE|-  [--json]   (- reads the policy from stdin)
    grouptun-provider policy show GROUP [--json]
    grouptun-provider policy clear GROUP [--json]

``--json`` prints ``{"group", "version", "text", "rules", "default",
"declared"}`` (README "Admin --json shapes"); without a policy ``version``,
``text`` and ``default`` are null. A refused policy exits 64 naming the
line and the statement.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from provider import policy
from provider.errors import InvalidInput


def _read(source: str) -> str:
    if source == "-":
        return sys.stdin.read()
    try:
        return Path(source).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"policy file {source}: {getattr(exc, 'strerror', None) or exc}") from exc


def _text(shown: dict) -> str:
    if shown["version"] is None:
        return f"group {shown['group']}: no policy (everything is allowed)"
    return f"# group {shown['group']}, policy version {shown['version']}\n{shown['text']}"


def run(args, provider) -> int:
    if args.action == "set":
        shown = policy.set_policy(provider, args.group, _read(args.file))
    elif args.action == "clear":
        shown = policy.clear_policy(provider, args.group)
    else:
        shown = policy.show_policy(provider, args.group)
    print(json.dumps(shown, indent=2, sort_keys=True) if args.json else _text(shown))
    return 0


def add_parser(sub) -> None:
    """``policy`` and its actions on ``sub`` (provider/cli.py's subcommand adder, common options included)."""
    from provider.cli import _Sub
    from provider.cli_local import cmd_policy

    p = sub.action.add_parser("policy", help="set, show or clear a group's access policy")
    psub = _Sub(p.add_subparsers(dest="action", required=True), sub.common)
    s = psub.add_parser("set")
    s.add_argument("group")
    s.add_argument("file", help="the policy file, or - for stdin")
    for action in ("show", "clear"):
        psub.add_parser(action).add_argument("group")
    for parser in psub.action.choices.values():
        parser.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_policy)
