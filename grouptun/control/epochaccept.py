"""Archive checks, secret opening and epoch material for the control path.

Every epoch goes through the acceptance order of PROTOCOL.md 2 before the
session sees it: signatures, group id, newer than anything held (statefile
and session), indices a permutation, capsule opens and data_id matches,
salt opens and key_check matches. The pure steps live in
``grouptun.core.accept``; this module adds what needs the parsed archive:

- :func:`verified_archive`: signatures, expiry and group id -- what every
  archive passes before any of it is read, on every path it arrives by;
- :func:`check_archive`: the document steps plus our own two rules (the
  start challenge is listed, we are a member);
- :func:`check_instance`: our member's entry names our instance (PROTOCOL.md
  4), else InstanceSuperseded;
- :func:`open_secrets`: capsule, data_id, salt, key_check, fetching the
  sealed salt only once data_id matched;
- :func:`build_material`: what ``Session.install_epoch`` takes, with the
  members' endpoints resolved to addresses our socket can reach;
- :func:`apply_policy`: the archive's access policy compiled over its
  epoch's member table, handed to the daemon's ``PolicyEnforcer``.

Limits: name resolution in :func:`resolve_endpoint` blocks (getaddrinfo);
it runs on the control thread, never on the event loop.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import socket
from typing import Callable

from grouptun.config import parse_endpoint
from grouptun.core import accept
from grouptun.core import capsule as capsule_mod
from grouptun.core import keys as keys_mod
from grouptun.core.archive import Archive, verify_archive
from grouptun.core.envelope import ProviderKeys
from grouptun.core.vouch import verify_foreign_archive
from grouptun.core.epoch import parse_networks
from grouptun.core.policy import PolicyEnforcer
from grouptun.core.session import EpochMaterial, MemberInfo
from grouptun.errors import CapsuleError, EpochRejected, InstanceSuperseded

log = logging.getLogger("grouptun.control")


def resolve_endpoint(text: str, can_reach: Callable[[str], bool]) -> tuple[str, int] | None:
    """``host:port`` -> (ip, port) usable by our socket, resolving names; None if unusable."""
    try:
        host, port = parse_endpoint(text)
    except ValueError:
        return None
    try:
        hosts = [str(ipaddress.ip_address(host))]
    except ValueError:
        try:
            hosts = [info[4][0] for info in socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)]
        except OSError:
            return None
    for h in hosts:
        if can_reach(h):
            return (h, port)
    return None


def member_info(m, can_reach: Callable[[str], bool]) -> MemberInfo:
    """The session's view of archive member ``m``: its first reachable endpoint (or None)."""
    endpoint = next((ep for ep in (resolve_endpoint(t, can_reach) for t in m.endpoints) if ep), None)
    addrs = tuple(ipaddress.ip_interface(a).ip for a in m.addresses)
    prefixes = tuple(ipaddress.ip_network(p) for p in m.routes)  # checked strict by the archive parser
    return MemberInfo(name=m.name, index=m.index, addresses=addrs, endpoint=endpoint, prefixes=prefixes)


def verified_archive(signed: bytes, pinned: ProviderKeys, group_id: bytes, now: float,
                     vouch: bytes | None = None, member: str = "") -> Archive:
    """The archive in ``signed`` if both signatures verify, it has not expired at wall time ``now``
    and it is for ``group_id``; else EpochRejected (step signature, link, expired or group_id).

    With ``vouch`` (a group a linked provider owns, PROTOCOL.md 8) the signatures are the owner's, checked
    against the keys the voucher of ``pinned`` (the member's own provider) names for ``member``.
    Either form verifies (PROTOCOL.md 2.2): the compact one the daemon asks for, or the full one of a
    provider that predates it; every check after this one is the same for both."""
    archive = (verify_archive(signed, pinned, compact_ok=True) if vouch is None
               else verify_foreign_archive(signed, pinned, vouch, member, now=now, compact_ok=True))
    if archive.expires_at and archive.expires_at < now:
        raise EpochRejected("expired", f"archive version {archive.version} expired")
    if archive.group_id != group_id:
        raise EpochRejected("group_id", "archive of another group")
    return archive


def check_archive(archive: Archive, group_id: bytes, member: str, highest: int,
                  challenge: bytes | None) -> None:
    """Steps of the acceptance order that need only the verified archive.

    ``accept.check_document`` (group_id, epoch, indices), then our own two
    rules: the start challenge is listed (PROTOCOL.md 4) and we are a member.
    """
    e = archive.epoch
    accept.check_document(signatures_ok=True, expected_group_id=group_id, group_id=archive.group_id,
                          epoch=e.epoch, highest_held=highest if highest >= 0 else None,
                          indices=[m.index for m in archive.members], group_size=e.group_size)
    if len({m.name for m in archive.members}) != len(archive.members):
        raise EpochRejected("indices", "duplicate member names")
    if challenge is not None and not lists_challenge(archive, challenge):
        raise EpochRejected("challenge", f"epoch {e.epoch} does not answer our start challenge")
    if archive.member(member) is None:
        raise EpochRejected("membership", f"{member!r} is not a member of epoch {e.epoch}")


def check_instance(archive: Archive, member: str, instance: bytes | None) -> None:
    """InstanceSuperseded unless ``member``'s entry names ``instance``, ours.

    A daemon sends only in an epoch whose entry for its own member names its
    own instance (PROTOCOL.md 4); any other value, null included, means the
    provider accepted a later start of this member elsewhere. Without an
    instance (no start made yet) nothing is ours: EpochRejected("instance").
    An archive without our entry is the membership step's to refuse.
    """
    entry = archive.member(member)
    if instance is None:
        raise EpochRejected("instance", "no start made yet: no epoch is ours")
    if entry is not None and (entry.instance is None or not hmac.compare_digest(entry.instance, instance)):
        raise InstanceSuperseded(f"member {member!r} was started elsewhere: archive version {archive.version} "
                                 "names another instance")


def lists_challenge(archive: Archive, challenge: bytes) -> bool:
    """True if the archive's epoch lists ``challenge`` (constant time per entry)."""
    return archive.epoch is not None and any(hmac.compare_digest(challenge, c) for c in archive.epoch.challenges)


def _open(kem, info: bytes, sealed: bytes, secrets: keys_mod.SecretMemory) -> keys_mod.SecretBuffer | None:
    try:
        return capsule_mod.open_sealed(kem, info, sealed, secrets)
    except CapsuleError as exc:
        log.debug("sealed secret does not open: %s", exc)
        return None


def open_secrets(archive: Archive, member: str, kem: capsule_mod.KemPrivateKey,
                 sealed_ss: bytes, sealed_salt: bytes | Callable[[], bytes],
                 secrets: keys_mod.SecretMemory = keys_mod.HEAP) -> tuple[keys_mod.SecretBuffer, keys_mod.SecretBuffer]:
    """The last steps (capsule, data_id, salt, key_check) via ``accept.check_secrets``.

    ``sealed_salt`` may be a callable that fetches it: it is called only
    once the capsule opened and data_id matched, so the authenticator is not
    shown to the provider for an epoch this member would refuse anyway.
    Returns (SS, salt), buffers of ``secrets``, for the caller to hand over
    or free there; frees them itself on refusal.
    """
    e = archive.epoch
    ss = _open(kem, capsule_mod.capsule_info(archive.group_id, e.epoch, member), sealed_ss, secrets)
    salt = None
    try:
        if ss is not None and hmac.compare_digest(keys_mod.data_id(ss), e.data_id):
            # Fetch and open the salt only once data_id matched: the order is the order.
            sealed = sealed_salt() if callable(sealed_salt) else sealed_salt
            salt = _open(kem, capsule_mod.salt_info(archive.group_id, e.epoch, member), sealed, secrets)
        accept.check_secrets(suite=e.suite, group_id=archive.group_id, epoch=e.epoch, shared_secret=ss,
                             data_id_expected=e.data_id, salt=salt, key_check_expected=e.key_check,
                             secrets=secrets)
    except BaseException:
        for secret in (ss, salt):
            if secret is not None:
                secrets.free(secret)
        raise
    return ss, salt


def build_material(archive: Archive, member: str, ss: keys_mod.SecretBuffer, salt: keys_mod.SecretBuffer,
                   can_reach: Callable[[str], bool] = lambda h: True,
                   secrets: keys_mod.SecretMemory = keys_mod.HEAP) -> EpochMaterial:
    """What the session installs; takes ``ss`` and ``salt`` (buffers of ``secrets``) by reference:
    ``EpochMaterial.wipe_secrets`` gives them back (the session calls it)."""
    e = archive.epoch
    nets = (archive.cidr,) + ((archive.cidr6,) if archive.cidr6 else ())
    return EpochMaterial(
        group_id=archive.group_id, epoch=e.epoch, suite=e.suite, nonce_start=e.nonce_start,
        group_size=e.group_size, own_index=archive.member(member).index,
        members=tuple(member_info(m, can_reach) for m in sorted(archive.members, key=lambda m: m.index)),
        shared_secret=ss, salt=salt, switch_delay=e.switch_delay, grace=e.grace,
        rekey_after_packets=e.rekey_after_packets, rekey_after_seconds=e.rekey_after_seconds,
        networks=parse_networks(nets), secrets=secrets,
    )


def apply_policy(enforcer: PolicyEnforcer, archive: Archive, member: str, epoch: int | None) -> None:
    """Give ``enforcer`` the archive's policy (None: everything allowed) and, for ``epoch`` (the epoch
    being installed or held; None: no table), our index and every index's signed attributes."""
    own = archive.member(member)
    held = archive.policy
    table = {m.index: dict(m.attributes) for m in archive.members}
    enforcer.update(epoch if own is not None else None, None if held is None else held.policy,
                    None if held is None else held.version, None if own is None else own.index, table)
