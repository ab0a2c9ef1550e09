"""HMAC_DRBG with SHA-256 (NIST SP 800-90A Rev. 1, section 10.1.2), over ``cryptography``'s HMAC.

For streams of products (seed 001's appendix): many keys from one exported
seed, each call continuing where the last stopped. Deterministic by design:
the caller supplies the entropy input and nonce (here: bytes exported from
the epoch, so every member produces the same stream); the core draws no
randomness of its own. No prediction resistance (a stream is meant to be
reproducible), security strength 256 bits, so the entropy input is at least
32 bytes and the nonce at least 16. Checked against NIST CAVP vectors
(tests/vectors/hmac-drbg-cavp.json).

State ``Key`` and ``V`` live in bytearrays that :meth:`HmacDrbg.wipe`
overwrites; the HMAC objects' own copies are freed by OpenSSL.
"""

from __future__ import annotations

from cryptography.hazmat.primitives import hashes, hmac

OUT_LEN = 32
MIN_ENTROPY = 32
MIN_NONCE = 16
MAX_REQUEST = 2**19 // 8      # bytes per generate call (SP 800-90A table 2: 2^19 bits)
RESEED_INTERVAL = 2**48


class HmacDrbg:
    """One HMAC_DRBG instance; ValueError names the argument outside the limits above."""

    def __init__(self, entropy: bytes | bytearray, nonce: bytes | bytearray,
                 personalization: bytes | bytearray = b"") -> None:
        _at_least("entropy", entropy, MIN_ENTROPY)
        _at_least("nonce", nonce, MIN_NONCE)
        self._key = bytearray(OUT_LEN)
        self._v = bytearray(b"\x01" * OUT_LEN)
        self._update(bytes(entropy) + bytes(nonce) + bytes(personalization))
        self.reseed_counter = 1

    def reseed(self, entropy: bytes | bytearray, additional: bytes | bytearray = b"") -> None:
        _at_least("entropy", entropy, MIN_ENTROPY)
        self._update(bytes(entropy) + bytes(additional))
        self.reseed_counter = 1

    def generate(self, length: int, additional: bytes | bytearray = b"") -> bytearray:
        """``length`` pseudorandom bytes (10.1.2.5)."""
        if not 1 <= length <= MAX_REQUEST:
            raise ValueError(f"length must be 1..{MAX_REQUEST} bytes, got {length}")
        if self.reseed_counter > RESEED_INTERVAL:
            raise ValueError("reseed required: the reseed interval is used up")
        if additional:
            self._update(bytes(additional))
        out = bytearray()
        while len(out) < length:
            self._v[:] = self._mac(self._key, self._v)
            out += self._v
        del out[length:]
        self._update(bytes(additional))
        self.reseed_counter += 1
        return out

    def wipe(self) -> None:
        self._key[:] = bytes(OUT_LEN)
        self._v[:] = bytes(OUT_LEN)

    def _update(self, provided: bytes) -> None:
        """HMAC_DRBG_Update (10.1.2.2)."""
        for byte in (b"\x00", b"\x01"):
            self._key[:] = self._mac(self._key, self._v, byte, provided)
            self._v[:] = self._mac(self._key, self._v)
            if not provided:
                return

    @staticmethod
    def _mac(key: bytearray, *parts: bytes | bytearray) -> bytes:
        mac = hmac.HMAC(key, hashes.SHA256())
        for part in parts:
            mac.update(part)
        return mac.finalize()


def _at_least(name: str, value: bytes | bytearray, size: int) -> None:
    if len(value) < size:
        raise ValueError(f"{name} must be at least {size} bytes, got {len(value)}")
