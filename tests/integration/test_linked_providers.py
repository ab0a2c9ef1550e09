"""Two trust providers on two hosts, linked, and one group spanning both (issue 19; PROTOCOL.md 8).

The owner's provider on ``p`` holds group ``lan`` with its members ``a`` and
``b``; the partner's provider on ``q`` enrolls ``c`` and ``d`` into it
(``c@partner``, ``d@partner`` at the owner). The admins link the providers
both ways from what ``link self`` prints, check the links over the pinned
TLS, the owner invites ``c@partner`` and ``d@partner``, the partner accepts
the group and hands its own join tokens to ``c`` and ``d``. ``c`` and ``d``
talk only to ``q``; ``q`` relays. Every pair pings over IPv4 and IPv6, a
rekey at the owner reaches all four; the relay's files, database and a core
dump of its process hold none of the epoch's secrets (recovered on ``c``; the
same dump of ``c``'s daemon shows its packet keys, so the search works); a
hostile relay (tests/lab/hostile_relay.py, on ``q`` with ``q``'s keys and
database) can open none of the capsules it relays and its forged and
replayed forwards are refused and audited; the mesh keeps working while the
home provider is down for 60 s; and removing the link mid-traffic excludes
``c`` and ``d`` once the new epoch's grace ends, while ``a`` and ``b`` keep
talking. Real parts throughout: HTTPS providers, namespaces, TUN, UDP.
One lab for the module: the checks run in this order, the link removal last.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import sqlite3
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from grouptun.lab import Lab, LabError, wait_ping, wait_until
from grouptun.lab.mesh import REPO, Mesh, current_epoch, drop_counts, group_size
from tests.lab import memscan

pytestmark = [pytest.mark.root, pytest.mark.slow]
OWNER_MEMBERS, PARTNER_MEMBERS = ("a", "b"), ("c", "d")
ALL = OWNER_MEMBERS + PARTNER_MEMBERS
OUTAGE = 60.0  # seconds the partner's (the relayed members' home) provider is down: the issue's 60 s
GRACE = 10.0  # the group's `--grace` (default 30 s): how long after a switch the previous epoch is still taken


@dataclass
class PartnerMesh(Mesh):
    """The partner's provider (its own state dir and host); its members join the owner's group through it."""

    @property
    def provider_dir(self):
        return self.lab.workdir / "provider-partner"


def _identity(mesh: Mesh) -> list[str]:
    shown = json.loads(mesh.provider_cli("link", "self", "--json"))
    return ["--url", shown["url"], "--fingerprint", shown["tls_fingerprint"], "--keys-hash", shown["keys_hash"]]


@pytest.fixture(scope="module")
def linked_lab(request):
    lab, failed_before = Lab("lk", hosts=("p", "q", *ALL)), request.session.testsfailed
    try:
        with lab:
            owner, partner = Mesh(lab, group_options=("--grace", f"{GRACE:g}s")), PartnerMesh(lab, provider_host="q")
            owner.start_provider()
            partner.start_provider(label="provider-partner")
            owner.create_group()
            owner.provider_cli("link", "add", "partner", *_identity(partner), "--groups", "lan")
            partner.provider_cli("link", "add", "owner", *_identity(owner))
            owner.provider_cli("link", "check", "partner")
            partner.provider_cli("link", "check", "owner")
            partner.provider_cli("link", "accept", "owner", "lan")
            for name in PARTNER_MEMBERS:
                owner.provider_cli("invite", "lan", f"{name}@partner")
            for name in OWNER_MEMBERS:
                owner.join(name)
            for name in PARTNER_MEMBERS:
                partner.join(name)  # `invite lan NAME` at the partner: its own join token
            for mesh, names in ((owner, OWNER_MEMBERS), (partner, PARTNER_MEMBERS)):
                for name in names:
                    mesh.up(name)
            for mesh, names in ((owner, OWNER_MEMBERS), (partner, PARTNER_MEMBERS)):
                for name in names:
                    mesh.wait_ready(name, timeout=60.0)
            yield lab, owner, partner
            if request.session.testsfailed > failed_before:
                print("\n--- lab lk logs (a test failed) ---\n" + lab.log_tails(30))
    except Exception:
        print("\n--- lab logs ---\n" + lab.log_tails(30))
        raise
    finally:
        lab.down()


def _mesh(owner: Mesh, partner: Mesh, name: str) -> Mesh:
    return owner if name in OWNER_MEMBERS else partner


def _member(owner: Mesh, partner: Mesh, name: str):
    return _mesh(owner, partner, name).members[name]


def _epochs(owner: Mesh, partner: Mesh) -> dict[str, int]:
    return {n: current_epoch(_mesh(owner, partner, n).status(n)) or 0 for n in ALL}


def _query(mesh: Mesh, sql: str, *args) -> list[tuple]:
    """Rows of one query on ``mesh``'s provider database (SQLite, read beside the running server)."""
    with contextlib.closing(sqlite3.connect(mesh.provider_dir / "provider.db")) as db:
        return db.execute(sql, args).fetchall()


def _rekey_reaches_everyone(owner: Mesh, partner: Mesh, timeout: float) -> float:
    """Rekey at the owner; the seconds until every member sends on a newer epoch (AssertionError if not)."""
    before, t0 = _epochs(owner, partner), time.monotonic()
    owner.rekey()
    assert wait_until(lambda: all(e > before[n] for n, e in _epochs(owner, partner).items()),
                      timeout=timeout, interval=0.3), before
    return time.monotonic() - t0


def test_every_pair_pings_over_ipv4_and_ipv6(linked_lab):
    lab, owner, partner = linked_lab
    failures = []
    for src, dst in itertools.permutations(ALL, 2):
        for family in (4, 6):
            if not wait_ping(lab, src, _member(owner, partner, dst).overlay(family), timeout=20.0):
                failures.append(f"{src} -> {dst} IPv{family}")
    assert failures == []


def test_a_rekey_at_the_owner_reaches_every_member(linked_lab):
    lab, owner, partner = linked_lab
    print(f"\n[rekey at the owner held by all four after {_rekey_reaches_everyone(owner, partner, 30.0):.1f} s]")
    for src, dst in (("a", "c"), ("d", "b"), ("c", "d")):
        assert wait_ping(lab, src, _member(owner, partner, dst).overlay(4), timeout=15.0), (src, dst)


@dataclass(frozen=True)
class EpochSecrets:
    epoch: int
    group_id: bytes
    capsule: bytes   # the sealed capsule and salt of the member they were recovered on
    sealed_salt: bytes
    keys: dict[str, bytes]  # SS, salt and every key derived from them, by name


def _epoch_secrets(owner: Mesh, partner: Mesh, name: str) -> EpochSecrets:
    """The owner's current epoch, its SS and salt recovered on member ``name`` of the partner (its key file opened
    with its credential, its capsule and sealed salt from the owner's database opened with its key), and every key
    PROTOCOL.md 3 derives from them: PRK, nonce_common, the exporter secret, each member's packet (and MAC) keys."""
    from grouptun.control import credential, keystore  # noqa: PLC0415
    from grouptun.core.capsule import capsule_info, open_sealed, salt_info  # noqa: PLC0415
    from grouptun.core.keys import SUITE_AES_CTR_HMAC, EpochKeys  # noqa: PLC0415

    m = partner.members[name]
    keys = keystore.load(m.state_dir / partner.group / "keys.enc", credential.read_file(m.credential_file))
    [(group_id, epoch, suite)] = _query(owner, "SELECT group_id, current_epoch, suite FROM groups WHERE name = 'lan'")
    [(key_check,)] = _query(owner, "SELECT key_check FROM epochs WHERE epoch = ?", epoch)
    [(capsule, sealed_salt)] = _query(owner, "SELECT capsule, sealed_salt FROM capsules WHERE epoch = ? AND member = ?",
                                      epoch, f"{name}@partner")
    [(count,)] = _query(owner, "SELECT count(*) FROM capsules WHERE epoch = ?", epoch)
    ss = open_sealed(keys.kem, capsule_info(group_id, epoch, f"{name}@partner"), capsule)
    salt = open_sealed(keys.kem, salt_info(group_id, epoch, f"{name}@partner"), sealed_salt)
    derived = EpochKeys(suite, group_id, epoch, ss, salt)
    assert derived.key_check() == bytes(key_check)  # the real ones
    found = {"SS": bytes(ss), "salt": bytes(salt), "PRK": bytes(derived.prk),
             "nonce_common": bytes(derived.nonce_common), "exporter": bytes(derived.exporter_secret())}
    for index in range(count + 2):  # indices are dense from 0 (a little beyond, in case of a gap)
        found[f"enc_key[{index}]"] = bytes(derived.enc_key(index))
        if suite == SUITE_AES_CTR_HMAC:
            found[f"mac_key[{index}]"] = bytes(derived.mac_key(index))
    return EpochSecrets(epoch, bytes(group_id), bytes(capsule), bytes(sealed_salt), found)


def test_the_relays_files_hold_none_of_the_epochs_secrets(linked_lab):
    lab, owner, partner = linked_lab
    secrets = _epoch_secrets(owner, partner, "c")
    files = [p for p in partner.provider_dir.rglob("*") if p.is_file()]  # its state: database, keys, config
    logs = sorted((lab.workdir / "logs").glob("provider-partner*.log"))  # what it logged of its traffic
    assert any(p.name == "provider.db" for p in files) and logs
    files += logs
    hits = {str(path): memscan.find(path.read_bytes(), secrets.keys) for path in files}
    assert {path: found for path, found in hits.items() if found} == {}, secrets.epoch
    print(f"\n[epoch {secrets.epoch}: {len(secrets.keys)} secrets recovered on c, in none of the relay's "
          f"{len(files)} files, its log included (raw, hex, base64)]")


def _process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (a server that forks workers relays in them)."""
    found, todo = [], [pid]
    while todo and len(found) < 64:
        current = todo.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*/children"):
            todo += [int(child) for child in task.read_text().split()]
    return found


def test_the_relays_memory_holds_none_of_the_epochs_secrets(linked_lab):
    """A core dump of the relaying provider, taken right after it relayed a new epoch's capsules and salts to c
    and d (and while it relays their long-polls), holds none of that epoch's secrets. The same dump and search of
    c's daemon finds its packet keys: the method sees what a process holds."""
    lab, owner, partner = linked_lab
    _rekey_reaches_everyone(owner, partner, 30.0)
    for sender in ("a", "b", "d"):  # c receives from each on the new epoch: its receive keys are in use
        assert wait_ping(lab, sender, partner.members["c"].overlay(4), timeout=10.0), sender
    secrets = _epoch_secrets(owner, partner, "c")
    relayed = {"sealed capsule of c": secrets.capsule}  # bytes the relay did pass on: does its dump show them?
    relay_hits, sizes, t0 = [], [], time.monotonic()
    for pid in _process_tree(partner.provider_proc.pid):
        hits, size = memscan.find_in_process(pid, lab.workdir, {**secrets.keys, **relayed}, f"relay-{pid}")
        relay_hits += hits
        sizes.append(size)
    member_hits, member_size = memscan.find_in_process(partner.members["c"].proc.pid, lab.workdir, secrets.keys,
                                                       "member-c")
    secret_hits = [hit for hit in relay_hits if not hit.startswith("sealed capsule")]
    print(f"\n[epoch {secrets.epoch}: relay dump(s) {[s >> 20 for s in sizes]} MiB: secrets found "
          f"{secret_hits or 'none'}, the sealed capsule it relayed {'seen' if relay_hits else 'not seen'}; "
          f"member c's dump {member_size >> 20} MiB: {member_hits}; {time.monotonic() - t0:.1f} s]")
    assert secret_hits == []
    assert any(hit.startswith("enc_key") for hit in member_hits), member_hits


def test_the_relays_database_has_no_capsule_and_its_audit_names_every_forward(linked_lab):
    lab, owner, partner = linked_lab
    rows = partner.provider_cli("audit")
    assert "link-relay" in rows and "link-forward" in rows
    assert "link-request" in owner.provider_cli("audit")
    assert _query(partner, "SELECT count(*) FROM capsules") == [(0,)]  # nothing sealed is kept there
    if not all(m.proc.alive() for m in (*owner.members.values(), *partner.members.values())):
        raise LabError("a daemon exited:\n" + lab.log_tails(20))


def _audit_since(mesh: Mesh, after: int) -> list[tuple[str, str, dict]]:
    """(actor, action, detail) of the audit rows of ``mesh``'s provider newer than row id ``after``."""
    rows = _query(mesh, "SELECT actor, action, detail FROM audit WHERE id > ? ORDER BY id", after)
    return [(actor, action, json.loads(detail)) for actor, action, detail in rows]


def _last_audit_id(mesh: Mesh) -> int:
    return _query(mesh, "SELECT coalesce(max(id), 0) FROM audit")[0][0]


HOSTILE_EXPECTED = {
    "fetch-capsule": 200, "fetch-salt": 200, "captured-original": 200,  # what a relay may do: it speaks for c
    "never-came-through-the-link": 401, "owner-local-name": 401, "wrong-link-key": 401,
    "member-signature-by-relay-key": 401, "owner-local-signature-by-relay-key": 401, "replayed": 401,
    "uninvited-enroll": 403, "salt-without-credential-check": 403,
}


def test_a_hostile_relay_opens_no_capsule_and_its_forgeries_are_refused_and_audited(linked_lab):
    """From q, with q's own keys and database, over the owner's real HTTPS link endpoints (tests/lab/hostile_relay.py):
    the capsule and sealed salt it gets for c are the real ones (c opens them) and none of its keys opens them;
    forged members, a wrong link key and a replayed forward are refused (401/403) and audited at the owner."""
    lab, owner, partner = linked_lab
    secrets = _epoch_secrets(owner, partner, "c")
    mark = _last_audit_id(owner)
    proc = lab.exec("q", [sys.executable, str(REPO / "tests" / "lab" / "hostile_relay.py"),
                          "--state", str(partner.provider_dir), "--link", "owner", "--group", "lan", "--member", "c",
                          "--owner-local", "a", "--group-id", secrets.group_id.hex(), "--epoch", str(secrets.epoch)],
                    timeout=90.0, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    shown = json.loads(proc.stdout)
    statuses = {name: got["status"] for name, got in shown["attempts"].items()}
    print("\n[hostile relay: " + ", ".join(f"{n} {s}" for n, s in statuses.items()) + "]")
    assert statuses == HOSTILE_EXPECTED, shown["attempts"]
    assert bytes.fromhex(shown["capsule"]) == secrets.capsule and bytes.fromhex(shown["salt"]) == secrets.sealed_salt
    assert len(shown["opened"]) >= 4 and not any(shown["opened"].values()), shown["opened"]
    refused = [(actor.split(":")[0], detail.get("reason", "")) for actor, action, detail in _audit_since(owner, mark)
               if action == "refused"]
    for expected in (("link", "no member 'zed@partner' through this link"),  # each forgery, as the owner saw it
                     ("link", "no member 'a@partner' through this link"),
                     ("link-address", "signature not valid"),  # the wrong link key
                     ("link", "'mallory@partner' is not invited to 'lan'"),
                     ("link", "the home provider did not vouch for the credential check"),
                     ("link", "replayed signature")):
        assert any(actor == expected[0] and expected[1] in reason for actor, reason in refused), (expected, refused)
    assert len([a for a, _ in refused if a == "address"]) >= 2, refused  # the two member signatures by q's key


def _ping_rounds(lab: Lab, owner: Mesh, partner: Mesh, pairs, seconds: float, every: float) -> tuple[int, list[str]]:
    """Ping every pair in ``pairs`` once per round (IPv4 and IPv6 on alternate rounds), a round every ``every`` s,
    for ``seconds``: (rounds, failures)."""
    t0, rounds, failures = time.monotonic(), 0, []
    while time.monotonic() - t0 < seconds:
        family = 4 if rounds % 2 == 0 else 6
        failures += [f"{s}->{d} v{family} at {time.monotonic() - t0:.0f}s" for s, d in pairs
                     if not wait_ping(lab, s, _member(owner, partner, d).overlay(family), timeout=3.0)]
        rounds += 1
        time.sleep(max(0.0, min(t0 + rounds * every, t0 + seconds) - time.monotonic()))
    return rounds, failures


def test_the_home_provider_down_60s_the_mesh_keeps_working_and_catches_up(linked_lab):
    """c's and d's home provider stops for OUTAGE s: every pair keeps pinging on the epoch it holds (nobody needs a
    provider for that), sampled throughout; once it is back, a rekey at the owner reaches its members through it."""
    lab, owner, partner = linked_lab
    held = _epochs(owner, partner)
    partner.stop_provider()
    t0 = time.monotonic()
    rounds, failures = _ping_rounds(lab, owner, partner, list(itertools.permutations(ALL, 2)), OUTAGE,
                                    every=1.0)
    print(f"\n[home provider down {time.monotonic() - t0:.1f} s: {rounds} rounds of all 12 pairs; "
          f"failed pings: {failures or 'none'}]")
    assert failures == []
    assert _epochs(owner, partner) == held  # nobody lost (or needed) an epoch meanwhile
    partner.start_provider(label="provider-partner-back")
    print(f"[back: a rekey reached all four in {_rekey_reaches_everyone(owner, partner, 60.0):.1f} s]")
    assert wait_ping(lab, "c", _member(owner, partner, "a").overlay(6), timeout=15.0)


def _tun_capture(lab: Lab, host: str, source: str):
    """tcpdump on ``host``'s TUN: the packets from ``source`` that its daemon accepted and delivered."""
    proc = lab.spawn(host, f"tun-{host}", ["tcpdump", "-l", "-n", "-tt", "-i", "gt-lan", "icmp and src host " + source])
    if not proc.wait_for_output("listening on", timeout=10.0):
        raise LabError(f"tcpdump on {host}'s gt-lan did not start: {proc.tail()}")
    return proc


def _arrivals(proc) -> list[float]:
    return [float(line.split()[0]) for line in proc.output().splitlines() if " ICMP echo request" in line]


def test_a_link_removed_mid_traffic_excludes_its_members_after_the_grace(linked_lab):
    """c pings a, d pings b, a and b ping each other; the owner removes the link. c and d do not learn it: their
    home provider is down first (a partner that stays away or turns hostile), so they keep sending on the old
    epoch. a and b switch to an epoch without them, still take their packets during the grace and none after it
    (they keep arriving: unknown_epoch at a and b), and a and b keep talking throughout. (A member that does learn
    it from the new archive stops sending and exits by itself: tests/integration/test_membership.py.)"""
    lab, owner, partner = linked_lab
    partner.stop_provider()
    foreign = {"a": "c", "b": "d"}  # receiver -> the foreign member pinging it
    captures = {r: _tun_capture(lab, r, _member(owner, partner, s).overlay(4)) for r, s in foreign.items()}
    pings = [lab.spawn(sender, f"ping-{sender}", ["ping", "-n", "-i", "0.2", "-w", str(int(GRACE + 40)),
                                                  _member(owner, partner, receiver).overlay(4)])
             for receiver, sender in foreign.items()]
    assert wait_until(lambda: all(_arrivals(p) for p in captures.values()), timeout=10.0)
    before = {n: current_epoch(owner.status(n)) or 0 for n in OWNER_MEMBERS}
    t_remove = time.time()
    shown = json.loads(owner.provider_cli("link", "remove", "partner", "--json"))
    assert sorted(shown["excluded"]["lan"]) == ["c@partner", "d@partner"], shown

    def switched() -> bool:
        shown = {n: owner.status(n) for n in OWNER_MEMBERS}
        return all((current_epoch(shown[n]) or 0) > before[n] and group_size(shown[n]) == 2 for n in OWNER_MEMBERS)

    assert wait_until(switched, timeout=15.0, interval=0.2)
    t_switch = time.time()
    rounds, failures = _ping_rounds(lab, owner, partner, [("a", "b"), ("b", "a")], GRACE + 6.0, every=0.5)
    dropped = {r: drop_counts(owner.status(r)).get("unknown_epoch", 0) for r in foreign}
    time.sleep(3.0)
    dropped_later = {r: drop_counts(owner.status(r)).get("unknown_epoch", 0) for r in foreign}
    for proc in (*captures.values(), *pings):
        proc.stop()
    last = {r: max(_arrivals(p)) for r, p in captures.items()}
    print(f"\n[link removed; a and b switched {t_switch - t_remove:.1f} s later; last packet taken from c at a "
          f"{last['a'] - t_switch:+.1f} s, from d at b {last['b'] - t_switch:+.1f} s after the switch (grace "
          f"{GRACE:g} s); a<->b {rounds} rounds, failures {failures or 'none'}; unknown_epoch {dropped_later}]")
    assert failures == []
    for receiver in foreign:
        assert t_switch < last[receiver] <= t_switch + GRACE + 3.0, (receiver, last[receiver] - t_switch)
        assert dropped_later[receiver] > dropped[receiver], (receiver, dropped, dropped_later)  # still sent, refused
