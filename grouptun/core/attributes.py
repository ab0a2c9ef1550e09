"""Signed member attributes and group owner fields: ``key=value`` pairs (seed 000: attributes in the KGA).

Grammar (one rule, used by the provider when it stores them, by the
admin CLI when it reads them, and by members when they parse an archive)::

    key    = [a-z][a-z0-9_.-]{0,31}
    value  = [A-Za-z0-9_.:@/+-]{1,64}
    pair   = key "=" value
    list   = pair *("," pair)            at most MAX_ATTRIBUTES pairs, keys unique

The printed form sorts the pairs by key, so ``parse(render(x)) == x`` for
every valid mapping and ``render(parse(s))`` is the canonical form of
``s``. No whitespace, quoting or escapes: values are identifiers (roles,
sites, owner ids), never free text, so a value can be matched or shown
without any decoding. Errors are ``ValueError`` naming the pair at fault;
callers turn them into their own refusal (the provider a 400).
"""

from __future__ import annotations

import re
from typing import Iterable, Mapping

KEY = re.compile(r"[a-z][a-z0-9_.-]{0,31}")
VALUE = re.compile(r"[A-Za-z0-9_.:@/+-]{1,64}")
MAX_ATTRIBUTES = 16


def check(attributes: object, what: str = "attributes") -> dict[str, str]:
    """A valid attribute mapping (a fresh, key-sorted dict), else ValueError naming the entry at fault."""
    if not isinstance(attributes, Mapping):
        raise ValueError(f"{what}: not an object of key=value pairs")
    if len(attributes) > MAX_ATTRIBUTES:
        raise ValueError(f"{what}: at most {MAX_ATTRIBUTES} pairs, not {len(attributes)}")
    for key, value in attributes.items():
        if not isinstance(key, str) or not KEY.fullmatch(key):
            raise ValueError(f"{what}: key {key!r} must match {KEY.pattern}")
        if not isinstance(value, str) or not VALUE.fullmatch(value):
            raise ValueError(f"{what}: value of {key!r} must match {VALUE.pattern}")
    return dict(sorted(attributes.items()))


def parse_pair(text: str) -> tuple[str, str]:
    """One ``key=value``; ValueError naming it when it is not one."""
    key, sep, value = text.partition("=")
    if not sep:
        raise ValueError(f"{text!r} is not key=value")
    check({key: value}, f"{text!r}")
    return key, value


def parse(text: str | Iterable[str]) -> dict[str, str]:
    """``"k=v,k2=v2"`` (or an iterable of such strings, e.g. repeated --attr options) -> mapping."""
    pieces = [text] if isinstance(text, str) else list(text)
    pairs: dict[str, str] = {}
    for piece in pieces:
        if piece == "":  # render({}) prints nothing: none
            continue
        for item in piece.split(","):
            key, value = parse_pair(item)
            if key in pairs:
                raise ValueError(f"key {key!r} given twice")
            pairs[key] = value
    return check(pairs)


def render(attributes: Mapping[str, str]) -> str:
    """The canonical text form (pairs sorted by key); "" for none."""
    return ",".join(f"{k}={v}" for k, v in check(attributes).items())
