"""The native run cipher against the reference (core.seal + core.wire, one packet at a time), byte for byte.

Every datagram the C code writes must equal ``wire.encode(header) + cipher.seal(...)`` under the IV
from ``seal.IvMaker``; every open verdict and plaintext must equal the reference cipher's; anything
out of bounds must be a ValueError that writes nothing.
"""

from __future__ import annotations

import sys
import threading
import time

import pytest
from hypothesis import given, note, settings
from hypothesis import strategies as st

from grouptun import native
from grouptun.core import seal, wire
from grouptun.errors import AuthenticationError

pytestmark = pytest.mark.skipif(native.RunKey is None, reason=native.UNAVAILABLE or "")

U64 = 2**64 - 1
MTU = 1420
SENTINEL = 0xEE  # fills buffers so that a write outside a datagram shows in the comparison


class Keys:
    def __init__(self, suite: int, seed: int) -> None:
        material = bytes((seed * 7 + k) % 256 for k in range(96))
        self.suite, self.enc, self.nonce_common = suite, material[:32], material[64:80]
        self.mac = material[32:64] if suite == 2 else None

    def reference(self):
        return seal.Suite1Cipher(self.enc) if self.suite == 1 else seal.Suite2Cipher(self.enc, self.mac)

    def native(self):
        return native.RunKey(self.suite, self.enc, self.mac, self.nonce_common[:12])


def head_word(type_: int, epoch: int) -> int:
    return int.from_bytes(wire.encode(wire.Header(type_, epoch, 0))[:wire.OFFSET_SEQUENCE], "big")


def reference_run(keys: Keys, plains: list[bytes], type_: int, epoch: int, first: int, step: int) -> list[bytes]:
    cipher, iv = keys.reference(), seal.IvMaker(keys.nonce_common)
    out = []
    for j, plain in enumerate(plains):
        s = first + j * step
        header = wire.encode(wire.Header(type_, epoch, s))
        out.append(cipher.seal(header, iv(s), plain))
    return out


@st.composite
def runs(draw):
    """A run: suite, sizes 0..MTU (the last may be shorter), s values up to 2^64 - 1, layout padding."""
    suite = draw(st.sampled_from([1, 2]))
    count = draw(st.integers(1, 24))
    size = draw(st.integers(0, MTU))
    last = draw(st.integers(0, size))
    step = draw(st.integers(1, 65535))
    top = U64 - (count - 1) * step  # the highest first s whose run stays within u64
    first = draw(st.integers(0, top) | st.integers(max(0, top - 3 * step), top) | st.integers(0, 3))
    return dict(suite=suite, count=count, size=size, last=last, step=step, first=first,
                type_=draw(st.sampled_from([wire.TYPE_DATA, wire.TYPE_KEEPALIVE])),
                epoch=draw(st.integers(0, 0xFFFF)), seed=draw(st.integers(0, 255)),
                src_pad=draw(st.integers(0, 40)), out_pad=draw(st.integers(0, 40)),
                src_off=draw(st.integers(0, 17)), out_off=draw(st.integers(0, 17)))


def plaintexts(r: dict) -> list[bytes]:
    lengths = [r["size"]] * (r["count"] - 1) + [r["last"]]
    return [bytes((r["seed"] + j * 31 + k) % 256 for k in range(n)) for j, n in enumerate(lengths)]


def seal_native(r: dict, keys: Keys, plains: list[bytes]) -> tuple[bytearray, int]:
    """Seal through RunKey.seal_run; returns the output buffer and the datagram stride."""
    src_stride, out_stride = r["size"] + r["src_pad"], r["size"] + wire.OVERHEAD + r["out_pad"]
    src = bytearray([SENTINEL]) * (r["src_off"] + src_stride * r["count"] + 1)
    for j, plain in enumerate(plains):
        at = r["src_off"] + j * src_stride
        src[at:at + len(plain)] = plain
    out = bytearray([SENTINEL]) * (r["out_off"] + out_stride * r["count"] + 1)
    keys.native().seal_run(src, r["src_off"], src_stride, out, r["out_off"], out_stride, r["count"], r["size"],
                           r["last"], head_word(r["type_"], r["epoch"]), r["first"], r["step"])
    return out, out_stride


def laid_out(r: dict, datagrams: list[bytes], stride: int) -> bytearray:
    out = bytearray([SENTINEL]) * (r["out_off"] + stride * r["count"] + 1)
    for j, datagram in enumerate(datagrams):
        at = r["out_off"] + j * stride
        out[at:at + len(datagram)] = datagram
    return out


@settings(max_examples=300, deadline=None, database=None)
@given(r=runs())
def test_seal_run_equals_reference(r):
    note(repr(r))
    keys, plains = Keys(r["suite"], r["seed"]), plaintexts(r)
    out, stride = seal_native(r, keys, plains)
    expected = reference_run(keys, plains, r["type_"], r["epoch"], r["first"], r["step"])
    assert out == laid_out(r, expected, stride)  # every datagram, and nothing written between or after


FORGERIES = ["none", "header", "body", "tag", "truncate", "extend", "wrong_s", "wrong_key"]


@settings(max_examples=300, deadline=None, database=None)
@given(r=runs(), forgery=st.sampled_from(FORGERIES), data=st.data())
def test_open_run_verdicts_and_plaintexts_equal_reference(r, forgery, data):
    keys, plains = Keys(r["suite"], r["seed"]), plaintexts(r)
    datagrams = [bytearray(d) for d in reference_run(keys, plains, r["type_"], r["epoch"], r["first"], r["step"])]
    victims = data.draw(st.sets(st.integers(0, r["count"] - 1), min_size=1, max_size=3), "victims")
    note(f"{r} {forgery} {victims}")
    last = len(datagrams[-1])
    opened_with = keys
    if forgery in ("header", "body", "tag"):
        low, high = {"header": (0, wire.HEADER_SIZE), "tag": (-wire.TAG_SIZE, 0)}.get(forgery, (wire.HEADER_SIZE, -wire.TAG_SIZE))
        for j in victims:
            span = range(len(datagrams[j]))[low:high or None]
            if span:
                datagrams[j][data.draw(st.sampled_from(span))] ^= 1 << data.draw(st.integers(0, 7))
    elif forgery == "truncate" and last > wire.OVERHEAD:
        datagrams[-1] = datagrams[-1][:-data.draw(st.integers(1, last - wire.OVERHEAD))]
    elif forgery == "extend" and len(datagrams[-1]) < len(datagrams[0]) or forgery == "extend" and r["count"] == 1:
        datagrams[-1] += b"\x00"
    elif forgery == "wrong_key":
        opened_with = Keys(r["suite"], r["seed"] + 1)
    first = r["first"] + (1 if forgery == "wrong_s" and r["first"] < U64 - (r["count"] - 1) * r["step"] else 0)
    size, last = len(datagrams[0]), len(datagrams[-1])
    stride = size + r["out_pad"]
    data_buf = laid_out(r, datagrams, stride)
    out = bytearray([SENTINEL]) * (stride * r["count"] + 8)
    ok = bytearray(b"\x07") * r["count"]
    good = opened_with.native().open_run(data_buf, r["out_off"], stride, out, 0, stride, r["count"],
                                         size if r["count"] > 1 else last, last, first, r["step"], ok)
    reference, iv = opened_with.reference(), seal.IvMaker(opened_with.nonce_common)
    expected = bytearray([SENTINEL]) * len(out)
    verdicts = []
    for j, datagram in enumerate(datagrams):
        try:
            plain = reference.open(bytes(datagram), iv(first + j * r["step"]))
        except AuthenticationError:
            plain = bytes(len(datagram) - wire.OVERHEAD)  # the native side zeroes what did not verify
            verdicts.append(0)
        else:
            verdicts.append(1)
        expected[j * stride:j * stride + len(plain)] = plain
    assert list(ok) == verdicts and good == sum(verdicts)
    assert out == expected
    if forgery == "none":
        assert good == r["count"]


def test_open_twice_gives_the_same_verdicts():
    """The cipher holds no replay state (the window is Python's): the same run opens twice alike."""
    keys = Keys(1, 3)
    datagrams = reference_run(keys, [bytes(100)] * 3, 1, 5, 10, 3)
    data = b"".join(datagrams)
    runner = keys.native()
    for _ in range(2):
        ok, out = bytearray(3), bytearray(300)
        assert runner.open_run(data, 0, 128, out, 0, 100, 3, 128, 128, 10, 3, ok) == 3 and ok == b"\x01" * 3


def test_a_run_of_zero_writes_nothing():
    runner = Keys(2, 1).native()
    out = bytearray(10)
    assert runner.seal_run(b"", 0, 0, out, 0, 0, 0, 0, 0, 0, 0, 1) is None and out == bytes(10)
    assert runner.open_run(b"", 0, 0, out, 0, 0, 0, 0, 0, 0, 1, bytearray()) == 0 and out == bytes(10)


# --- bounds: ValueError, nothing written ------------------------------------------------------------

GOOD_SEAL = dict(src_offset=0, src_stride=100, out_offset=0, out_stride=128, count=4, size=100, last_size=100,
                 head=0x11000001, first=5, step=3)
GOOD_OPEN = dict(data_offset=0, data_stride=128, out_offset=0, out_stride=100, count=4, size=128, last_size=128,
                 first=5, step=3)


@pytest.mark.parametrize("suite", [1, 2])
@pytest.mark.parametrize("change, message", [
    (dict(src_offset=1), "input buffer"),
    (dict(src_offset=-1), ">= 0"),
    (dict(src_stride=101), "input buffer"),
    (dict(out_offset=1), "output buffer"),
    (dict(out_stride=127), "overlap"),
    (dict(count=5), "buffer"),
    (dict(count=2**62), "buffer"),
    (dict(count=2**70), "out of range"),
    (dict(size=101, last_size=101, out_stride=129), "input buffer"),
    (dict(last_size=101), "last_size"),
    (dict(size=70000, last_size=1), "longer than"),
    (dict(first=2**64 - 5), "sequence numbers pass"),
    (dict(first=2**64), "first out of range"),
    (dict(first=-1), "first out of range"),
    (dict(step=0), "repeat"),
    (dict(step=2**64), "step out of range"),
    (dict(head=2**32), "head out of range"),
])
def test_seal_run_bounds(suite, change, message):
    runner = Keys(suite, 9).native()
    src, out = bytearray(400), bytearray(512)
    with pytest.raises(ValueError, match=message):
        runner.seal_run(src, out=out, **{**GOOD_SEAL, **change})
    assert out == bytes(512)
    runner.seal_run(src, out=out, **GOOD_SEAL)  # the unchanged call works, and the key is not left busy
    assert out != bytes(512)


@pytest.mark.parametrize("suite", [1, 2])
@pytest.mark.parametrize("change, message", [
    (dict(data_offset=1), "input buffer"),
    (dict(data_stride=129), "input buffer"),
    (dict(out_offset=1), "output buffer"),
    (dict(out_stride=99), "overlap"),
    (dict(count=5), "ok has fewer"),
    (dict(count=2**62), "ok has fewer"),
    (dict(count=2**70), "out of range"),
    (dict(size=27, last_size=27), "shorter than header and tag"),
    (dict(last_size=20), "shorter than header and tag"),
    (dict(last_size=129), "last_size"),
    (dict(size=70000, last_size=100), "longer than"),
    (dict(first=2**64 - 5), "sequence numbers pass"),
    (dict(step=-3), "step out of range"),
])
def test_open_run_bounds(suite, change, message):
    runner = Keys(suite, 9).native()
    data, out, ok = bytearray(512), bytearray(400), bytearray(4)
    with pytest.raises(ValueError, match=message):
        runner.open_run(data, out=out, ok=ok, **{**GOOD_OPEN, **change})
    assert out == bytes(400) and ok == bytes(4)


def test_overlapping_buffers_refused():
    runner = Keys(1, 2).native()
    shared = bytearray(1024)
    view = memoryview(shared)
    with pytest.raises(ValueError, match="overlap"):  # plaintext and datagrams in one region
        runner.seal_run(view[:400], 0, 100, view[300:], 0, 128, 4, 100, 100, 0, 0, 1)
    with pytest.raises(ValueError, match="overlap"):
        runner.open_run(view[:512], 0, 128, view[256:], 0, 100, 4, 128, 128, 0, 1, bytearray(4))
    with pytest.raises(ValueError, match="ok must not overlap"):
        runner.open_run(view[:512], 0, 128, bytearray(400), 0, 100, 4, 128, 128, 0, 1, view[500:504])
    assert shared == bytes(1024)
    # disjoint parts of one buffer are fine
    runner.seal_run(view[:400], 0, 100, view[400:], 0, 128, 4, 100, 100, 0, 0, 1)


@pytest.mark.parametrize("args, error", [
    ((3, bytes(32), None, bytes(12)), ValueError),
    ((1, bytes(31), None, bytes(12)), ValueError),
    ((1, bytes(32), None, bytes(16)), ValueError),
    ((1, bytes(32), bytes(32), bytes(12)), ValueError),
    ((2, bytes(32), None, bytes(12)), ValueError),
    ((2, bytes(32), bytes(33), bytes(12)), ValueError),
    ((2, bytes(32), "not bytes", bytes(12)), TypeError),
])
def test_bad_keys_refused(args, error):
    with pytest.raises(error):
        native.RunKey(*args)


def test_read_only_output_refused():
    runner = Keys(1, 2).native()
    with pytest.raises(TypeError):
        runner.seal_run(bytes(100), 0, 100, bytes(128), 0, 128, 1, 100, 100, 0, 0, 1)


def test_uninitialised_key_refused():
    runner = native.RunKey.__new__(native.RunKey)
    with pytest.raises(RuntimeError, match="not initialised"):
        runner.seal_run(bytes(100), 0, 100, bytearray(128), 0, 128, 1, 100, 100, 0, 0, 1)


@pytest.mark.parametrize("method", ["seal_run", "open_run"])
def test_the_gil_is_released_during_a_run(method):
    """Another thread runs while a run is sealed or opened.

    With the switch interval raised, the waiting thread can take the GIL only if the call gives it up;
    so ``ran`` can be set during the call only if the call released the GIL (never by a timing fluke).
    """
    count, size = 4000, 1400
    runner = Keys(1, 4).native()
    plain, sealed = bytearray(count * size), bytearray(count * (size + wire.OVERHEAD))
    runner.seal_run(plain, 0, size, sealed, 0, size + wire.OVERHEAD, count, size, size, 0x11000000, 0, 1)
    ok = bytearray(count)
    calls = {"seal_run": lambda: runner.seal_run(plain, 0, size, sealed, 0, size + wire.OVERHEAD, count, size,
                                                 size, 0x11000000, 0, 1),
             "open_run": lambda: runner.open_run(sealed, 0, size + wire.OVERHEAD, plain, 0, size, count,
                                                 size + wire.OVERHEAD, size + wire.OVERHEAD, 0, 1, ok)}
    go, ran, stop = threading.Semaphore(0), [], False

    def waiter():
        while True:
            go.acquire()  # waits without the GIL; afterwards needs it back to go on
            if stop:
                return
            ran.append(1)

    old = sys.getswitchinterval()
    thread = threading.Thread(target=waiter)
    thread.start()
    try:
        sys.setswitchinterval(100.0)
        seen = False
        for _ in range(20):  # the waiter may not be scheduled within one call on a busy machine
            del ran[:]
            go.release()
            calls[method]()
            seen = bool(ran)
            if seen:
                break
            time.sleep(0.01)  # let the waiter take the GIL and block on the lock again
    finally:
        sys.setswitchinterval(old)
        stop = True
        go.release()
        thread.join(5)
    assert seen
