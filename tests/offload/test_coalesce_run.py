"""Coalescer.add_run (a decrypted run merged at once) against add() one by one + flush(), byte for byte."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from grouptun.data.offload import coalesce
from grouptun.data.offload.coalesce import Coalescer
from grouptun.data.offload.vnet import VNET_HDR_LEN, ZERO_HDR
from offload_pktgen import ip_header, tcp_header, udp_packet, with_l4_checksum

pytestmark = pytest.mark.skipif(coalesce.np is None, reason="numpy missing")

ACK, PSH, FIN = 0x10, 0x08, 0x01
TS = b"\x01\x01\x08\x0a" + bytes(range(8))  # NOP NOP timestamps
GARBAGE = 0xA5


def segment(v6: bool, seq: int, payload: bytes, flags: int = ACK, options: bytes = b"", ack: int = 777,
            ident: int = 0x1234, ttl: int = 64, tos: int = 0, ip_options: bytes = b"", sport: int = 40000) -> bytes:
    t = tcp_header(seq & 0xFFFFFFFF, flags, options, ack, sport)
    ip = ip_header(v6, 6, len(t) + len(payload), ident & 0xFFFF, tos, ttl, options=ip_options)
    return with_l4_checksum(ip + t + payload)


def tcp_run(v6: bool, count: int, mss: int, last: int, *, seq: int = 1000, options: bytes = b"", psh_last=False,
            ident: int = 0x1234, **kw) -> list[bytes]:
    """``count`` consecutive segments of one flow (IPv4 ids stepping as GSO makes them), the last ``last`` long."""
    out, at = [], seq
    for j in range(count):
        size = mss if j < count - 1 else last
        flags = ACK | PSH if psh_last and j == count - 1 else ACK
        out.append(segment(v6, at, bytes((j * 7 + k) % 256 for k in range(size)), flags, options,
                           ident=ident + j, **kw))
        at += size
    return out


def layout(packets: list[bytes], stride: int) -> bytearray:
    """The receive buffer as the run opener leaves it: packet j at j*stride, garbage in between."""
    buf = bytearray([GARBAGE]) * (stride * len(packets) + 64)
    for j, p in enumerate(packets):
        buf[j * stride:j * stride + len(p)] = p
    return buf


def one_by_one(packets, prior=(), **kw) -> tuple[list[bytes], int]:
    kw.setdefault("verify_checksums", False)  # as the data path runs it; add_run leaves verifying to add()
    c = Coalescer(**kw)
    for p in [*prior, *packets]:
        c.add(p)
    merged = c.merged
    return [bytes(w) for w in c.flush()], merged


def as_run(packets, stride: int, prior=(), **kw) -> tuple[bool, list[bytes], int]:
    kw.setdefault("verify_checksums", False)
    c = Coalescer(**kw)
    for p in prior:
        c.add(p)
    buf = layout(packets, stride)
    ok = c.add_run(buf, len(packets), stride, len(packets[0]), len(packets[-1]))
    merged = c.merged
    return ok, [bytes(w) for w in c.flush()], merged


@settings(max_examples=120, deadline=None, database=None)
@given(v6=st.booleans(), count=st.integers(2, 48), mss=st.integers(1, 1400), data=st.data(),
       seq=st.one_of(st.integers(0, 2**32 - 1), st.integers(2**32 - 3000, 2**32 - 1)),
       options=st.sampled_from([b"", TS]), psh_last=st.booleans(), verify=st.booleans(),
       ident=st.integers(0, 0xFFFF), pad=st.integers(0, 64), max_len=st.sampled_from([65535, 65535, 9000]))
def test_mergeable_run_equals_add_one_by_one(v6, count, mss, data, seq, options, psh_last, verify, ident, pad,
                                             max_len):
    last = data.draw(st.integers(1, mss), "last")
    packets = tcp_run(v6, count, mss, last, seq=seq, options=options, psh_last=psh_last, ident=ident)
    kw = dict(verify_checksums=verify, max_len=max_len)
    want, want_merged = one_by_one(packets, **kw)
    ok, got, merged = as_run(packets, len(packets[0]) + pad, **kw)
    hl = (40 if v6 else 20) + 20 + len(options)
    per = (max_len - hl) // mss  # segments per write, for add() as for add_run
    # add() merges all it may (a shorter last one may still fit after `per` full ones)
    assert len(want) in (-(-count // per), -(-(count - 1) // per))
    if per >= 2 and not verify:
        assert ok and got == want
    else:  # nothing to merge, or checksums to verify (add() does that): the caller adds them one by one
        assert not ok and got == [] and merged == 0


@settings(max_examples=60, deadline=None, database=None)
@given(v6=st.booleans(), count=st.integers(2, 40), mss=st.integers(1, 1400), data=st.data(),
       ident=st.integers(0, 0xFFFF), pad=st.integers(0, 32), verify=st.booleans())
def test_mergeable_udp_run_equals_add_one_by_one(v6, count, mss, data, ident, pad, verify):
    last = data.draw(st.integers(1, mss), "last")
    packets = [udp_packet(v6, bytes((j + k) % 256 for k in range(mss if j < count - 1 else last)),
                          ident=(ident + j) & 0xFFFF) for j in range(count)]
    want, _ = one_by_one(packets, udp=True, verify_checksums=verify)
    ok, got, _ = as_run(packets, len(packets[0]) + pad, udp=True, verify_checksums=verify)
    per = (65535 - (48 if v6 else 28)) // mss
    assert len(want) == -(-count // per)
    assert (ok and got == want) if not verify else (not ok and got == [])
    # without udp=True the same run is refused and left to add(), which passes each through
    ok, got, _ = as_run(packets, len(packets[0]) + pad)
    assert not ok and got == []


def test_merged_write_is_a_gso_super_packet():
    packets = tcp_run(False, 4, 100, 30, psh_last=True)
    ok, (write,), _ = as_run(packets, 148)
    assert ok and write[:VNET_HDR_LEN] != ZERO_HDR
    body = write[VNET_HDR_LEN:]
    assert len(body) == 40 + 330 and body[20 + 13] == ACK | PSH
    assert body[40:] == b"".join(p[40:] for p in packets)


# --- runs add_run must refuse, leaving the coalescer as it was -------------------------------------

def base(v6=False, **kw):
    return tcp_run(v6, 5, 200, 120, **kw)


def replaced(packets, j, **kw):
    """``packets`` with segment j rebuilt (same payload and sequence number) with other fields."""
    p = packets[j]
    v6 = p[0] >> 4 == 6
    l4 = 40 if v6 else (p[0] & 15) * 4
    hl = l4 + (p[l4 + 12] >> 4) * 4
    fields = dict(seq=int.from_bytes(p[l4 + 4:l4 + 8], "big"), payload=p[hl:], flags=p[l4 + 13], options=p[l4 + 20:hl],
                  ack=int.from_bytes(p[l4 + 8:l4 + 12], "big"),
                  ident=0 if v6 else int.from_bytes(p[4:6], "big"))
    fields.update(kw)
    out = list(packets)
    out[j] = segment(v6, **fields)
    return out


def with_length(packets, j, delta):
    """Segment j with its IP length field off by ``delta`` (checksums left as they were)."""
    p = bytearray(packets[j])
    at = 4 if p[0] >> 4 == 6 else 2
    p[at:at + 2] = (int.from_bytes(p[at:at + 2], "big") + delta).to_bytes(2, "big")
    return [*packets[:j], bytes(p), *packets[j + 1:]]


def flow_label(packets, j):
    p = bytearray(packets[j])
    p[3] ^= 0x01
    return [*packets[:j], bytes(p), *packets[j + 1:]]


def fragment(packets, j, value):
    p = bytearray(packets[j])
    p[6:8] = value.to_bytes(2, "big")
    return [*packets[:j], bytes(p), *packets[j + 1:]]


REFUSED = {
    "seq gap": replaced(base(), 2, seq=1000 + 2 * 200 + 1),
    "seq gap v6": replaced(base(True), 3, seq=1000 + 3 * 200 - 1),
    "psh in the middle": replaced(base(), 2, flags=ACK | PSH),
    "psh on the first": replaced(base(True), 0, flags=ACK | PSH),
    "fin on the last": replaced(base(), 4, flags=ACK | FIN),
    "syn in the middle": replaced(base(), 1, flags=ACK | 0x02),
    "ack number differs": replaced(base(), 3, ack=778),
    "ack number differs on the last": replaced(base(True), 4, ack=778),
    "options differ": replaced(base(options=TS), 2, options=TS[:-1] + b"\x09"),
    "options only on one": replaced(base(), 1, options=TS, payload=bytes(200 - 12)),
    "ttl differs": replaced(base(), 2, ttl=63),
    "hop limit differs": replaced(base(True), 1, ttl=1),
    "tos differs": replaced(base(), 3, tos=4),
    "traffic class differs": replaced(base(True), 2, tos=0x20),
    "other ports in the middle": replaced(base(), 2, sport=40001),
    "ipv4 with ip options": tcp_run(False, 5, 200, 120, ip_options=b"\x01\x01\x01\x00"),
    "pure acks": tcp_run(False, 4, 0, 0),
    "pure acks v6": tcp_run(True, 3, 0, 0),
    "udp": [udp_packet(False, bytes(100), ident=k) for k in range(4)],
    "udp v6": [udp_packet(True, bytes(100)) for _ in range(3)],
    "last longer": tcp_run(False, 4, 100, 100)[:3] + [segment(False, 1300, bytes(120))],
    "single segment": base()[:1],
    "middle length field short": with_length(base(), 2, -1),
    "last length field long": with_length(base(True), 4, 1),
    "flow label differs": flow_label(base(True), 2),
    "more fragments on the first": fragment(base(), 0, 0x6000),
    "df cleared in the middle": fragment(base(), 2, 0x0000),
}


def prior_packets():
    """An open item of another flow, a single packet, and an open item of the run's own flow, ahead of it."""
    other = tcp_run(False, 2, 300, 300, seq=50, sport=41000)
    return [*other, udp_packet(False, b"x" * 10), segment(False, 1000 - 200, bytes(200))]


# Runs add_run must leave to add(): not plain segments of one shape with payload.
MUST_REFUSE = {"fin on the last", "syn in the middle", "options only on one",
               "ipv4 with ip options", "pure acks", "pure acks v6", "udp", "udp v6", "last longer",
               "single segment", "more fragments on the first", "middle length field short",
               "last length field long", "flow label differs", "df cleared in the middle"}
# Not one super-packet (another flow among them, too): cut where add() starts a new item.
MUST_SPLIT = {"seq gap", "seq gap v6", "psh in the middle", "psh on the first", "ack number differs",
              "other ports in the middle",
              "ack number differs on the last", "options differ", "ttl differs", "hop limit differs",
              "tos differs"}


@pytest.mark.parametrize("name", sorted(REFUSED))
@pytest.mark.parametrize("with_prior", [False, True])
def test_irregular_run_refused_unchanged_or_equal_to_add(name, with_prior):
    """add_run either refuses and changes nothing, or writes exactly what add() one by one writes."""
    packets = REFUSED[name]
    prior = prior_packets() if with_prior else []
    stride = max(map(len, packets)) + 8
    ok, got, merged = as_run(packets, stride, prior)
    if ok:  # the run starts afresh after what came before it (an open item of its flow is closed)
        assert name not in MUST_REFUSE
        before, before_merged = one_by_one([], prior)
        alone, alone_merged = one_by_one(packets)
        assert (got, merged) == (before + alone, before_merged + alone_merged)
        return
    assert name not in MUST_SPLIT
    # flush right after the refused call: what the prior packets alone give
    assert (got, merged) == one_by_one([], prior)
    # the caller's fallback (add one by one) then gives exactly what add() alone gives
    c = Coalescer(verify_checksums=False)
    for p in prior:
        c.add(p)
    buf = layout(packets, stride)
    assert not c.add_run(buf, len(packets), stride, len(packets[0]), len(packets[-1]))
    for p in packets:
        c.add(p)
    assert ([bytes(w) for w in c.flush()], c.merged) == one_by_one(packets, prior)


def test_every_irregular_case_is_classified():
    assert MUST_REFUSE | MUST_SPLIT <= set(REFUSED) and not MUST_REFUSE & MUST_SPLIT


def test_last_size_larger_than_size_refused():
    packets = base()
    c = Coalescer(verify_checksums=False)
    assert not c.add_run(layout(packets, 300), 5, 300, len(packets[0]), len(packets[0]) + 1)
    assert c.flush() == [] and c.merged == 0


def test_bad_checksum_not_merged_when_verifying():
    packets = base()
    bad = bytearray(packets[2])
    bad[-1] ^= 0xFF  # payload changed, checksum not
    packets[2] = bytes(bad)
    want, _ = one_by_one(packets, verify_checksums=True)
    assert len(want) > 1  # add() refuses to merge it
    ok, got, _ = as_run(packets, 300, verify_checksums=True)
    assert not ok


def test_merged_counter_when_split_like_add():
    packets = tcp_run(False, 10, 1000, 1000)
    want, want_merged = one_by_one(packets, max_len=3000)
    ok, got, merged = as_run(packets, 1100, max_len=3000)
    assert ok and got == want and len(got) == 5
    assert merged == want_merged == 5


def test_bad_checksum_merged_when_not_verifying_like_add():
    packets = base()
    bad = bytearray(packets[2])
    bad[-1] ^= 0xFF
    packets[2] = bytes(bad)
    ok, got, _ = as_run(packets, 300, verify_checksums=False)
    assert ok and got == one_by_one(packets, verify_checksums=False)[0]


# --- order -------------------------------------------------------------------------------------------

def test_open_item_of_the_same_flow_is_emitted_before_the_run():
    packets = tcp_run(False, 4, 200, 200, seq=1000)
    earlier = segment(False, 1000 - 200, b"e" * 200)  # continues exactly into the run
    ok, got, _ = as_run(packets, 240, [earlier])
    assert ok and len(got) == 2
    assert got[0] == ZERO_HDR + earlier  # alone, unchanged, first
    assert got[1] == one_by_one(packets)[0][0]


def test_open_item_of_the_same_flow_emitted_first_even_when_merged_earlier():
    earlier = tcp_run(True, 3, 200, 200, seq=400)  # merged item, still open, seq ends at 1000
    packets = tcp_run(True, 4, 200, 150, seq=1000)
    ok, got, _ = as_run(packets, 272, earlier)
    assert ok and got == [one_by_one(earlier)[0][0], one_by_one(packets)[0][0]]


def test_run_closes_its_flow_and_other_flows_stay_open():
    run = tcp_run(False, 4, 200, 200, seq=1000)
    b = tcp_run(False, 2, 100, 100, seq=7, sport=41000)
    after = segment(False, 1800, b"z" * 200)  # would continue the run's flow
    c = Coalescer(verify_checksums=False)
    c.add(b[0])
    assert c.add_run(layout(run, 240), 4, 240, 240, 240)
    c.add(b[1])   # joins the other flow's open item, which stays ahead of the run
    c.add(after)  # starts a new item after the run
    got = [bytes(w) for w in c.flush()]
    assert got == [one_by_one(b)[0][0], one_by_one(run)[0][0], ZERO_HDR + after]
    assert c.merged == 3 + 1 and c.flush() == []


@settings(max_examples=40, deadline=None, database=None)
@given(v6=st.booleans(), sizes=st.lists(st.integers(2, 12), min_size=2, max_size=4), mss=st.integers(50, 1400),
       psh=st.booleans(), window_changes=st.booleans())
def test_run_of_several_super_packets_equals_add_one_by_one(v6, sizes, mss, psh, window_changes):
    """Back-to-back GRO receives hold several TSO super-packets of one stream: each with its own TCP
    timestamp and maybe PSH on its last segment. add_run cuts them where add() would."""
    packets, seq = [], 1000
    for k, count in enumerate(sizes):
        options = b"\x01\x01\x08\x0a" + (1000 + k).to_bytes(4, "big") + (77).to_bytes(4, "big")
        part = tcp_run(v6, count, mss, mss, seq=seq, options=options, psh_last=psh)
        if window_changes and k:  # add() ignores the window (it keeps the first's); so must add_run
            part = [bytes(p[:(40 if v6 else 20) + 14]) + bytes([0x10, k]) + bytes(p[(40 if v6 else 20) + 16:])
                    for p in part]
        packets += part
        seq += count * mss
    ok, got, merged = as_run(packets, len(packets[0]) + 4)
    assert ok and (got, merged) == one_by_one(packets)


@settings(max_examples=60, deadline=None, database=None)
@given(v6=st.booleans(), blocks=st.lists(st.tuples(st.integers(0, 2), st.integers(1, 9)), min_size=2, max_size=8),
       mss=st.integers(50, 1400))
def test_run_of_several_flows_delivers_each_flow_in_order(v6, blocks, mss):
    """TCP x4 through a train: a run holds blocks of several streams of one sender (other ports). Each
    part is merged on its own; every stream gets its segments in order, as add() one by one gives them."""
    packets, seqs = [], {}
    for flow, count in blocks:
        seq = seqs.get(flow, 1000 + flow * 10**6)
        packets += tcp_run(v6, count, mss, mss, seq=seq, sport=40000 + flow, ident=seq & 0xFFFF)
        seqs[flow] = seq + count * mss
    ok, got, _ = as_run(packets, len(packets[0]) + 4)
    want, _ = one_by_one(packets)
    assert ok
    assert per_flow(got) == per_flow(want) == per_flow([ZERO_HDR + p for p in packets])


def per_flow(writes: list[bytes]) -> dict:
    """The TCP segments each stream gets from these TUN writes (GRO items cut back), IPv4 ID left out."""
    from tests.daemon.test_dataplane_offload import packets_of
    flows: dict = {}
    for p in packets_of(writes):
        v6 = p[0] >> 4 == 6
        l4 = 40 if v6 else 20
        key = p[l4:l4 + 4]
        flows.setdefault(key, []).append(p if v6 else p[:4] + p[6:10] + p[12:])
    return flows
