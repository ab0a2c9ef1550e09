"""A daemon in a group a linked provider owns (PROTOCOL.md 8; grouptun/control/plane.py, vouchfile.py): its archives
are the owner's, verified through the voucher of its own provider; without the voucher they are refused, and the
owner's provider_urls never replace its own provider. Fakes: tests/daemon/fakes.FakeProvider as the owner."""

from __future__ import annotations

import os

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519, mldsa

from grouptun.control.backoff import Backoff
from grouptun.control.plane import ControlPlane
from grouptun.control.statefile import EpochStateFile
from grouptun.control import vouchfile
from grouptun.core.archive import GroupMetadata, ProviderKeys
from grouptun.core.session import Session
from grouptun.core.vouch import Vouch, sign_vouch
from grouptun.errors import ConfigError, EpochRejected
from .fakes import FakeProvider, proof
from .test_controlplane import DirectPort, held_epochs

ME = "alice@partner"


class Home:
    """The member's own provider: only its keys (what the member pinned) and its voucher for the owner."""

    def __init__(self) -> None:
        self.ed, self.ml = ed25519.Ed25519PrivateKey.generate(), mldsa.MLDSA65PrivateKey.generate()
        self.keys = ProviderKeys(self.ed.public_key().public_bytes_raw(), self.ml.public_key().public_bytes_raw())

    def vouch(self, owner: ProviderKeys) -> bytes:
        return sign_vouch(Vouch(self.keys.fingerprint(), owner, "https://owner.example", "cd" * 32, 1.0), self.ed,
                          self.ml)


@pytest.fixture
def foreign(tmp_path):
    owner, home = FakeProvider([ME, "bob"]), Home()
    owner.metadata = GroupMetadata(owner.keys.fingerprint())
    owner.homes[ME] = home.keys.fingerprint()
    owner.provider_urls = ("https://owner.example:8443",)
    statefile = EpochStateFile(tmp_path / "epochs.json")
    session = Session(ME)
    port = DirectPort(session, statefile, owner.group_id)

    def make(vouch):
        return ControlPlane(client=owner.client(ME), port=port, kem=owner.members[ME].kem, proof=proof(),
                            pinned=home.keys, group_id=owner.group_id, member=ME, statefile=statefile,
                            endpoints=lambda: [], watch_timeout=0.05, backoff=Backoff(0.01, 0.04), vouch=vouch)

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
