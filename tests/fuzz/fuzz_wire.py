"""Fuzz target ``wire``: the header decoder (grouptun.core.wire), and the session's agreement with it.

Input: one datagram. The session reads headers inline on its hot path (the same ``HEADER``
struct); this target checks that its drop reason is the decoder's verdict, so the header rule
stays written once in effect.
"""

from __future__ import annotations

from fuzz.fuzz_receive import AUTHENTIC, NOW, SOURCE, receiver
from grouptun.core import counters as C
from grouptun.core import wire
from grouptun.errors import WireFormatError

INVARIANT = (
    "wire.decode raises nothing but WireFormatError, whose reason is short, version_type or flags; "
    "what it accepts is at least 28 bytes and re-encodes to the same 12 header bytes. A datagram "
    "the decoder refuses is counted by the session under exactly that reason and nothing else.")

REASONS = {wire.REASON_SHORT: C.SHORT, wire.REASON_TYPE: C.VERSION_TYPE, wire.REASON_FLAGS: C.FLAGS}


def test_one_input(data: bytes) -> None:
    try:
        header = wire.decode(data)
    except WireFormatError as exc:
        reason = getattr(exc, "reason", None)
        assert reason in REASONS, f"WireFormatError without a known reason: {reason!r}"
        session = receiver()
        assert session.on_datagram(data, SOURCE, NOW) is None
        counted = {r: v for r, v in session.drops.items() if v}
        assert counted == {REASONS[reason]: 1}, f"decoder says {reason}, session counted {counted}"
        return
    assert len(data) >= wire.MIN_DATAGRAM
    assert wire.encode(header) == bytes(data[:wire.HEADER_SIZE])
    assert header.type in wire.TYPES and header.flags == 0


def seeds() -> dict[str, bytes]:
    sealed = next(iter(AUTHENTIC))
    return {"sealed": sealed, "short": sealed[:27], "version": b"\x21" + sealed[1:],
            "flags": sealed[:1] + b"\x01" + sealed[2:], "keepalive": bytes([0x12]) + bytes(27)}
