"""The provider's operations, shared by the HTTP app and the admin CLI.

Every operation is one database transaction: it authenticates or
validates first, then changes state, then commits; callers acknowledge only
after it returned. A refusal (``ProviderFault``) rolls the transaction back
and is then written to the audit log in a transaction of its own.

Epochs: every membership change opens a new epoch in the same transaction
(a removed member's row and capsules go, so the new epoch has nothing for
it). Other triggers -- the time threshold, a packet report past the
per-sender threshold, an admin or member rekey, daemon starts with their
challenges -- call :meth:`Provider.open_epoch`. Numbering: ``epochs.py``.

Groups with fewer than 2 members (PROTOCOL.md 1: 2 <= N) have no epoch:
a membership change that leaves one member signs an archive without one
(``Archive.epoch is None``), and rekeys of such a group are refused
(``NotEnoughMembers``). A daemon's start request is recorded as pending
in the database (:meth:`Provider.start`, table ``starts``: at most
``MAX_PENDING_STARTS`` per group, each for ``PENDING_START_TTL`` seconds)
and every epoch opened later lists the pending challenges, so the first
epoch of the group answers the daemons already waiting for it -- and, with
several replicas, an epoch opened by one replica answers the starts that
reached the others meanwhile: their batches then find their challenges
listed by the current epoch and answer with its archive (one epoch for
starts within the window, whichever replica they reached).

One running instance per member (PROTOCOL.md 4): a start names its member,
and the epoch that answers it sets that member's ``instance`` (SHA-256 of
the challenge, ``members.instance``), which every archive signed afterwards
carries. An epoch answers at most one challenge per member (the latest; a
pending one is replaced by a later start of the same member), so two
daemons of one member never hold the same epoch as their own.

Archive versions: :func:`provider.archives.next_version`; pending starts:
:mod:`provider.pending`. Clock, sleep and randomness are
injected (tests use fakes).
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass
from typing import Callable, Mapping

from cryptography.hazmat.primitives.asymmetric import ed25519
from sqlalchemy import delete, insert, select, update

from grouptun.core.keys import HEAP, SecretMemory
from grouptun.core.archivemember import instance_of
from provider import members as mem
from provider import linkstate, membership, routes_approved
from provider.archives import addresses, build_archive, next_version, parse_own, resign
from provider.epochs import (MAX_WAIT, Recipient, Thresholds, build_epoch, next_epoch_number)
from provider.errors import Conflict, Forbidden, InvalidInput, NotEnoughMembers, NotFound, ProviderFault
from provider.keys import Signer
from provider.pending import MAX_PENDING_STARTS, PENDING_START_TTL, drop_starts, pending_start_rows, record_start
from provider.retention import AuditPruner, AuditRetention
from provider.store import Store, add_audit, group_row, member_rows, prune_capsules
from provider.tables import capsules, epochs, groups, members, remote_groups, tokens

SUITES = {"aes-256-gcm": 1, "aes-256-ctr-hmac-sha256": 2}
MAX_REKEY_PACKETS = 2**27
MTU = 1420
MEMBER_REKEY_MIN_AGE = 5.0  # a member rekey on an epoch younger than this is coalesced into it
MIN_GROUP_SIZE = 2  # PROTOCOL.md 1
MIGRATED_SIZE = 32  # a member's authenticator (grouptun.control.credkeys.SIZE)
__all__ = ["MAX_PENDING_STARTS", "PENDING_START_TTL", "Opened", "Provider", "next_version"]  # re-exports kept


@dataclass(frozen=True)
class Opened:
    version: int
    archive: bytes | None
    epoch: int | None
    indices: dict[str, int]
    compact: bytes | None = None  # the same version's compact form (PROTOCOL.md 2.2); None: only the full one

    def form(self, compact: bool) -> bytes | None:
        """The signed archive in the form asked for (the full one where no compact form is stored)."""
        return self.compact if compact and self.compact is not None else self.archive



def _https_link_send(row):
    from provider.remote import https_send  # noqa: PLC0415 -- see Provider.enroll

    return https_send(row)


def add_member_row(conn, g, now: float, **values) -> list[str]:
    """Insert member ``values["name"]`` into group row ``g`` with the next free addresses (Conflict when the name
    is enrolled already); its addresses. Shared by enrollment here and a linked provider's (provider/linked.py)."""
    rows = member_rows(conn, g.id)
    if any(r.name == values["name"] for r in rows):
        raise Conflict(f"member {values['name']!r} is already enrolled")
    net4, net6 = mem.check_networks(g.cidr, g.cidr6)
    addr4 = mem.allocate(net4, {r.addr4 for r in rows})
    addr6 = mem.allocate(net6, {r.addr6 for r in rows if r.addr6}) if net6 else None
    conn.execute(insert(members).values(group=g.id, addr4=addr4, addr6=addr6, enrolled_at=now, **values))
    return [a for a in (addr4, addr6) if a]

class Provider:
    def __init__(self, store: Store, signer: Callable[[], Signer], clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], None] = time.sleep, rand: Callable[[int], bytes] = os.urandom,
                 audit_retention: AuditRetention | None = None, secrets: SecretMemory = HEAP) -> None:
        self.store = store
        self.secrets = secrets  # where each new epoch's SS and salt live while it is sealed
        self._signer_factory = signer
        self._signer: Signer | None = None
        self.clock, self.sleep, self.rand = clock, sleep, rand
        self.started_at = clock()
        self.on_epoch: Callable[[str], None] | None = None  # called after an epoch committed (metrics)
        self._argon_slots = threading.BoundedSemaphore(2)
        self.audit_pruner = AuditPruner(store, audit_retention or AuditRetention(), clock)  # the ticker runs it
        self.link_send = _https_link_send  # link row -> transport to that provider (tests: an in-memory one)
        self.vouch_ttl = 30 * 86400.0  # seconds a voucher is valid (provider.json vouch_ttl_days, provider/links.py)

    @property
    def signer(self) -> Signer:
        if self._signer is None:
            self._signer = self._signer_factory()
        return self._signer

    @property
    def provider_id(self) -> str:
        """The archive's ``group_metadata.provider_id``: the fingerprint members pin (seed 000's PID)."""
        return self.signer.public.fingerprint()

    # --- audit ---------------------------------------------------------------

    def refused(self, actor: str, action: str, group: str | None, reason: str) -> None:
        with self.store.write() as conn:
            add_audit(conn, self.clock(), actor, "refused", group, request=action, reason=reason)

    def audit_link_request(self, link: str, group: str, member: str, path: str) -> None:
        """A member request a linked provider forwarded (provider/routes.py), audited as it arrives."""
        now = self.clock()
        with self.store.write() as conn:
            add_audit(conn, now, f"link:{link}", "link-request", group, member=member, request=path)
            linkstate.record(conn, link, now)  # answered: the link is up as seen from here

    def _audited(self, actor: str, action: str, group: str | None, fn: Callable):
        try:
            return fn()
        except ProviderFault as exc:
            self.refused(actor, action, group, exc.reason)
            raise

    # --- groups --------------------------------------------------------------

    def create_group(self, name: str, cidr: str, cidr6: str | None = None, suite: str = "aes-256-gcm",
                     rekey_after_seconds: float = 600.0, rekey_after_packets: int = MAX_REKEY_PACKETS,
                     switch_delay: float = 2.0, grace: float = 30.0,
                     then: Callable[[object, float], None] | None = None) -> dict:
        """A new group; ``then(conn, now)`` runs in the same transaction (AddGroup's tokens, membership.py)."""
        mem.check_group_name(name)
        mem.check_networks(cidr, cidr6)
        if suite not in SUITES:
            raise InvalidInput(f"--suite must be one of {', '.join(SUITES)}")
        if not 10.0 <= rekey_after_seconds <= 86400.0 * 7:
            raise InvalidInput("--rekey-after must be between 10s and 7d")
        if not 1024 <= rekey_after_packets <= MAX_REKEY_PACKETS:
            raise InvalidInput(f"--rekey-packets must be between 1024 and {MAX_REKEY_PACKETS}")
        if not 0.0 <= switch_delay <= 60.0:
            raise InvalidInput("--switch-delay must be between 0s and 60s")
        if not 1.0 <= grace <= 3600.0:
            raise InvalidInput("--grace must be between 1s and 1h")
        now = self.clock()
        with self.store.write() as conn:
            if group_row(conn, name) is not None or conn.execute(
                    select(remote_groups.c.id).where(remote_groups.c.name == name)).first() is not None:
                raise Conflict(f"group {name!r} exists already")
            conn.execute(insert(groups).values(
                name=name, group_id=self.rand(16), cidr=cidr, cidr6=cidr6, suite=SUITES[suite], mtu=MTU,
                rekey_after_seconds=rekey_after_seconds, rekey_after_packets=rekey_after_packets,
                switch_delay=switch_delay, grace=grace, created_at=now, epoch_hw=0, version=0))
            add_audit(conn, now, "admin", "group-create", name, cidr=cidr, cidr6=cidr6, suite=suite,
                      rekey_after_seconds=rekey_after_seconds, rekey_after_packets=rekey_after_packets)
            if then is not None:
                then(conn, now)
        return self.show_group(name)

    def show_group(self, name: str) -> dict:
        with self.store.read() as conn:
            g = _group(conn, name)
            rows = member_rows(conn, g.id)
        suite = next(k for k, v in SUITES.items() if v == g.suite)
        return {"name": g.name, "group_id": g.group_id.hex(), "cidr": g.cidr, "cidr6": g.cidr6, "suite": suite,
                "mtu": g.mtu, "rekey_after_seconds": g.rekey_after_seconds,
                "rekey_after_packets": g.rekey_after_packets, "switch_delay": g.switch_delay, "grace": g.grace,
                "members": len(rows), "version": g.version,
                "epoch": g.current_epoch, "epoch_opened_at": g.epoch_opened_at, "epoch_high_water": g.epoch_hw}

    def list_groups(self) -> list[str]:
        with self.store.read() as conn:
            return [r.name for r in conn.execute(select(groups.c.name).order_by(groups.c.name))]

    def list_members(self, group: str) -> list[dict]:
        version, raw = self.store.archive(group)
        indices = {}
        if raw is not None:
            indices = {m.name: m.index for m in parse_own(raw).members}
        with self.store.read() as conn:
            rows = member_rows(conn, _group(conn, group).id)
        return [{"name": r.name, "index": indices.get(r.name), "addresses": addresses(r),
                 "endpoints": json.loads(r.endpoints), "enrolled_at": r.enrolled_at, **membership.member_entry(r)}
                for r in rows]

    # --- invitations and enrollment -----------------------------------------

    def invite(self, group: str, name: str, ttl: float) -> str:
        """Store a one-time token for ``name``; returns the secret (only its hash is stored).
        Reusable keys, attributes and deadlines: :func:`provider.membership.invite`."""
        return membership.invite(self, group, name, ttl)[0]

    def enroll(self, secret: str, name: str, ed25519_public: bytes, kem_public: bytes, authenticator: bytes,
               endpoints: list[str], proof: bytes, address: str = "?") -> dict:
        """Consume the join token ``secret``; ``proof`` is the Ed25519 signature over
        ``jointoken.enroll_message(...)`` of the other fields (checked before the token is touched).
        Only an Argon2id hash of ``authenticator`` is stored."""
        from provider import remote  # noqa: PLC0415 -- remote imports the routes, which import this module

        actor = f"enroll:{address}"
        # a token of a group a linked provider owns (provider/remote.py), else one of ours
        return self._audited(actor, "enroll", None, lambda: remote.enroll(
            self, secret, name, ed25519_public, kem_public, authenticator, endpoints, proof) or self._enroll(
            secret, name, ed25519_public, kem_public, authenticator, endpoints, proof))

    def _enroll(self, secret, name, ed_public, kem_public, authenticator, endpoints, proof) -> dict:
        endpoints = mem.check_enrollment(secret, name, ed_public, kem_public, authenticator, endpoints, proof)
        cred_hash = mem.hash_credential(authenticator)
        digest = mem.token_hash(secret)
        with self.store.read() as conn:
            tok = conn.execute(select(tokens.c.group).where(tokens.c.token_hash == digest)).first()
            group = conn.execute(select(groups.c.name).where(groups.c.id == tok.group)).scalar() if tok else None
        if group is None:
            raise Forbidden("join token unknown, used or expired")

        def mutate(conn, g, now):
            tok = conn.execute(select(tokens).where(tokens.c.token_hash == digest)).first()
            attributes, expires_at = membership.redeem(conn, tok, g, name, now)  # refusals with their reason
            addresses = add_member_row(conn, g, now, name=name, ed25519_public=ed_public, kem_public=kem_public,
                                       credential_hash=cred_hash, endpoints=json.dumps(endpoints),
                                       attributes=attributes, expires_at=expires_at)
            add_audit(conn, now, f"member:{name}", "enroll", g.name, addresses=addresses,
                      key=membership.key_id(digest), expires_at=expires_at)
            return addresses

        addresses, opened = self._change_and_open(group, "enroll", mutate)
        return {"group": group, "member_name": name, "index": opened.indices[name], "addresses": addresses,
                "provider_keys": self.signer.public.to_json(), "archive": opened.archive.decode("utf-8")}

    def remove_member(self, group: str, name: str) -> Opened:
        def mutate(conn, g, now):
            if not membership.bury(conn, g, name, now, f"{name!r} was removed from {group!r} by the admin"):
                raise NotFound(f"no member {name!r} in group {group!r}")
            add_audit(conn, now, "admin", "member-remove", group, member=name)

        return self._change_and_open(group, "remove", mutate)[1]

    # --- subnet routes (provider/routes_approved.py) ---------------------------

    def approve_route(self, group: str, member: str, prefix: str) -> tuple[str, Opened]:
        """Approve ``prefix`` behind ``member`` and open the epoch whose archive lists it."""
        return self._change_and_open(
            group, "route", lambda conn, g, now: routes_approved.approve(conn, g, member, prefix, now))

    def remove_route(self, group: str, member: str, prefix: str) -> tuple[str, Opened]:
        return self._change_and_open(
            group, "route", lambda conn, g, now: routes_approved.remove(conn, g, member, prefix, now))

    def request_routes(self, group: str, member: str, prefixes: list[str]) -> list[str]:
        """A member's own prefixes, listed as requested for the admin; no epoch (nothing is routed yet)."""
        with self.store.write() as conn:
            return routes_approved.request(conn, _group(conn, group), member, prefixes, self.clock())

    def list_routes(self, group: str) -> list[dict]:
        with self.store.read() as conn:
            return routes_approved.list_routes(conn, _group(conn, group))

    # --- epochs ----------------------------------------------------------------

    def open_epoch(self, group: str, reason: str, actor: str, starts: Mapping[str, bytes] | None = None,
                   unless: Callable[[object, object, float], bool] | None = None) -> Opened | None:
        """Open the next epoch; NotEnoughMembers while the group has fewer than 2 members.

        ``unless(conn, group_row, now)`` is asked inside the epoch's write
        transaction: True means "nothing to do" (returns None, nothing
        written). Deciding there, not on an earlier read, is what makes two
        concurrent requests for the same reason open one epoch, not two.
        ``starts`` (member -> start challenge, one per member) are answered
        by this epoch: it lists them and names their instances.
        """
        starts = dict(starts or {})
        def mutate(conn, g, now):
            if unless is not None and unless(conn, g, now):
                raise _NothingToDo
            count = len(member_rows(conn, g.id))
            if count < MIN_GROUP_SIZE:
                raise NotEnoughMembers(f"group {group!r} has {count} member(s); an epoch needs {MIN_GROUP_SIZE}")
            add_audit(conn, now, actor, "rekey", group, reason=reason, challenges=len(starts))

        try:
            return self._change_and_open(group, reason, mutate, starts)[1]
        except _NothingToDo:
            return None

    def start(self, group: str, starts: Mapping[str, bytes]) -> Opened | None:
        """Daemons' start requests (member -> challenge, one per member): the archive of an epoch
        listing them and naming their instances, or None (recorded as pending).

        The epoch is a new one, unless another replica's epoch listed every
        one of ``starts`` meanwhile (they were recorded first, so it saw
        them): then that epoch, still the current one, answers. None means
        the group has fewer than 2 members: the challenges wait (bounded,
        expiring) for the first epoch the group gets.
        """
        self.record_starts(group, starts)
        answered: list[Opened] = []

        def listed_by_current(conn, g, _now) -> bool:
            if g.current_epoch is None:
                return False
            row = conn.execute(select(epochs.c.challenges).where(
                epochs.c.group == g.id, epochs.c.epoch == g.current_epoch)).scalar()
            listed = set(json.loads(row or "[]"))
            if not all(c.hex() in listed for c in starts.values()):
                return False
            answered.append(Opened(g.version, g.archive, g.current_epoch, {}, g.compact))
            return True

        try:
            opened = self.open_epoch(group, "start", "members", starts, unless=listed_by_current)
        except NotEnoughMembers:
            return None
        return opened if opened is not None else answered[0]

    def record_starts(self, group: str, starts: Mapping[str, bytes]) -> None:
        """Record start challenges as pending (each replaces its member's earlier one): every replica's
        next epoch of the group lists them."""
        now = self.clock()
        with self.store.light() as conn:
            g = _group(conn, group)
            for member, challenge in starts.items():
                record_start(conn, g.id, member, challenge, now + PENDING_START_TTL)

    def pending_starts(self, group: str) -> dict[str, bytes]:
        """Unexpired pending starts of ``group`` (member -> challenge), oldest first."""
        with self.store.read() as conn:
            return pending_start_rows(conn, _group(conn, group).id, self.clock(), MAX_PENDING_STARTS)

    def change_and_open(self, group: str, reason: str, mutate) -> tuple[object, Opened]:
        """``mutate(conn, group_row, now)`` and the next epoch in one transaction (membership.py's removals)."""
        return self._change_and_open(group, reason, mutate)

    def _change_and_open(self, group: str, reason: str, mutate,
                         starts: Mapping[str, bytes] | None = None) -> tuple[object, Opened]:
        """Run ``mutate(conn, group_row, now)`` and open the next epoch, in one transaction.

        The epoch also answers the group's pending starts (read and dropped
        in its transaction, so every replica's are seen); ``starts`` win over
        a pending start of the same member.
        """
        starts = dict(starts or {})
        for _attempt in range(int(MAX_WAIT * 4) + 8):
            now = self.clock()
            with self.store.write() as conn:
                g = _group(conn, group)
                number, wait = next_epoch_number(g.epoch_hw, g.created_at, now, self.started_at,
                                                 g.current_epoch)
                if wait == 0.0 or wait > MAX_WAIT:
                    result = mutate(conn, g, now)
                    if wait > MAX_WAIT:  # wall clock went back (or a burst after restore): do not stall
                        add_audit(conn, now, "provider", "clock-behind", group, epoch=number)
                    listed = {**pending_start_rows(conn, g.id, now, MAX_PENDING_STARTS), **starts}
                    opened = self._open_locked(conn, g, number, reason, listed, now)
            if wait == 0.0 or wait > MAX_WAIT:  # committed
                if opened.epoch is not None:
                    if self.on_epoch is not None:
                        self.on_epoch(group)
                return result, opened
            self.sleep(wait)
        raise Conflict("could not allocate an epoch number in time")

    def _open_locked(self, conn, g, number: int, reason: str, starts: dict[str, bytes], now: float) -> Opened:
        rows = member_rows(conn, g.id)
        version = next_version(g.version, now)
        if len(rows) < MIN_GROUP_SIZE:  # no epoch (PROTOCOL.md 1); one member still gets a signed archive
            conn.execute(delete(capsules).where(capsules.c.group == g.id))
            indices = {r.name: k for k, r in enumerate(sorted(rows, key=lambda r: r.name))}
            unsigned = build_archive(g, version, None, rows, indices, now, self.provider_id)
            signed = self.signer.sign_forms(unsigned) if rows else {"archive": None, "compact": None}
            conn.execute(update(groups).where(groups.c.id == g.id).values(
                version=version, current_epoch=None, epoch_opened_at=None, **signed))
            add_audit(conn, now, "provider", "no-epoch", g.name, reason=reason, group_size=len(rows), version=version)
            return Opened(version, signed["archive"], None, indices, signed["compact"])
        starts = {name: c for name, c in starts.items() if any(r.name == name for r in rows)}
        if starts:  # this epoch answers them: each member's latest start owns it from now on
            for name, challenge in starts.items():
                conn.execute(update(members).where(members.c.group == g.id, members.c.name == name)
                             .values(instance=instance_of(challenge)))
            rows = member_rows(conn, g.id)
        challenges = tuple(starts.values())
        thresholds = Thresholds(g.suite, g.rekey_after_seconds, g.rekey_after_packets, g.switch_delay, g.grace)
        sealed = build_epoch(g.group_id, number, [Recipient(r.name, r.kem_public) for r in rows], thresholds,
                             challenges, now, self.rand, self.secrets)
        info = sealed.info
        conn.execute(insert(epochs).values(
            group=g.id, epoch=number, suite=info.suite, nonce_start=info.nonce_start, group_size=info.group_size,
            data_id=info.data_id, key_check=info.key_check, opened_at=now, reason=reason[:64],
            challenges=json.dumps([c.hex() for c in info.challenges])))
        conn.execute(insert(capsules), [{"group": g.id, "epoch": number, "member": name, "idx": idx,
                                         "capsule": cap, "sealed_salt": salt}
                                        for name, idx, cap, salt in sealed.sealed])
        prune_capsules(conn, g.id, g.current_epoch if g.current_epoch is not None else number)
        drop_starts(conn, g.id, starts, now)
        signed = self.signer.sign_forms(build_archive(g, version, info, rows, sealed.indices, now, self.provider_id,
                                                      routes_approved.approved_routes(conn, g.id)))
        conn.execute(update(groups).where(groups.c.id == g.id).values(
            epoch_hw=number, current_epoch=number, epoch_opened_at=now, version=version, **signed))
        add_audit(conn, now, "provider", "epoch", g.name, epoch=number, reason=reason, group_size=len(rows),
                  version=version, challenges=len(challenges))
        return Opened(version, signed["archive"], number, sealed.indices, signed["compact"])

    def due_for_time_rekey(self) -> list[str]:
        now = self.clock()
        with self.store.read() as conn:
            rows = conn.execute(select(groups.c.name).where(
                groups.c.current_epoch.is_not(None),
                groups.c.epoch_opened_at + groups.c.rekey_after_seconds <= now))
            return [r.name for r in rows]

    def time_rekey(self, group: str) -> bool:
        """Open an epoch if ``group``'s current one is still past its time threshold (the ticker)."""
        return self.open_epoch(group, "time", "provider", unless=_not_due) is not None

    def member_rekey(self, group: str, name: str, reason: str) -> bool:
        """Open an epoch for a member's request unless the current one is brand new (then coalesce).

        Members of a group see the same trouble at the same time, so their
        requests arrive together: all but the first are coalesced.
        """
        return self.open_epoch(group, f"member:{reason}"[:64], f"member:{name}", unless=_brand_new) is not None

    # --- member requests (already authenticated) -------------------------------

    def member_key(self, group: str, name: str) -> ed25519.Ed25519PublicKey | None:
        with self.store.read() as conn:
            raw = conn.execute(select(members.c.ed25519_public).join(groups, groups.c.id == members.c.group)
                               .where(groups.c.name == group, members.c.name == name)).scalar()
        return None if raw is None else ed25519.Ed25519PublicKey.from_public_bytes(raw)

    def kem_public(self, group: str, name: str) -> bytes:
        """Member ``name``'s KEM public key: what the compact archive names by its SHA-256 (PROTOCOL.md 2.2)."""
        with self.store.read() as conn:
            value = conn.execute(select(members.c.kem_public).join(groups, groups.c.id == members.c.group).where(
                groups.c.name == group, members.c.name == name)).scalar()
        if value is None:
            raise NotFound(f"no member {name!r} in group {group!r}")
        return value

    def capsule(self, group: str, name: str, epoch: int, column=capsules.c.capsule) -> bytes:
        with self.store.read() as conn:
            value = conn.execute(select(column).join(groups, groups.c.id == capsules.c.group).where(
                groups.c.name == group, capsules.c.epoch == epoch, capsules.c.member == name)).scalar()
        if value is None:
            raise NotFound(f"no capsule for {name!r} in epoch {epoch}")
        return value

    def salt(self, group: str, name: str, epoch: int, presented: bytes,
             new_authenticator: bytes | None = None) -> bytes:
        """The sealed salt of ``epoch`` for a member whose ``presented`` secret matches its stored hash.

        ``presented`` is the member's authenticator, or the credential of a
        member not yet migrated. With ``new_authenticator`` (a migration,
        ``grouptun.control.credmigrate``) ``presented`` is the credential: once it
        matches, a hash of ``new_authenticator`` replaces the stored one in
        the same step; a request whose ``new_authenticator`` is already the
        stored one (a retry after a crash) succeeds and changes nothing.
        The route checked the request signature before this.
        """
        if new_authenticator is not None and len(new_authenticator) != MIGRATED_SIZE:
            raise InvalidInput(f"new_authenticator must be {MIGRATED_SIZE} bytes")

        def check() -> bytes:
            stored = self._credential_hash(group, name)
            with self._argon_slots:  # Argon2id costs 19 MiB and ~60 ms: bound how many run at once
                registered = new_authenticator is not None and mem.credential_matches(new_authenticator, stored)
                if not registered:
                    mem.check_credential(presented, stored)
            sealed = self.capsule(group, name, epoch, capsules.c.sealed_salt)
            if new_authenticator is not None and not registered:
                self._register_authenticator(group, name, stored, new_authenticator)
            return sealed

        return self._audited(f"member:{name}", "salt", group, check)

    def _credential_hash(self, group: str, name: str) -> str:
        with self.store.read() as conn:
            stored = conn.execute(select(members.c.credential_hash).join(groups, groups.c.id == members.c.group)
                                  .where(groups.c.name == group, members.c.name == name)).scalar()
        if stored is None:
            raise NotFound(f"no member {name!r}")
        return stored

    def _register_authenticator(self, group: str, name: str, old_hash: str, authenticator: bytes) -> None:
        """Replace ``old_hash`` (checked by the caller) by a hash of ``authenticator``, unless it changed since."""
        with self._argon_slots:
            new_hash = mem.hash_credential(authenticator)
        with self.store.write() as conn:
            g = _group(conn, group)
            changed = conn.execute(update(members).where(
                members.c.group == g.id, members.c.name == name, members.c.credential_hash == old_hash,
            ).values(credential_hash=new_hash)).rowcount
            if not changed:
                raise Conflict("the member's credential changed meanwhile; ask again")
            add_audit(conn, self.clock(), f"member:{name}", "credential-migrate", group)

    def report(self, group: str, name: str, endpoints: list[str], packets_sent: dict[int, int]) -> bool:
        """Store endpoints (re-signing the archive when they changed); True if a packet threshold opened an epoch."""
        endpoints = mem.check_endpoints(endpoints)
        now = self.clock()
        with self.store.write() as conn:
            g = _group(conn, group)
            row = conn.execute(select(members).where(members.c.group == g.id, members.c.name == name)).first()
            if row is None:
                raise NotFound(f"no member {name!r}")
            if json.loads(row.endpoints) != endpoints and g.archive is not None:
                conn.execute(update(members).where(members.c.id == row.id).values(endpoints=json.dumps(endpoints)))
                resign(conn, g, self.signer, now)
        current = g.current_epoch
        if current is not None and packets_sent.get(current, 0) >= g.rekey_after_packets:
            self.open_epoch(group, "packets", f"member:{name}")
            return True
        return False


class _NothingToDo(Exception):
    """Internal: ``open_epoch``'s ``unless`` said no; rolls the transaction back."""


def _brand_new(_conn, g, now: float) -> bool:
    return g.epoch_opened_at is not None and now - g.epoch_opened_at < MEMBER_REKEY_MIN_AGE


def _not_due(_conn, g, now: float) -> bool:
    return g.epoch_opened_at is not None and now < g.epoch_opened_at + g.rekey_after_seconds


def _group(conn, name: str):
    g = group_row(conn, name)
    if g is None:
        raise NotFound(f"no group {name!r}")
    return g
