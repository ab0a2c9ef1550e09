"""A group's export rules at the provider (issue 20 item 2; grammar and matching: ``grouptun.core.exportrules``).

- :func:`set_rule` limits the crypto-product name LABEL to members whose
  signed attributes satisfy SELECTOR (the access policy's selector: ``*``
  or ``k=v,k2=v2``). A bad label or selector, or a selector naming an
  attribute key that no member has and no unrevoked, unexpired join token
  gives, is InvalidInput (HTTP 400, exit 64) naming the rule; otherwise the
  rule is stored and the archive re-signed in the same epoch (members
  apply it from their watch). Setting the same rule again changes nothing.
- :func:`remove_rule` drops one (NotFound if the label has none): the label
  is open to every member again.
- :func:`list_rules` is what ``export-rule list`` prints.

Each change is one audited transaction (``export-rule-set``,
``export-rule-remove``); a refusal changes nothing. The rules are kept by
the members' honest daemons only: every member holding the epoch secret can
derive every label itself (``grouptun.core.exportrules``).
"""

from __future__ import annotations

import json

from sqlalchemy import update

from grouptun.core import exportrules as exportrules_mod
from grouptun.core.policy import selector_text
from provider.errors import InvalidInput, NotFound
from provider.membership import _group, _resign
from provider.policy import known_keys
from provider.store import add_audit
from provider.tables import groups


def _stored(g) -> dict[str, str]:
    return json.loads(g.export_rules) if g.export_rules else {}


def _write(conn, provider, g, rules: dict[str, str], now: float) -> None:
    if len(rules) > exportrules_mod.MAX_RULES:
        raise InvalidInput(f"export rules refused: at most {exportrules_mod.MAX_RULES} per group")
    text = json.dumps(dict(sorted(rules.items())), sort_keys=True) if rules else None
    conn.execute(update(groups).where(groups.c.id == g.id).values(export_rules=text))
    _resign(conn, provider, g.name, now)


def set_rule(provider, group: str, label: str, selector: str) -> dict:
    try:
        name, parsed = exportrules_mod.parse_rule(label, selector)
    except ValueError as exc:
        raise InvalidInput(f"export rule refused: {exc}") from exc
    canonical = selector_text(parsed)
    now = provider.clock()
    with provider.store.write() as conn:
        g = _group(conn, group)
        unknown = sorted({k for k, _ in parsed} - known_keys(conn, g, now))
        if unknown:
            raise InvalidInput(f"export rule refused: {name!r} ({selector!r}): unknown attribute key "
                               f"{unknown[0]!r}: no member or join token has it")
        rules = _stored(g)
        if rules.get(name) != canonical:
            _write(conn, provider, g, {**rules, name: canonical}, now)
            add_audit(conn, now, "admin", "export-rule-set", group, label=name, selector=canonical)
    return {"group": group, "label": name, "selector": canonical}


def remove_rule(provider, group: str, label: str) -> dict:
    now = provider.clock()
    with provider.store.write() as conn:
        g = _group(conn, group)
        rules = _stored(g)
        if label not in rules:
            raise NotFound(f"group {group!r} has no export rule for label {label!r} (it is open to every member)")
        selector = rules.pop(label)
        _write(conn, provider, g, rules, now)
        add_audit(conn, now, "admin", "export-rule-remove", group, label=label, selector=selector)
    return {"group": group, "label": label, "selector": None}


def list_rules(provider, group: str) -> dict:
    """``{"group", "rules": [{"label", "selector"}, ...]}``, sorted by label."""
    with provider.store.read() as conn:
        g = _group(conn, group)
    return {"group": group, "rules": [{"label": k, "selector": v} for k, v in sorted(_stored(g).items())]}
