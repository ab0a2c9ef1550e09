import struct

from hypothesis import given, strategies as st

from grouptun.data.offload.checksum import checksum, fold_add, ones_sum
from offload_pktgen import ref_sum


@given(st.binary(max_size=3000))
def test_ones_sum_equals_reference(data):
    assert ones_sum(data) == ref_sum(data)
    assert ones_sum(memoryview(bytearray(data))) == ref_sum(data)


@given(st.binary(max_size=300), st.integers(0, 0x1FFFE))
def test_initial_is_added_ones_complement(data, initial):
    words = struct.pack("!I", initial)  # the same value as two extra words 0 || initial (fits 17 bits)
    assert ones_sum(data, initial) == ref_sum(words + data + (b"\0" if len(data) % 2 else b""))


def test_zero_and_ffff_corner():
    assert ones_sum(b"") == 0
    assert ones_sum(bytes(10)) == 0
    assert ones_sum(b"\xff\xff") == 0xFFFF  # non-zero data never folds to +0
    assert ones_sum(b"\xff\xff" * 7) == 0xFFFF
    assert ones_sum(b"\x00\x01\xff\xfe") == 0xFFFF  # residue 0, value non-zero
    assert checksum(b"\xff\xff") == 0
    assert checksum(b"") == 0xFFFF


def test_odd_length_pads_at_end():
    assert ones_sum(b"\x01") == 0x0100
    assert ones_sum(b"\x12\x34\x56") == 0x1234 + 0x5600


def test_known_ipv4_header():
    # Wikipedia's example header: checksum 0xb861.
    hdr = bytes.fromhex("450000730000400040110000c0a80001c0a800c7")
    assert checksum(hdr) == 0xB861


@given(st.lists(st.integers(0, 0xFFFF), max_size=20))
def test_fold_add_matches_reference(words):
    assert fold_add(*words) == ref_sum(b"".join(struct.pack("!H", w) for w in words))


@given(st.binary(min_size=0, max_size=2000), st.integers(0, 64), st.integers(1, 300), st.integers(0, 6),
       st.integers(0, 300))
def test_strided_sums_match_reference_with_and_without_numpy(data, first, stride, count, length):
    from grouptun.data.offload.checksum import HAVE_NUMPY, strided_ones_sums
    length = min(length, stride)
    if count and first + (count - 1) * stride + length > len(data):
        return
    buf = bytearray(data)
    want = [ref_sum(bytes(buf[first + k * stride:first + k * stride + length])) for k in range(count)]
    assert strided_ones_sums(buf, first, stride, count, length, use_numpy=False) == want
    if HAVE_NUMPY:
        assert strided_ones_sums(buf, first, stride, count, length, use_numpy=True) == want


def test_strided_sums_corners():
    from grouptun.data.offload.checksum import HAVE_NUMPY, strided_ones_sums
    buf = bytearray(b"\xff" * 40 + bytes(40))
    for use in (False, True) if HAVE_NUMPY else (False,):
        assert strided_ones_sums(buf, 0, 10, 8, 10, use_numpy=use) == [0xFFFF] * 4 + [0] * 4
        assert strided_ones_sums(buf, 0, 10, 4, 3, use_numpy=use) == [0xFF00] * 4  # odd: 0xffff + 0xff00 folds to 0xff00
