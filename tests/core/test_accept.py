"""The acceptance order of a new epoch (PROTOCOL.md 2)."""

from __future__ import annotations

import pytest

from grouptun.core import accept, keys
from grouptun.errors import EpochRejected

from .builders import GROUP_ID, secret

SS, SALT = bytes(secret("ss", 5)), bytes(secret("salt", 5))


def good(**change):
    k = keys.EpochKeys(2, GROUP_ID, 5, SS, SALT)
    args = dict(signatures_ok=True, expected_group_id=GROUP_ID, group_id=GROUP_ID, epoch=5,
                highest_held=4, indices=[2, 0, 1], group_size=3, suite=2,
                shared_secret=SS, data_id_expected=keys.data_id(SS),
                salt=SALT, key_check_expected=k.key_check())
    args.update(change)
    return args


def test_good_epoch_accepted():
    accept.accept_epoch(**good())
    accept.accept_epoch(**good(highest_held=None))


@pytest.mark.parametrize("change, step", [
    (dict(signatures_ok=False), "signature"),
    (dict(signatures_ok=1), "signature"),
    (dict(group_id=bytes(16)), "group_id"),
    (dict(epoch=4), "epoch"),
    (dict(epoch=2**32), "epoch"),
    (dict(indices=[0, 1, 1]), "indices"),
    (dict(indices=[0, 1]), "indices"),
    (dict(group_size=1, indices=[0]), "indices"),
    (dict(shared_secret=None), "capsule"),
    (dict(data_id_expected=bytes(16)), "data_id"),
    (dict(salt=None), "salt"),
    (dict(key_check_expected=bytes(16)), "key_check"),
    (dict(suite=1), "key_check"),  # key_check binds the suite
    # every step fails: the first one in the order is reported
    (dict(signatures_ok=False, group_id=bytes(16), epoch=1, indices=[], shared_secret=None), "signature"),
    (dict(epoch=1, indices=[], shared_secret=None), "epoch"),
    (dict(data_id_expected=bytes(16), salt=None), "data_id"),
])
def test_first_failing_step_named(change, step):
    with pytest.raises(EpochRejected) as info:
        accept.accept_epoch(**good(**change))
    assert info.value.step == step
