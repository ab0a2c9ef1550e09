"""A daemon in a group a linked provider owns (PROTOCOL.md 8; grouptun/control/plane.py, vouchfile.py): its archives
are the owner's, verified through the voucher of its own provider; without the voucher they are refused, and the
owner's provider_urls never replace its own provider. Fakes: tests/daemon/fakes.FakeProvider as the owner."""

from __future__ import annotations

import dataclasses
import os
import threading
import time
import types

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519, mldsa

from grouptun.cli.status import format_status
from grouptun.control.backoff import Backoff
from grouptun.control.client import ProviderClient
from grouptun.control.plane import ControlPlane
from grouptun.control.statefile import EpochStateFile
from grouptun.control import vouchfile
from grouptun.core.archive import GroupMetadata
from grouptun.core.envelope import ProviderKeys
from grouptun.core.session import Session
from grouptun.core.vouch import Vouch, sign_vouch, verify_vouch
from grouptun.errors import ConfigError, EpochRejected, LinkUnavailable, ProviderError
from .fakes import FakeProvider, FakeTransport, proof
from .test_controlplane import DirectPort, held_epochs

ME = "alice@partner"
DAY = 86400.0


class Home:
    """The member's own provider: only its keys (what the member pinned) and its voucher for the owner."""

    def __init__(self) -> None:
        self.ed, self.ml = ed25519.Ed25519PrivateKey.generate(), mldsa.MLDSA65PrivateKey.generate()
        self.keys = ProviderKeys(self.ed.public_key().public_bytes_raw(), self.ml.public_key().public_bytes_raw())

    def vouch(self, owner: ProviderKeys, issued: float | None = None, ttl: float = 30 * DAY) -> bytes:
        issued = time.time() if issued is None else issued
        return sign_vouch(Vouch(self.keys.fingerprint(), owner, "https://owner.example", "cd" * 32, issued, None,
                                issued + ttl), self.ed, self.ml)


@pytest.fixture
def foreign(tmp_path):
    owner, home = FakeProvider([ME, "bob"]), Home()
    owner.metadata = GroupMetadata(owner.keys.fingerprint())
    owner.homes[ME] = home.keys.fingerprint()
    owner.provider_urls = ("https://owner.example:8443",)
    statefile = EpochStateFile(tmp_path / "epochs.json")
    session = Session(ME)
    port = DirectPort(session, statefile, owner.group_id)

    def make(vouch, **extra):
        return ControlPlane(client=owner.client(ME), port=port, kem=owner.members[ME].kem, proof=proof(),
                            pinned=home.keys, group_id=owner.group_id, member=ME, statefile=statefile,
                            endpoints=lambda: [], watch_timeout=0.05, backoff=Backoff(0.01, 0.04), vouch=vouch,
                            **extra)

    return owner, home, session, make


def test_the_owners_epoch_is_accepted_through_the_homes_voucher(foreign):
    owner, home, session, make = foreign
    cp = make(home.vouch(owner.keys))
    urls = tuple(cp.client.urls)
    assert cp.start_once(os.urandom(32))
    assert held_epochs(session) == [1]
    assert tuple(cp.client.urls) == urls  # the owner's provider_urls are not ours to use


def test_without_the_voucher_or_with_a_forged_one_nothing_is_installed(foreign):
    owner, home, session, make = foreign
    for vouch, step in ((None, "signature"),                      # the owner's signature is no key we pinned
                        (Home().vouch(owner.keys), "signature")):  # vouched for by another provider
        with pytest.raises(EpochRejected) as refused:
            make(vouch).start_once(os.urandom(32))
        assert refused.value.step == step
    owner.homes[ME] = Home().keys.fingerprint()  # the owner lists us under another home
    with pytest.raises(EpochRejected, match="not listed with its home provider"):
        make(home.vouch(owner.keys)).start_once(os.urandom(32))
    assert held_epochs(session) == []


def test_the_voucher_file_round_trips_and_refuses_a_huge_one(tmp_path):
    assert vouchfile.load(tmp_path) is None
    vouchfile.save(tmp_path, b'{"document": "x"}')
    assert vouchfile.load(tmp_path) == b'{"document": "x"}'
    (tmp_path / vouchfile.VOUCH_FILE).write_bytes(b"x" * (64 * 1024))
    with pytest.raises(ConfigError, match="over"):
        vouchfile.load(tmp_path)


DOWN = {"name": "owner", "contact": "unreachable", "down_since": 1_700_000_000.0,
        "last_failure": "link 'owner': https://owner.example unreachable (ConnectionError)"}


def _until(check, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "not within the deadline"
        time.sleep(0.01)


def test_the_homes_503_naming_its_link_is_link_unavailable_with_only_the_known_fields():
    owner = FakeProvider([ME, "bob"])
    transport = FakeTransport(owner, ME)
    client = ProviderClient(("https://home.example:8443", "https://home2.example:8443"), "ab" * 32, "lan", ME,
                            ed25519.Ed25519PrivateKey.generate(), session_factory=transport.session,
                            sleep=lambda s: None)
    transport.failing.update({"home.example:8443": 503, "home2.example:8443": 503})
    transport.failing_body = {"detail": "link 'owner' to the owner's provider is unreachable since 10:00:00 UTC",
                              "link": {**DOWN, "down_since": True, "secret": "x", "name": 7}}
    with pytest.raises(LinkUnavailable) as caught:  # every replica of the home answered: the link is down
        client.archive()
    assert caught.value.status == 503 and "unreachable since" in caught.value.reason
    assert caught.value.link == {"contact": "unreachable", "last_failure": DOWN["last_failure"]}
    transport.failing_body = {"detail": "replica unwell"}  # a plain 503: the provider itself is in trouble
    with pytest.raises(ProviderError) as plain:
        client.archive()
    assert not isinstance(plain.value, LinkUnavailable)


def test_an_unreachable_owner_keeps_the_held_epoch_and_status_shows_the_link(foreign):
    owner, home, session, make = foreign
    cp = make(home.vouch(owner.keys))
    assert cp.state.link == {"state": "unknown"}
    stop = threading.Event()
    thread = threading.Thread(target=cp.run, args=(stop,), daemon=True)
    thread.start()
    try:
        _until(lambda: held_epochs(session) == [1] and cp.state.link.get("state") == "up")
        owner.refusing = LinkUnavailable(503, "link 'owner' to the owner's provider is unreachable", DOWN)
        _until(lambda: cp.state.link.get("state") == "unreachable")
        assert held_epochs(session) == [1] and cp.state.provider_ok  # our own provider answered
        assert (cp.state.link["since"], cp.state.link["reason"]) == (DOWN["down_since"], DOWN["last_failure"])
        shown = format_status({"control": dataclasses.asdict(cp.state)})
        since = time.strftime("%H:%M:%S", time.localtime(DOWN["down_since"]))
        assert f"link to owner: unreachable since {since} ({DOWN['last_failure']})" in shown
        assert "home provider: " in shown
        owner.refusing = None
        _until(lambda: cp.state.link.get("state") == "up")
        assert "link to owner: up" in format_status({"control": dataclasses.asdict(cp.state)})
    finally:
        stop.set()
        thread.join(timeout=10)
    assert not thread.is_alive()


def test_an_ordinary_group_shows_no_link(foreign):
    owner, home, session, make = foreign
    cp = make(None)  # no voucher: a group our own provider owns
    assert cp.state.link is None
    assert "link to owner" not in format_status({"control": dataclasses.asdict(cp.state)})


def _rotate(owner: FakeProvider) -> None:
    """The owner's provider gets new signing keys (its id changes with them)."""
    owner.ed, owner.ml = ed25519.Ed25519PrivateKey.generate(), mldsa.MLDSA65PrivateKey.generate()
    owner.keys = ProviderKeys(owner.ed.public_key().public_bytes_raw(), owner.ml.public_key().public_bytes_raw())
    owner.metadata = GroupMetadata(owner.keys.fingerprint())


def test_a_voucher_in_its_last_quarter_is_renewed_once_and_kept(foreign):
    owner, home, session, make = foreign
    kept = []
    owner.vouch_issuer = lambda: home.vouch(owner.keys)
    old = home.vouch(owner.keys, issued=time.time() - 25 * DAY)
    cp = make(old, on_vouch=kept.append)
    assert cp.start_once(os.urandom(32))
    cp.service_requests()
    cp.service_requests()
    assert [c for c in owner.calls if c[1] == "vouch"] == [(ME, "vouch")]  # once, not every round
    assert kept == [cp.vouch] and cp.vouch != old
    assert verify_vouch(cp.vouch, home.keys, now=time.time()).expires_at > time.time() + 29 * DAY
    cp.service_requests()
    assert len([c for c in owner.calls if c[1] == "vouch"]) == 1  # the fresh one is not due


def test_an_expired_voucher_refuses_the_archive_until_a_fresh_one_is_fetched(foreign):
    owner, home, session, make = foreign
    cp = make(home.vouch(owner.keys, issued=time.time() - 31 * DAY))
    with pytest.raises(EpochRejected, match="voucher: expired") as refused:  # and the home has none to give
        cp.start_once(os.urandom(32))
    assert refused.value.step == "link" and held_epochs(session) == []
    cp.vouches.min_interval = 0.0  # the test does not wait out the spacing of fetches
    owner.vouch_issuer = lambda: home.vouch(owner.keys)
    assert cp.start_once(os.urandom(32)) and held_epochs(session) == [2]  # the second start's epoch


def test_the_owner_rotated_its_keys_and_the_homes_fresh_voucher_names_them(foreign):
    owner, home, session, make = foreign
    kept = []
    cp = make(home.vouch(owner.keys), on_vouch=kept.append)
    assert cp.start_once(os.urandom(32))
    _rotate(owner)
    owner.open_epoch()
    with pytest.raises(EpochRejected) as refused:  # the home has not re-pinned the owner yet: nothing to renew
        cp.watch_once()
    assert refused.value.step == "signature" and held_epochs(session) == [1] and kept == []
    cp.vouches.min_interval = 0.0
    owner.vouch_issuer = lambda: Home().vouch(owner.keys)  # a voucher our provider did not sign is not taken
    with pytest.raises(EpochRejected):
        cp.accept(owner.signed)
    owner.vouch_issuer = lambda: home.vouch(owner.keys)  # `link check --keys-hash` at the home: new keys vouched
    assert cp.accept(owner.signed) and held_epochs(session) == [1, 2] and kept == [cp.vouch]


def test_seal_takes_the_recipients_keys_from_the_owners_archive_through_the_voucher(foreign, tmp_path):
    from grouptun.cli.seal import MemberSession  # noqa: PLC0415

    owner, home, session, make = foreign
    owner.open_epoch()
    config = types.SimpleNamespace(
        provider=types.SimpleNamespace(ed25519_public=home.keys.ed25519_public, mldsa65_public=home.keys.mldsa65_public),
        group=types.SimpleNamespace(group_id=owner.group_id, member=ME), paths=types.SimpleNamespace(state_dir=tmp_path))
    member = MemberSession(config, None, owner.client(ME))
    with pytest.raises(EpochRejected) as refused:  # no voucher: the owner's signature is no key we pinned
        member.archive()
    assert refused.value.step == "signature"
    vouchfile.save(tmp_path, home.vouch(owner.keys))
    archive = member.archive()
    assert archive.compact and archive.member("bob").kem_public is None  # the compact form: digests only
    keys = member.kem_keys(["bob"])  # fetched from the owner, checked against its signed digest by the caller
    assert keys == {"bob": owner.members["bob"].kem_public} and archive.member("bob").kem_matches(keys["bob"])
    full = member.archive(compact=False)  # more than KEYS_ONE_BY_ONE recipients: the full archive, same checks
    assert not full.compact and full.member("bob").kem_public == owner.members["bob"].kem_public
