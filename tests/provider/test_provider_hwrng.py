"""The provider's randomness mixed with a hardware RNG: a broken or hostile device cannot weaken it."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os

import pytest

from grouptun.errors import ConfigError
from provider import hwrng
from provider.cli import main

IKM = bytes(range(32))


def fixed(value: bytes):
    return lambda n: value


def hkdf(ikm: bytes, salt: bytes, n: int) -> bytes:
    """RFC 5869 by hand (n <= 32): PRK = HMAC(salt, IKM); T(1) = HMAC(PRK, info || 1)."""
    prk = hmac.new(salt, ikm, hashlib.sha256).digest()
    return hmac.new(prk, hwrng.INFO + b"\x01", hashlib.sha256).digest()[:n]


def test_output_is_hkdf_of_getrandom_salted_with_the_device():
    hw = os.urandom(32)
    mixed = hwrng.MixedRandom(fixed(hw), "fake", getrandom=lambda n: IKM)
    assert mixed(32) == hkdf(IKM, hw, 32) and mixed(4) == hkdf(IKM, hw, 4)
    assert mixed(32) != IKM and mixed(32) != hw


def test_an_all_zero_device_leaves_getrandom_in_charge():
    draws = iter([IKM, bytes(reversed(IKM))])
    zero = hwrng.MixedRandom(fixed(bytes(32)), "zeros", getrandom=lambda n: next(draws))
    first, second = zero(32), zero(32)
    assert first == hkdf(IKM, bytes(32), 32) and first != second  # each draw follows the kernel's bytes
    assert zero.failures == 0


def test_a_real_draw_differs_each_time_whatever_the_device_says():
    for device in (bytes(32), b"\xff" * 32, os.urandom(32)):
        mixed = hwrng.MixedRandom(fixed(device), "constant")
        assert len({mixed(32) for _ in range(50)}) == 50


@pytest.mark.parametrize("broken", ["error", "short", "empty"])
def test_a_failing_device_falls_back_to_getrandom_and_logs_once(broken, caplog):
    def source(n):
        if broken == "error":
            raise OSError(5, "Input/output error")
        return b"\x01" * (5 if broken == "short" else 0)

    mixed = hwrng.MixedRandom(source, "/dev/fake", getrandom=lambda n: IKM)
    with caplog.at_level(logging.WARNING, logger="provider.hwrng"):
        outputs = {mixed(32) for _ in range(3)}
    assert outputs == {hkdf(IKM, bytes(32), 32)}  # getrandom only: HKDF's zero salt
    assert mixed.failures == 3
    assert len([r for r in caplog.records if "failed" in r.getMessage()]) == 1


def test_a_device_that_recovers_is_used_again(caplog):
    state = {"ok": False}
    hw = os.urandom(32)

    def source(n):
        if not state["ok"]:
            raise OSError(11, "Resource temporarily unavailable")
        return hw

    mixed = hwrng.MixedRandom(source, "/dev/fake", getrandom=lambda n: IKM)
    mixed(32)
    state["ok"] = True
    with caplog.at_level(logging.INFO, logger="provider.hwrng"):
        assert mixed(32) == hkdf(IKM, hw, 32)
    assert "works again" in caplog.text


def test_device_source_reads_a_file_and_config_is_checked(tmp_path):
    device = tmp_path / "hwrng"
    device.write_bytes(b"\x07" * 64)
    rand = hwrng.from_config({"hardware_rng": str(device)})
    assert isinstance(rand, hwrng.MixedRandom) and len(rand(32)) == 32 and rand.failures == 0
    assert hwrng.from_config({}) is os.urandom and hwrng.from_config({"hardware_rng": None}) is os.urandom
    for bad in ("relative/hwrng", 7, str(tmp_path / "missing")):
        with pytest.raises(ConfigError) as info:
            hwrng.from_config({"hardware_rng": bad})
        assert info.value.key == "hardware_rng"
    with pytest.raises(ValueError):
        rand(0)


def test_a_bad_hardware_rng_setting_stops_every_command_by_name(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("GROUPTUN_PROVIDER_PASSPHRASE", raising=False)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    state = tmp_path / "state"
    assert main(["init", "--state", str(state), "--url", "https://127.0.0.1:9443"]) == 0
    config = json.loads((state / "provider.json").read_text())
    config["hardware_rng"] = "/nonexistent/hwrng"
    (state / "provider.json").write_text(json.dumps(config))
    capsys.readouterr()
    assert main(["group", "list", "--state", str(state)]) == ConfigError.exit_code
    assert "hardware_rng" in capsys.readouterr().err
    device = tmp_path / "hwrng"
    device.write_bytes(os.urandom(4096))
    config["hardware_rng"] = str(device)
    (state / "provider.json").write_text(json.dumps(config))
    assert main(["group", "create", "lan", "--cidr", "10.77.0.0/24", "--state", str(state)]) == 0
