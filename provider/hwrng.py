"""The provider's randomness, optionally mixed with a hardware RNG (PROTOCOL.md 7).

Config key in ``STATE/provider.json`` (a missing key or ``null`` means off)::

    "hardware_rng": "/dev/hwrng"     an absolute path: a hardware RNG device (a TPM's
                                     RNG is /dev/hwrng too, through tpm-rng)

Every draw of ``n`` bytes when it is on::

    ikm    = getrandom(32)                        (os.urandom)
    hw     = 32 bytes read from the device, without blocking
    output = HKDF-SHA256(IKM = ikm, salt = hw, info = "grouptun/1 provider rng", L = n)

The kernel's bytes are the key material and the device's only the salt, so
a broken or hostile device (zeros, a constant, values its maker chose) leaves
the output as strong as getrandom alone; what the device adds is that a
predictable getrandom would not be enough to predict the output. A device
that fails (an error, a short or empty read because it has nothing ready)
gives that draw an all-zero salt -- getrandom only -- and one warning per
run of failures is logged. The device must exist when the config is loaded.
The shipped unit's ``PrivateDevices=yes`` hides it; a drop-in with
``PrivateDevices=no`` and ``DeviceAllow=/dev/hwrng r`` (``DevicePolicy=closed``
stays) shows it (not tested under systemd here).

What it covers: everything the provider draws through ``Provider.rand``
(epoch secrets SS and salt, nonce_start, the index permutation, group ids).
Not covered: HPKE's encapsulation randomness and the Argon2id salts and
join-token secrets, which come from OpenSSL and ``os.urandom`` directly.
Cost: one open and a 32-byte read of the device per draw, about N + 3 per
epoch of N members.
"""

from __future__ import annotations

import logging
import os
from typing import Callable

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from grouptun.errors import ConfigError

log = logging.getLogger("provider.hwrng")

CONFIG_KEY = "hardware_rng"
INFO = b"grouptun/1 provider rng"
HW_BYTES = 32
MAX_DRAW = 255 * 32  # HKDF-SHA256's output bound


class MixedRandom:
    """A ``rand(n)`` callable: getrandom mixed with ``source`` through HKDF (see the module docstring)."""

    def __init__(self, source: Callable[[int], bytes], name: str,
                 getrandom: Callable[[int], bytes] = os.urandom) -> None:
        self._source, self.name, self._getrandom = source, name, getrandom
        self.failures = 0
        self._failing = False

    def __call__(self, n: int) -> bytes:
        if not 0 < n <= MAX_DRAW:
            raise ValueError(f"draw of {n} bytes: must be 1..{MAX_DRAW}")
        ikm = self._getrandom(32)
        return HKDF(hashes.SHA256(), n, salt=self._hardware_salt(), info=INFO).derive(ikm)

    def _hardware_salt(self) -> bytes | None:
        """32 bytes from the device, or None (HKDF's all-zero salt) when it fails."""
        try:
            hw = self._source(HW_BYTES)
            if len(hw) != HW_BYTES:
                raise OSError(f"short read ({len(hw)} of {HW_BYTES} bytes)")
        except OSError as exc:
            self.failures += 1
            if not self._failing:
                self._failing = True
                log.warning("hardware RNG %s failed (%s): drawing from getrandom alone until it works again",
                            self.name, exc.strerror or exc)
            return None
        if self._failing:
            self._failing = False
            log.info("hardware RNG %s works again", self.name)
        return hw


def device_source(path: str) -> Callable[[int], bytes]:
    """Reads from the device at ``path`` without blocking (an empty device is a failed draw, not a stall)."""

    def read(n: int) -> bytes:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        try:
            return os.read(fd, n)
        finally:
            os.close(fd)

    return read


def from_config(config: dict) -> Callable[[int], bytes]:
    """``Provider.rand`` per ``provider.json``; ConfigError names the key when its value is unusable."""
    path = config.get(CONFIG_KEY)
    if path is None:
        return os.urandom
    if not isinstance(path, str) or not os.path.isabs(path):
        raise ConfigError(CONFIG_KEY, f"must be an absolute device path such as /dev/hwrng, or null, "
                                      f"not {path!r} (provider.json)")
    if not os.path.exists(path):
        raise ConfigError(CONFIG_KEY, f"{path} does not exist (provider.json)")
    return MixedRandom(device_source(path), path)
