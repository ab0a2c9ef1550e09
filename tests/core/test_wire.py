"""The header codec (PROTOCOL.md 5)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from grouptun.core import wire
from grouptun.errors import WireFormatError

headers = st.builds(wire.Header, st.sampled_from(sorted(wire.TYPES)),
                    st.integers(0, 0xFFFF), st.integers(0, 2**64 - 1), flags=st.just(0))


def test_sizes_and_offsets():
    assert wire.HEADER_SIZE == 12 and wire.TAG_SIZE == 16 and wire.OVERHEAD == 28
    assert (wire.OFFSET_VERSION_TYPE, wire.OFFSET_FLAGS, wire.OFFSET_EPOCH, wire.OFFSET_SEQUENCE) == (0, 1, 2, 4)
    raw = wire.encode(wire.Header(wire.TYPE_KEEPALIVE, 0x1234, 0x0102030405060708))
    assert raw == bytes.fromhex("1200 1234 0102030405060708")


@given(headers)
def test_decode_encode_roundtrip(header):
    raw = wire.encode(header)
    assert len(raw) == wire.HEADER_SIZE
    assert wire.decode(raw + bytes(wire.TAG_SIZE)) == header


@given(st.binary(max_size=64))
def test_decode_raises_only_wire_format_error(data):
    try:
        header = wire.decode(data)
    except WireFormatError as exc:
        assert exc.reason in (wire.REASON_SHORT, wire.REASON_TYPE, wire.REASON_FLAGS)
    else:
        assert len(data) >= wire.MIN_DATAGRAM
        assert wire.encode(header) == data[:12]


def test_length_checked_first():
    with pytest.raises(WireFormatError) as info:
        wire.decode(b"\xff" * 27)  # bad version too, but short wins
    assert info.value.reason == wire.REASON_SHORT


@pytest.mark.parametrize("byte0", [0x01, 0x10, 0x13, 0x21, 0x1F, 0x00, 0xFF])
def test_bad_version_or_type(byte0):
    with pytest.raises(WireFormatError) as info:
        wire.decode(bytes([byte0]) + bytes(27))
    assert info.value.reason == wire.REASON_TYPE


@pytest.mark.parametrize("flags", [1, 0x80, 0xFF])
def test_flags_refused(flags):
    with pytest.raises(WireFormatError) as info:
        wire.decode(bytes([0x11, flags]) + bytes(26))
    assert info.value.reason == wire.REASON_FLAGS


def test_encode_refuses_out_of_range():
    for bad in (wire.Header(3, 0, 0), wire.Header(1, 0x10000, 0), wire.Header(1, 0, 2**64),
                wire.Header(1, -1, 0), wire.Header(1, 0, 0, flags=1)):
        with pytest.raises(WireFormatError):
            wire.encode(bad)


def test_wire_epoch_wraps():
    assert wire.wire_epoch(65535) == 0xFFFF and wire.wire_epoch(65536) == 0 and wire.wire_epoch(70001) == 0x1171
