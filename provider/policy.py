"""A group's access policy at the provider (issue 17 item 6; grammar and matching: ``grouptun.core.policy``).

- :func:`set_policy` parses the text, refuses a policy that does not parse
  or whose rules name an attribute key that is unknown -- no member has it,
  no unrevoked, unexpired token gives it, the policy does not ``declare`` it
  -- with InvalidInput (HTTP 400, exit 64) naming the line and the
  statement; otherwise stores the canonical text with the next policy
  version and re-signs the archive (same epoch: members apply it from
  their watch, without a restart). Setting the same canonical text again
  changes nothing.
- :func:`clear_policy` drops it (the archive then has no ``policy``:
  everything allowed again); the version counter is kept, so a later
  policy gets a higher version.
- :func:`show_policy` is what ``policy show`` prints.

Each change is one audited transaction (``policy-set``, ``policy-clear``);
a refusal changes nothing. Limits: removing the last member that has a key,
or an attribute, later does not touch a policy that names it.
"""

from __future__ import annotations

from sqlalchemy import select, update

from grouptun.core import policy as policy_mod
from provider.archives import stored_pairs
from provider.errors import InvalidInput, NotFound
from provider.membership import _group, _resign
from provider.store import add_audit
from provider.tables import groups, members, tokens


def parse(text: str):
    """The policy in ``text``, else InvalidInput naming the line and statement at fault."""
    try:
        return policy_mod.parse(text)
    except policy_mod.PolicyError as exc:
        raise InvalidInput(f"policy refused: {exc}") from exc


def known_keys(conn, g, now: float) -> set[str]:
    """Attribute keys of the group's members and of the tokens that can still enroll one."""
    keys: set[str] = set()
    for row in conn.execute(select(members.c.attributes).where(members.c.group == g.id)):
        keys |= {k for k, _ in stored_pairs(row.attributes)}
    for row in conn.execute(select(tokens.c.attributes).where(
            tokens.c.group == g.id, tokens.c.revoked_at.is_(None), tokens.c.expires_at > now)):
        keys |= {k for k, _ in stored_pairs(row.attributes)}
    return keys


def check_keys(parsed, text: str, known: set[str]) -> None:
    """InvalidInput naming the first rule (line and text) that names a key nobody has and none declares."""
    allowed = known | set(parsed.declared)
    rules = iter(parsed.rules)
    for number, statement in policy_mod.statements(text):
        words = statement.split()
        if words[0] in ("default", "declare"):
            continue
        unknown = sorted(next(rules).keys() - allowed)
        if unknown:
            raise InvalidInput(f"policy refused: line {number} ({statement!r}): unknown attribute key "
                               f"{unknown[0]!r}: no member or join token has it (add 'declare {unknown[0]}' "
                               "to the policy to name it before any member has it)")


def set_policy(provider, group: str, text: str) -> dict:
    parsed = parse(text)
    canonical = str(parsed)
    now = provider.clock()
    with provider.store.write() as conn:
        g = _group(conn, group)
        check_keys(parsed, text, known_keys(conn, g, now))
        if g.policy == canonical:
            return show_policy(provider, group, conn)
        version = (g.policy_version or 0) + 1
        conn.execute(update(groups).where(groups.c.id == g.id).values(policy=canonical, policy_version=version))
        add_audit(conn, now, "admin", "policy-set", group, version=version, rules=len(parsed.rules),
                  default=parsed.default)
        _resign(conn, provider, group, now)
        return show_policy(provider, group, conn)


def clear_policy(provider, group: str) -> dict:
    now = provider.clock()
    with provider.store.write() as conn:
        g = _group(conn, group)
        if g.policy is None:
            raise NotFound(f"group {group!r} has no policy (everything is allowed)")
        conn.execute(update(groups).where(groups.c.id == g.id).values(policy=None))
        add_audit(conn, now, "admin", "policy-clear", group, version=g.policy_version)
        _resign(conn, provider, group, now)
        return show_policy(provider, group, conn)


def show_policy(provider, group: str, conn=None) -> dict:
    """``{"group", "version", "text", "rules", "default", "declared"}``; no policy: version and text None."""
    if conn is None:
        with provider.store.read() as conn:
            return show_policy(provider, group, conn)
    g = _group(conn, group)
    if g.policy is None:
        return {"group": group, "version": None, "text": None, "rules": [], "default": None, "declared": []}
    parsed = policy_mod.parse(g.policy)
    return {"group": group, "version": g.policy_version, "text": g.policy,
            "rules": [str(r) for r in parsed.rules], "default": parsed.default, "declared": list(parsed.declared)}
