"""Export rules: a crypto-product name limited to members with given signed attributes (issue 20, item 2).

A grouptun extension: the signed archive's OPTIONAL top-level key
``export_rules`` is ``{NAME: SELECTOR, ...}`` (absent: no limits, every
member may export every name, as before)::

    NAME      = the product name of ``grouptun export --label NAME`` (exporter.NAME_PATTERN);
                the rule covers every type, context and stream of that name
    SELECTOR  = the access policy's selector (grouptun.core.policy.parse_selector):
                "*" (any member) or "k=v,k2=v2" (every pair must hold), in canonical form

At most :data:`MAX_RULES` names. A member may export NAME when NAME has no
rule or when the rule's selector holds for the member's own signed
``attributes`` in the same archive.

What this cannot do: every member that holds the epoch secret can compute
every label itself (the products are derived locally, PROTOCOL.md 3.1). A
rule is kept by honest daemons (they refuse ``grouptun export`` and skip
export files), it does not keep a product from a member who runs other code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from grouptun.core import exporter
from grouptun.core.policy import Selector, holds, parse_selector, selector_text

MAX_RULES = 256


@dataclass(frozen=True)
class ExportRules:
    rules: tuple[tuple[str, Selector], ...] = ()   # (name, selector), sorted by name

    def to_json(self) -> dict:
        return {name: selector_text(selector) for name, selector in self.rules}

    def selector(self, name: str) -> Selector | None:
        """The rule's selector for ``name``; None: the name has no rule (open to every member)."""
        return next((selector for rule_name, selector in self.rules if rule_name == name), None)

    def refusal(self, name: str, attributes: Mapping[str, str]) -> str | None:
        """None when a member with ``attributes`` may export ``name``, else why not (naming the rule)."""
        selector = self.selector(name)
        if selector is None or holds(selector, attributes):
            return None
        own = ",".join(f"{k}={v}" for k, v in sorted(attributes.items())) or "none"
        return (f"label {name!r} is limited to members with {selector_text(selector)} "
                f"(export rule); this member's signed attributes: {own}")


def parse_rule(name: str, text: str) -> tuple[str, Selector]:
    """One rule (name, selector text); ValueError naming the rule and the part at fault."""
    if not isinstance(name, str) or exporter.NAME_PATTERN.fullmatch(name) is None:
        raise ValueError(f"export rule {name!r}: the label must be 1..64 characters of A-Z a-z 0-9 . _ -")
    if not isinstance(text, str):
        raise ValueError(f"export rule {name!r}: the selector is not a string")
    try:
        return name, parse_selector(text)
    except ValueError as exc:
        raise ValueError(f"export rule {name!r} ({text!r}): selector: {exc}") from exc


def from_json(obj: object) -> ExportRules:
    """The archive's ``export_rules`` object; ValueError unless every rule parses and is canonical."""
    if not isinstance(obj, dict):
        raise ValueError("export_rules: not an object of label: selector")
    if len(obj) > MAX_RULES:
        raise ValueError(f"export_rules: more than {MAX_RULES} rules")
    rules = []
    for name, text in obj.items():
        rule = parse_rule(name, text)
        if selector_text(rule[1]) != text:
            raise ValueError(f"export rule {name!r} ({text!r}): not the canonical selector")
        rules.append(rule)
    return ExportRules(tuple(sorted(rules)))
