"""Building, versioning and re-signing the group archive from database rows.

The archive's wire format lives in ``grouptun.core.archive`` (its signature in ``grouptun.core.envelope``);
this module only maps the provider's rows (``tables.groups``,
``tables.members``) onto it. Limits: :func:`parse_own` trusts its input (it
reads archives this provider signed and stored itself).
"""

from __future__ import annotations

import json
from typing import Mapping

from sqlalchemy import update

from grouptun.core import policy as policy_mod
from grouptun.core import exportrules as exportrules_mod
from grouptun.core.archive import Archive, ArchivePolicy, GroupMetadata, parse_document
from grouptun.core.archivemember import ArchiveMember
from provider.routes_approved import approved_routes
from provider.store import member_rows
from provider.tables import groups


def next_version(previous: int, now: float) -> int:
    """Archive versions: strictly increasing, and at least the wall clock in milliseconds.

    Like epoch numbers they must not repeat after a restore from backup: a
    member watching with the version it saw must get the next change, not
    wait behind a restored, older counter. Unix milliseconds exceed every
    version issued before (unless the clock steps back).
    """
    return max(previous + 1, int(now * 1000))


def addresses(row) -> list[str]:
    return [a for a in (row.addr4, row.addr6) if a]


def parse_own(raw: bytes) -> Archive:
    """Parse an archive this provider signed itself (no verification needed: it comes from our DB)."""
    return parse_document(json.loads(json.loads(raw)["document"]), raw=raw)


def build_archive(g, version: int, info, rows, indices: dict[str, int], now: float,
                  provider_id: str | None = None, routes: Mapping[str, tuple[str, ...]] | None = None) -> Archive:
    """The unsigned archive of group row ``g``: the members in ``indices`` (by index), epoch ``info`` or None.

    With ``provider_id`` it carries ``group_metadata`` (grouptun extension, ``provider/membership.py``);
    ``routes``: member name -> its approved subnet routes (provider/routes_approved.py);
    with a stored policy, ``policy`` (``provider/policy.py``); with export rules, ``export_rules``
    (``provider/exportrules.py``)."""
    listed = sorted((r for r in rows if r.name in indices), key=lambda r: indices[r.name])
    routes = routes or {}
    return Archive(
        group_id=g.group_id, name=g.name, version=version, epoch=info,
        members=tuple(ArchiveMember(r.name, indices[r.name], tuple(addresses(r)), tuple(json.loads(r.endpoints)),
                                    r.ed25519_public, r.kem_public, r.instance, stored_pairs(r.attributes),
                                    r.expires_at, routes.get(r.name, ()), r.home) for r in listed),
        cidr=g.cidr, cidr6=g.cidr6, mtu=g.mtu,
        expires_at=(info.opened_at if info is not None else now) + 2 * g.rekey_after_seconds,
        metadata=None if provider_id is None else GroupMetadata(provider_id, g.expires_at,
                                                                stored_pairs(g.owner_fields), stored_names(g.owners)),
        policy=stored_policy(g), export_rules=stored_export_rules(g),
    )


def stored_export_rules(g) -> exportrules_mod.ExportRules | None:
    """Group row ``g``'s export rules (JSON, validated when written) for the archive; NULL or none: None."""
    rules = exportrules_mod.from_json(json.loads(g.export_rules)) if g.export_rules else None
    return rules if rules is not None and rules.rules else None


def stored_policy(g) -> ArchivePolicy | None:
    """Group row ``g``'s policy (canonical text, validated when written) for the archive; NULL: None."""
    if not g.policy:
        return None
    return ArchivePolicy(g.policy_version, policy_mod.parse(g.policy))


def stored_pairs(text: str | None) -> tuple[tuple[str, str], ...]:
    """A stored JSON attribute object (validated when written) as sorted pairs; NULL: ()."""
    return () if not text else tuple(sorted(json.loads(text).items()))


def stored_names(text: str | None) -> tuple[str, ...]:
    """A stored JSON list of names (sorted, validated when written); NULL: ()."""
    return () if not text else tuple(json.loads(text))


def resign(conn, g, signer, now: float) -> None:
    """Sign a new version of ``g``'s archive (same epoch and indices, current member rows)."""
    old = parse_own(g.archive)
    indices = {m.name: m.index for m in old.members}
    version = next_version(g.version, now)
    signed = signer.sign_forms(build_archive(g, version, old.epoch, member_rows(conn, g.id), indices, now,
                                             signer.public.fingerprint(), approved_routes(conn, g.id)))
    conn.execute(update(groups).where(groups.c.id == g.id).values(version=version, **signed))
