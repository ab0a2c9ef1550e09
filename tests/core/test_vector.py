"""Run-wise sealing/opening (grouptun.core.vector) against the per-datagram batch path, byte for byte.

The batch path (Sealer.seal_into, open_batch) is the reference: two identically built sessions get the
same input, one through the run form, one through the batch form, and must end in the same state.
"""

from __future__ import annotations

import pytest
from hypothesis import event, given, note, settings
from hypothesis import strategies as st

from grouptun.core import counters as C
from grouptun.core import vector, wire
from grouptun.core.replay import WINDOW, ReplayWindow
from grouptun.core.sequence import N_MAX, SequenceAllocator
from grouptun.core.session import Session

from .builders import endpoint, ipv4, ipv6, material, v4, v6

pytestmark = pytest.mark.skipif(not vector.AVAILABLE, reason="numpy missing")

OVER = wire.OVERHEAD
BUF = 64 * 1500 + 4096
SENTINEL = 0xEE  # fills buffers so over-reads and over-writes show up in byte comparisons
ALICE = endpoint("alice")


def build(name: str, suite: int = 1, **extra) -> Session:
    session = Session(name)
    session.install_epoch(material(name, 1, suite, **extra), 0.0)
    return session


def inner(v6_: bool, size: int, tag: int, src: int = 1, dst: int = 2) -> bytes:
    """An IP packet of exactly ``size`` bytes from member ``src`` to ``dst`` (bob), payload pattern by ``tag``."""
    if v6_:
        return ipv6(v6(src), v6(dst), bytes((tag + k) % 251 for k in range(size - 40)))
    return ipv4(v4(src), v4(dst), bytes((tag + k) % 251 for k in range(size - 20)))


def allocator_state(session: Session) -> tuple:
    a = session._keyring.current.allocator
    return a._next_s, a.next_n, a.rekey_due


# --- RunSealer ---------------------------------------------------------------------------------

def seal_both(packets: list[bytes], stride: int, a1: Session, a2: Session):
    """Seal ``packets`` with RunSealer on a1 and with seal_into one by one on a2.

    Returns (RunSealer result, run output, reference output, reference length, sealer1, sealer2).
    """
    lengths = [len(p) for p in packets]
    source = bytearray([SENTINEL]) * (stride * len(packets) + 64)
    for j, p in enumerate(packets):
        source[j * stride:j * stride + len(p)] = p
    out1 = bytearray([SENTINEL]) * BUF
    s1 = a1.sealer(packets[0], 1.0)
    result = vector.RunSealer(source, out1).seal(s1, stride, lengths)
    out2 = memoryview(bytearray([SENTINEL]) * BUF)
    s2 = a2.sealer(packets[0], 1.0)
    off = 0
    for p in packets:
        off += s2.seal_into(p, out2, off)
    return result, out1, bytes(out2), off, s1, s2


def assert_same_sender(a1: Session, a2: Session, s1, s2, requests: bool = True) -> None:
    assert (s1.packets, s1.bytes) == (s2.packets, s2.bytes)
    assert allocator_state(a1) == allocator_state(a2)
    assert dict(a1.drops) == dict(a2.drops)
    if requests:
        assert a1.take_requests() == a2.take_requests()


@settings(max_examples=80, deadline=None, database=None)
@given(v6_=st.booleans(), size=st.integers(40, 1400), count=st.integers(1, 64), data=st.data(),
       pad=st.integers(0, 40), rekey=st.sampled_from([2**27, 3, 40]))
def test_run_sealer_equals_seal_into(v6_, size, count, data, pad, rekey):
    last = data.draw(st.integers(40 if v6_ else 20, size), "last")
    a1, a2 = build("alice", rekey_after_packets=rekey), build("alice", rekey_after_packets=rekey)
    packets = [inner(v6_, size, j) for j in range(count - 1)] + [inner(v6_, last, 99)]
    if count == 1:
        packets = [inner(v6_, size, 7)]
    result, out1, out2, total, s1, s2 = seal_both(packets, size + pad, a1, a2)
    assert result == (count, total)
    assert bytes(out1[:total]) == out2[:total]
    assert out1[total:] == bytearray([SENTINEL]) * (BUF - total)  # nothing written beyond the run
    assert_same_sender(a1, a2, s1, s2)
    s1.finish(2.0)
    s2.finish(2.0)
    assert vars_of(a1.peer("bob")) == vars_of(a2.peer("bob"))


def vars_of(peer) -> tuple:
    return peer.endpoint, peer.last_seen, peer.last_sent, peer.rx_packets, peer.rx_bytes, peer.tx_packets, peer.tx_bytes


def test_run_sealer_reuses_its_layouts_across_runs_and_sessions():
    a1, a2 = build("alice"), build("alice")
    source, out = bytearray(BUF), bytearray(BUF)
    runner = vector.RunSealer(source, out)
    for round_, (size, count, last) in enumerate([(100, 5, 100), (100, 7, 60), (1400, 3, 1400), (100, 4, 99)]):
        packets = [inner(False, size, round_ + j) for j in range(count - 1)] + [inner(False, last, 50 + round_)]
        lengths = [len(p) for p in packets]
        source[:] = bytes(BUF)
        for j, p in enumerate(packets):
            source[j * 1500:j * 1500 + len(p)] = p
        s1 = a1.sealer(packets[0], 1.0)
        got, total = runner.seal(s1, 1500, lengths)
        ref = memoryview(bytearray(BUF))
        s2 = a2.sealer(packets[0], 1.0)
        off = sum(s2.seal_into(p, ref, sum(len(q) + OVER for q in packets[:j])) for j, p in enumerate(packets))
        assert (got, total) == (count, off) and bytes(out[:total]) == bytes(ref[:off])
        assert_same_sender(a1, a2, s1, s2)
    # and bob opens what came out of the last round, in order
    bob = build("bob")
    got = [bob.on_datagram(bytes(out[k:k + 128]), ALICE, 1.0) for k in range(0, 3 * 128, 128)]
    assert got == packets[:3]


def refused(a: Session, lengths: list[int], stride: int = 1500, runner=None) -> None:
    """RunSealer.seal returns None and reserves nothing."""
    source, out = bytearray(BUF), bytearray(BUF)
    sealer = a.sealer(inner(False, 100, 0), 1.0)
    before = allocator_state(a), dict(a.drops)
    runner = runner or vector.RunSealer(source, out)
    assert runner.seal(sealer, stride, lengths) is None
    assert (allocator_state(a), dict(a.drops)) == before
    assert (sealer.packets, sealer.bytes) == (0, 0)
    assert out == bytearray(BUF)


@pytest.mark.parametrize("lengths", [
    [100, 60, 80],       # a middle one shorter (and a shorter last)
    [100, 100, 60, 99],  # a middle one shorter
    [100, 60, 100],      # one middle one shorter, the last full (e78ba49 sealed it as 100 bytes)
    [100, 100, 60, 100],
    [100, 120, 100],     # one middle one longer, the last full (e78ba49 truncated it to 100 bytes)
    [100, 100, 120, 100],
    [100, 101],          # last longer than the first
    [],
])
def test_run_sealer_refuses_non_uniform_runs(lengths):
    refused(build("alice"), lengths)


def test_run_sealer_refuses_suite_2_oversized_and_too_long_runs():
    refused(build("alice", suite=2), [100, 100, 100])
    a = build("alice")
    refused(a, [1400] * 50, runner=vector.RunSealer(bytearray(BUF), bytearray(49 * 1428)))  # out too small
    refused(a, [100] * 9, runner=vector.RunSealer(bytearray(BUF), bytearray(BUF), max_run=8))


@pytest.mark.parametrize("last", [100, 70])
def test_run_sealer_at_n_max_short_grant_then_nothing_and_no_s_reused(last):
    a1, a2 = build("alice"), build("alice")
    for a in (a1, a2):
        state = a._keyring.current
        state.allocator = SequenceAllocator(state.nonce_start, state.group_size, state.own_index, start_n=N_MAX - 2)
    packets = [inner(False, 100, j) for j in range(4)] + [inner(False, last, 9)]
    result, out1, out2, total, s1, s2 = seal_both(packets, 100, a1, a2)
    assert result == (3, 3 * 128) and total == 3 * 128  # the three left, all full size
    assert bytes(out1[:total]) == out2[:total]
    assert a1.drops[C.TX_EXHAUSTED] == 2
    assert_same_sender(a1, a2, s1, s2)
    seen = [wire.HEADER.unpack_from(out1, k)[3] for k in range(0, total, 128)]
    state = a1._keyring.current
    assert [(s - state.nonce_start) // state.group_size for s in seen] == [N_MAX - 2, N_MAX - 1, N_MAX]
    # exhausted: nothing written, every packet counted, rekey requested once
    result, out1, out2, total, s1, s2 = seal_both(packets, 100, a1, a2)
    assert result == (0, 0) and total == 0 and out1 == bytearray([SENTINEL]) * BUF
    assert a1.drops[C.TX_EXHAUSTED] == 2 + 5
    assert (s1.packets, s1.bytes) == (0, 0)
    assert_same_sender(a1, a2, s1, s2)
    assert a1.take_requests() == set()  # both asked once, already taken


def test_short_grant_requests_rekey_like_seal_into():
    a1, a2 = build("alice"), build("alice")
    for a in (a1, a2):
        state = a._keyring.current
        state.allocator = SequenceAllocator(state.nonce_start, state.group_size, state.own_index, start_n=N_MAX - 2)
    seal_both([inner(False, 100, j) for j in range(5)], 100, a1, a2)
    assert "rekey:exhausted" in a2.take_requests()
    assert "rekey:exhausted" in a1.take_requests()


# --- RunOpener -----------------------------------------------------------------------------------

class Pair:
    """Two identical receivers: A opens runs with RunOpener (falling back to open_batch), B with open_batch."""

    def __init__(self, **extra) -> None:
        self.a, self.b = build("bob", **extra), build("bob", **extra)
        self.data_a, self.out_a, self.out_b = bytearray(BUF), bytearray(BUF), bytearray(BUF)
        self.opener = vector.RunOpener(self.data_a, self.out_a)
        self.last_run = None

    def feed(self, run: bytes, stride: int, source, now: float) -> tuple[list[bytes], list[bytes]]:
        n = len(run)
        self.data_a[:n] = run
        before = snapshot(self.a)
        r = self.opener.open(self.a, n, stride, source, now)
        self.last_run = r
        if r is None:
            assert snapshot(self.a) == before  # refused having changed nothing
            got_a = self.a.open_batch(memoryview(self.data_a)[:n], stride, source, now, memoryview(self.out_a))
        else:
            assert r.count == -(-n // stride) and r.stride == stride
            got_a = r.all_views(memoryview(self.out_a))
            assert r.accepted == len(got_a)
        got_a = [bytes(p) for p in got_a]
        got_b = [bytes(p) for p in self.b.open_batch(memoryview(bytes(run)), stride, source, now,
                                                       memoryview(self.out_b))]
        assert got_a == got_b
        assert snapshot(self.a) == snapshot(self.b)
        return got_a, got_b


def snapshot(session: Session) -> tuple:
    """Everything the receive path may change."""
    state = session._keyring.current
    receiver = state.receivers.get(0)  # alice is index 0; a receiver not made yet has an empty window
    window = receiver.window if receiver is not None else ReplayWindow()
    top = window.top
    window = (top, tuple(window.check(n) for n in range(max(0, top - WINDOW - 8), top + 80)))
    peer = session.peer("alice")
    return (dict(session.drops), vars_of(peer), window, state.send_started, state.auth_failures,
            frozenset(session._requests), frozenset(state.raised))


def seal_items(sender: Session, items: list, route: bytes = inner(False, 20, 0)) -> list[bytes]:
    """Datagrams for ``items`` (inner packets, or None for a keepalive), sealed in order (consecutive s).

    ``route`` picks the destination (the sealer then seals any bytes, as a TSO segment's would be)."""
    out = []
    for item in items:
        if item is None:
            sender.peer("carol").last_sent = 1.0  # only bob's keepalive is due: it takes the next s
            (_, datagram), = sender.on_timer(1.0)
            for peer in sender._keyring.current.others:  # due again next time
                peer.last_sent = None
            out.append(datagram)
        else:
            sealer = sender.sealer(route, 1.0)
            buf = memoryview(bytearray(len(item) + OVER))
            assert sealer.seal_into(item, buf, 0) == len(buf)
            out.append(bytes(buf))
    return out


def inner_for_bob(packet: bytes, v6_: bool) -> bool:
    return packet[24:40] == v6(2).packed if v6_ else packet[16:20] == v4(2).packed


def as_run(datagrams: list, stride: int) -> bytes:
    """A GRO buffer: every datagram but the last exactly ``stride`` bytes (padded with zeros if shorter)."""
    parts = [bytes(d) + bytes(stride - len(d)) for d in datagrams[:-1]]
    return b"".join(parts) + bytes(datagrams[-1])


KINDS = ["clean", "auth", "header", "inner_source", "inner_length", "inner_family", "inner_dest", "copied", "skip",
         "keepalive_last", "keepalive_mid", "replay", "overlap", "roam"]


@settings(max_examples=300, deadline=None, database=None)
@given(v6_=st.booleans(), size=st.integers(40, 1400), count=st.integers(2, 64), data=st.data(),
       kind=st.sampled_from(KINDS), warm=st.booleans(), more_auth=st.sets(st.integers(0, 63), max_size=2),
       rekey=st.sampled_from([2**27, 10]))
def test_run_opener_equals_open_batch(v6_, size, count, data, kind, warm, more_auth, rekey):
    last = data.draw(st.integers(40 if v6_ else 20, size), "last")
    j = data.draw(st.integers(0, count - 1), "j")
    note(f"v6={v6_} size={size} count={count} kind={kind} warm={warm} more_auth={more_auth} rekey={rekey}")
    sender, pair = build("alice"), Pair(rekey_after_packets=rekey)
    now = 1.0
    if warm:  # an earlier batch (batch path on both): the run starts above a non-empty window
        warmup = seal_items(sender, [inner(v6_, 60, k) for k in range(3)])
        for session in (pair.a, pair.b):
            session.open_batch(memoryview(as_run(warmup, 88)), 88, ALICE, now, memoryview(bytearray(BUF)))
    packets = [inner(v6_, size, k) for k in range(count - 1)] + [inner(v6_, last, 77)]
    if kind == "inner_source":
        packets[j] = inner(v6_, len(packets[j]), 5, src=3)  # carol's address inside alice's key
    elif kind == "inner_length":
        bad = bytearray(packets[j])
        bad[5 if v6_ else 3] ^= 1  # length field no longer matches
        packets[j] = bytes(bad)
    elif kind == "inner_family" and len(packets[j]) >= 40:
        packets[j] = inner(not v6_, len(packets[j]), 3)  # valid, but not like the others
    elif kind == "inner_dest":
        packets[j] = inner(v6_, len(packets[j]), 4, dst=3)  # alice's packet for carol, copied to bob
    elif kind == "copied":
        packets = [inner(v6_, len(p), k, dst=3) for k, p in enumerate(packets)]  # a whole run for carol
    items = list(packets)
    if kind == "keepalive_last":
        items = [inner(v6_, size, k) for k in range(count)] + [None]
    elif kind == "keepalive_mid":
        items.insert(min(j, count - 1), None)
    datagrams = [bytearray(d) for d in seal_items(sender, items)]
    if kind == "skip":
        if len(datagrams) < 3:
            datagrams.append(bytearray(seal_items(sender, [inner(v6_, last, 78)])[0]))
        del datagrams[max(1, min(j, len(datagrams) - 2))]  # s skips one step in the middle
    stride = size + OVER
    if kind == "auth":
        datagrams[j][wire.HEADER_SIZE + data.draw(st.integers(0, len(datagrams[j]) - wire.HEADER_SIZE - 1))] ^= 0x40
    elif kind == "header":
        datagrams[j][data.draw(st.integers(0, wire.HEADER_SIZE - 1), "at")] ^= 1 << data.draw(st.integers(0, 7))
    more_auth = {k for k in more_auth if k < len(datagrams)}
    for k in more_auth:
        datagrams[k][-1] ^= 0x01  # the tag
    run = as_run(datagrams, stride)
    if kind == "replay":
        pair.feed(run, stride, ALICE, now)
    elif kind == "overlap":
        pair.feed(as_run(datagrams[:j + 1], stride), stride, ALICE, now)
    source = ("192.0.2.9", 4242) if kind == "roam" else ALICE
    got, _ = pair.feed(run, stride, source, now + 1.0)
    r = pair.last_run
    event(f"{kind}: {'fallback' if r is None else 'all' if r.views is None else 'some'}")
    if kind in ("replay", "overlap"):
        seen = range(len(datagrams) if kind == "replay" else j + 1)
        if any(k not in more_auth for k in seen):  # the window moved past the run's first n
            assert r is None
    elif kind in ("header", "skip", "keepalive_last", "keepalive_mid"):
        assert r is None
    else:
        assert r is not None
        if more_auth or kind in ("auth", "inner_source", "inner_length", "inner_dest", "copied"):
            assert r.views is not None
        elif kind != "inner_family":
            assert r.views is None and got == packets
    if kind in ("clean", "roam", "inner_family") and not more_auth:
        assert got == packets
    if kind in ("inner_dest", "copied"):
        assert pair.a.drops[C.NOT_FOR_ME] >= 1 and all(inner_for_bob(p, v6_) for p in got)
    if kind == "copied":  # nothing accepted: alice's endpoint, last_seen and counters did not move
        peer = pair.a.peer("alice")
        assert got == [] and (peer.endpoint, peer.last_seen, peer.rx_packets) == (ALICE, None if not warm
                                                                               else now, 0 if not warm else 3)
    # a forged n was not marked: the genuine datagrams still go through afterwards
    if more_auth and kind in ("clean", "roam"):
        genuine = seal_items(build("alice"), ([inner(v6_, 60, k) for k in range(3)] if warm else []) + packets)
        genuine = genuine[-count:]
        for k in sorted(more_auth):
            if k < count:
                got, _ = pair.feed(genuine[k], len(genuine[k]), ALICE, now + 2.0)
                assert got == [packets[k]]


def test_forged_datagram_in_the_middle_of_a_run():
    sender, pair = build("alice"), Pair()
    packets = [inner(False, 300, k) for k in range(6)]
    datagrams = [bytearray(d) for d in seal_items(sender, packets)]
    genuine = bytes(datagrams[2])
    datagrams[2][100] ^= 0x10
    got, _ = pair.feed(as_run(datagrams, 328), 328, ALICE, 1.0)
    r = pair.last_run
    assert r is not None and r.views is not None and r.accepted == 5
    assert got == packets[:2] + packets[3:]
    assert pair.a.drops[C.AUTH] == 1 and pair.a.drops.total() == 1
    peer = pair.a.peer("alice")
    assert (peer.rx_packets, peer.rx_bytes, peer.last_seen) == (5, 5 * 300, 1.0)
    state = pair.a._keyring.current
    window = state.receivers[0].window
    assert window.top == 5 and window.check(2) and not window.check(1) and not window.check(3)
    got, _ = pair.feed(genuine, len(genuine), ALICE, 2.0)  # the real packet with that n: still accepted
    assert got == [packets[2]] and peer.rx_packets == 6 and not window.check(2)


def test_all_forged_run_moves_nothing_but_the_auth_counter():
    sender, pair = build("alice"), Pair()
    packets = [inner(True, 200, k) for k in range(4)]
    datagrams = [bytearray(d) for d in seal_items(sender, packets)]
    for d in datagrams:
        d[-3] ^= 0xFF
    got, _ = pair.feed(as_run(datagrams, 228), 228, ("192.0.2.66", 1), 1.0)
    assert got == [] and pair.last_run is not None and pair.last_run.accepted == 0
    peer = pair.a.peer("alice")
    assert pair.a.drops[C.AUTH] == 4 and peer.endpoint == ALICE and peer.last_seen is None
    assert pair.a._keyring.current.receivers[0].window.top == -1
    got, _ = pair.feed(as_run(seal_items(build("alice"), packets), 228), 228, ALICE, 2.0)
    assert got == packets and pair.last_run is not None and pair.last_run.views is None


def test_run_opener_refuses_suite_2_short_runs_and_own_index():
    sender, pair = build("alice", suite=2), Pair(suite=2)
    run = as_run(seal_items(sender, [inner(False, 100, k) for k in range(3)]), 128)
    got, _ = pair.feed(run, 128, ALICE, 1.0)
    assert pair.last_run is None and len(got) == 3
    # a datagram too short for an inner packet at the end, a single datagram
    sender, pair = build("alice"), Pair()
    datagrams = seal_items(sender, [inner(False, 100, 0), inner(False, 100, 1)])
    pair.feed(as_run(datagrams, 128) + bytes(10), 128, ALICE, 1.0)
    assert pair.last_run is None and pair.a.drops[C.SHORT] == 1
    assert pair.opener.open(pair.a, 128, 128, ALICE, 1.0) is None
    # bob's own index: refused, then dropped by reason by the batch path
    own = build("bob")
    run = as_run(seal_items(own, [inner(False, 100, 0, src=2)] * 3, route=ipv4(v4(2), v4(1))), 128)
    pair.feed(run, 128, ALICE, 1.0)
    assert pair.last_run is None and pair.a.drops[C.OWN_INDEX] == 3


def test_one_opener_takes_runs_of_growing_length():
    sender, pair = build("alice"), Pair()
    for count in (2, 3, 5, 9):
        packets = [inner(False, 100, count + k) for k in range(count)]
        got, _ = pair.feed(as_run(seal_items(sender, packets), 128), 128, ALICE, 1.0)
        assert got == packets
        assert pair.last_run is not None and pair.last_run.views is None, count


def test_one_opener_across_strides_and_shrinking_runs():
    sender, pair = build("alice"), Pair()
    for count, size, last in ((9, 100, 100), (3, 100, 50), (4, 1400, 1400), (2, 60, 20), (3, 1400, 700)):
        packets = [inner(False, size, count + k) for k in range(count - 1)] + [inner(False, last, 1)]
        got, _ = pair.feed(as_run(seal_items(sender, packets), size + OVER), size + OVER, ALICE, 1.0)
        assert got == packets
        assert pair.last_run is not None and pair.last_run.views is None
