import pytest
from hypothesis import given, strategies as st

from grouptun.errors import OffloadError
from grouptun.data.offload import vnet


@given(st.integers(0, 255), st.sampled_from([0, 1, 3, 4, 5, 0x81, 0x84]), *[st.integers(0, 0xFFFF)] * 4)
def test_roundtrip(flags, gso_type, a, b, c, d):
    h = vnet.VnetHdr(flags, gso_type, a, b, c, d)
    raw = h.encode()
    assert len(raw) == vnet.VNET_HDR_LEN
    assert vnet.decode(raw) == h
    buf = bytearray(20)
    h.pack_into(buf, 5)
    assert vnet.decode(buf, 5) == h
    assert vnet.unpack_fields(buf, 5) == (flags, gso_type, a, b, c, d)


def test_layout_is_host_order_little_endian_here():
    raw = vnet.VnetHdr(1, vnet.GSO_TCPV4, 0x0102, 0x0304, 0x0506, 0x0708).encode()
    import sys
    if sys.byteorder == "little":
        assert raw == bytes([1, 1, 2, 1, 4, 3, 6, 5, 8, 7])


def test_gso_kind_strips_ecn():
    assert vnet.VnetHdr(gso_type=vnet.GSO_TCPV4 | vnet.GSO_ECN).gso_kind == vnet.GSO_TCPV4


def test_bad_headers():
    with pytest.raises(OffloadError):
        vnet.decode(b"\0" * 9)
    with pytest.raises(OffloadError):
        vnet.decode(bytes([0, 2]) + bytes(8))
    with pytest.raises(OffloadError):
        vnet.decode(bytes(12), offset=5)
