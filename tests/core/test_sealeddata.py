"""The sealed-data blob format (grouptun.core.sealeddata): round trips, and every way a stream can be broken."""

from __future__ import annotations

import os

import pytest

from grouptun.core import sealeddata as sd
from grouptun.core.capsule import KemPrivateKey
from grouptun.errors import SealedDataError

GROUP, DATA = bytes(range(16)), bytes(range(16, 32))
KEY = bytes(range(32, 64))
ALICE = KemPrivateKey.from_random(bytes(range(96)))
BOB = KemPrivateKey.from_random(bytes(range(1, 97)))


def header(chunk: int = 16, names=("alice",)) -> sd.Header:
    keys = {"alice": ALICE, "bob": BOB}
    return sd.Header(GROUP, DATA, chunk, tuple((n, sd.wrap_key(keys[n].public_bytes(), GROUP, DATA, n, KEY))
                                               for n in names))


def seal(plain: bytes, h: sd.Header) -> list[bytes]:
    raw, sealer, size = h.to_bytes(), None, h.chunk_size
    sealer = sd.ChunkSealer(KEY, raw)
    pieces = [plain[i:i + size] for i in range(0, len(plain), size)] or [b""]
    return [sealer.seal(p, final=i == len(pieces) - 1) for i, p in enumerate(pieces)]


def open_stream(stream: bytes, feed: int = 7) -> bytes:
    h, hlen = sd.parse_header(stream)
    opener = sd.StreamOpener(sd.unwrap_key(ALICE, h, "alice"), stream[:hlen], h.chunk_size)
    out = [opener.feed(stream[i:i + feed]) for i in range(hlen, len(stream), feed)]
    return b"".join(out) + opener.finish()


@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 32, 100])
def test_round_trip_any_size_fed_in_any_pieces(size):
    plain = os.urandom(size)
    h = header()
    blob = h.to_bytes() + b"".join(seal(plain, h))
    assert len(blob) == sd.blob_size(len(h.to_bytes()), size, 16)
    for feed in (1, 7, 33, len(blob)):
        assert open_stream(blob, feed) == plain


def test_header_round_trips_and_names_its_recipients():
    h = header(names=("alice", "bob"))
    parsed, length = sd.parse_header(h.to_bytes() + b"rest")
    assert parsed == h and length == len(h.to_bytes()) == sd.header_size(["alice", "bob"])
    assert parsed.names() == ("alice", "bob")
    assert bytes(sd.unwrap_key(BOB, parsed, "bob")) == KEY


@pytest.mark.parametrize("damage, reason", [
    (lambda c: c[:-1], "truncated"),                      # last chunk dropped: the one before is not final
    (lambda c: [c[1], c[0], *c[2:]], "altered, reordered"),
    (lambda c: c[:2] + [c[2][:-1]], "truncated or its last chunk altered"),
    (lambda c: c[:1] + [bytes([c[1][0] ^ 1]) + c[1][1:]] + c[2:], "altered"),
])
def test_reordered_truncated_or_altered_chunks_fail(damage, reason):
    h = header()
    chunks = seal(os.urandom(40), h)  # 16 + 16 + 8
    with pytest.raises(SealedDataError, match=reason):
        open_stream(h.to_bytes() + b"".join(damage(chunks)))


def test_a_stream_cut_at_a_chunk_boundary_fails_although_every_chunk_authenticates():
    h = header()
    chunks = seal(os.urandom(48), h)
    with pytest.raises(SealedDataError, match="truncated"):
        open_stream(h.to_bytes() + b"".join(chunks[:2]))


def test_chunks_are_bound_to_their_header():
    h, other = header(), header(names=("alice", "bob"))
    chunks = seal(b"x" * 20, h)
    with pytest.raises(SealedDataError):
        open_stream(other.to_bytes() + b"".join(chunks))


def test_the_key_opens_only_for_the_listed_member_with_its_own_key():
    h = header(names=("alice",))
    with pytest.raises(SealedDataError, match="not sealed to 'bob'"):
        sd.unwrap_key(BOB, h, "bob")
    with pytest.raises(SealedDataError, match="does not open"):
        sd.unwrap_key(BOB, h, "alice")


@pytest.mark.parametrize("raw, reason", [
    (b"GTS", "too short"), (b"XXXX" + bytes(40), "bad magic"),
    (b"GTSD\x02" + bytes(40), "version 2 unknown"),
])
def test_malformed_headers_are_refused(raw, reason):
    with pytest.raises(SealedDataError, match=reason):
        sd.parse_header(raw)


def test_a_header_cut_inside_a_recipient_is_refused():
    raw = header().to_bytes()
    with pytest.raises(SealedDataError, match="truncated"):
        sd.parse_header(raw[:-1])


def test_header_limits():
    with pytest.raises(SealedDataError, match="chunk size"):
        sd.Header(GROUP, DATA, 8, (("a", bytes(1168)),))
    with pytest.raises(SealedDataError, match="twice"):
        sd.Header(GROUP, DATA, 16, (("a", bytes(1168)), ("a", bytes(1168))))
    with pytest.raises(SealedDataError, match="recipients"):
        sd.Header(GROUP, DATA, 16, ())


def test_no_chunk_after_the_final_one():
    sealer = sd.ChunkSealer(KEY, b"h")
    sealer.seal(b"", final=True)
    with pytest.raises(SealedDataError, match="final chunk"):
        sealer.seal(b"", final=True)
