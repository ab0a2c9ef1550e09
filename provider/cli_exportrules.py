"""The admin CLI's export-rule commands (the operations are ``provider/exportrules.py``)::

    grouptun-provider export-rule set GROUP LABEL SELECTOR [--json]   (SELECTOR: * or k=v[,k2=v2])
    grouptun-provider export-rule list GROUP [--json]
    grouptun-provider export-rule remove GROUP LABEL [--json]

``--json`` prints ``{"group", "label", "selector"}`` for set and remove
(``selector`` null after remove) and ``{"group", "rules": [{"label",
"selector"}, ...]}`` for list. A refused rule exits 64 naming it.
"""

from __future__ import annotations

import json

from provider import exportrules


def _text(shown: dict) -> str:
    if "rules" not in shown:
        if shown["selector"] is None:
            return f"group {shown['group']}: label {shown['label']} open to every member"
        return f"group {shown['group']}: label {shown['label']} limited to {shown['selector']}"
    if not shown["rules"]:
        return f"group {shown['group']}: no export rules (every label open to every member)"
    return "\n".join(f"{r['label']:<24} {r['selector']}" for r in shown["rules"])


def run(args, provider) -> int:
    if args.action == "set":
        shown = exportrules.set_rule(provider, args.group, args.label, args.selector)
    elif args.action == "remove":
        shown = exportrules.remove_rule(provider, args.group, args.label)
    else:
        shown = exportrules.list_rules(provider, args.group)
    print(json.dumps(shown, indent=2, sort_keys=True) if args.json else _text(shown))
    return 0


def add_parser(sub) -> None:
    """``export-rule`` and its actions on ``sub`` (provider/cli.py's subcommand adder, common options included)."""
    from provider.cli import _Sub
    from provider.cli_local import cmd_export_rule

    p = sub.action.add_parser("export-rule", help="limit crypto-product labels to members with given attributes")
    esub = _Sub(p.add_subparsers(dest="action", required=True), sub.common)
    s = esub.add_parser("set")
    s.add_argument("group")
    s.add_argument("label", help="the product name of `grouptun export --label`")
    s.add_argument("selector", help="* (any member) or key=value[,key=value...] (all must hold)")
    esub.add_parser("list").add_argument("group")
    r = esub.add_parser("remove")
    r.add_argument("group")
    r.add_argument("label")
    for parser in esub.action.choices.values():
        parser.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_export_rule)
