"""Fuzz target ``receive``: random runs of datagrams through every receive path of the core.

The receiver is alice, holding epoch 1 (suite 1, AES-256-GCM) and epoch 2 (suite 2) of the
builders' three-member group; bob and carol seal real datagrams to her (:data:`AUTHENTIC`), and
the seeds are runs of those, so mutations start past the header, in authentication, the replay
window and the inner-packet checks. Each input is fresh state (a new Session, ~1 ms).

Input: byte 0 picks the path, bytes 1-2 a segment size, the rest the datagrams:

- 0: ``Session.on_datagram`` per datagram (the rest split by 2-byte big-endian length prefixes);
- 1 (and 2, kept so that old seeds mean the same): ``Session.open_run`` on the rest, cut every
  ``seg`` bytes (one UDP GRO receive).
"""

from __future__ import annotations

import struct

from core.builders import ipv4, ipv6, material, v4, v6
from grouptun.core import run
from grouptun.core.session import Session
from grouptun.core.wire import BYTE0_DATA, BYTE0_KEEPALIVE

INVARIANT = (
    "No receive path raises. Every datagram is either delivered, or an authentic keepalive, or "
    "counted as exactly one drop. Only datagrams byte-identical to ones bob or carol sealed are "
    "delivered, each as the plaintext that was sealed. A run holding no such datagram changes "
    "nothing but the drop counters (and the documented fetch request): no replay window, "
    "endpoint, last-seen time, rx counter or rekey request moves.")

NOW = 10.0  # past epoch 2's switch_delay, inside epoch 1's grace
SOURCE = ("192.0.2.66", 4242)  # where the fuzzed datagrams claim to come from (not a member's endpoint)
MODES = 3


def receiver() -> Session:
    alice = Session("alice")
    alice.install_epoch(material("alice", 1, suite=1), 0.0)
    alice.install_epoch(material("alice", 2, suite=2), 0.0)
    return alice


def _senders() -> dict[bytes, bytes | None]:
    """Datagrams bob and carol seal to alice -> their plaintext (None for a keepalive)."""
    out: dict[bytes, bytes | None] = {}
    for epoch, suite in ((1, 1), (2, 2)):
        for name, number in (("bob", 2), ("carol", 3)):
            sender = Session(name)
            sender.install_epoch(material(name, epoch, suite=suite), 0.0)
            packets = [ipv4(v4(number), v4(1), b"x" * 40) for _ in range(4)]
            packets += [ipv6(v6(number), v6(1), b"six"), ipv4(v4(number), v4(255), b"bcast")]
            for packet in packets:
                for _dest, datagram in sender.on_tun_packet(packet, 0.0)[:1]:
                    out[datagram] = packet
            state = sender.sending_epoch(0.0)
            out[_sealed(sender, state, BYTE0_KEEPALIVE, b"")] = None  # a real keepalive (of the wrong body)
            # authentic, but the inner packet claims alice's source: the inner check must drop it
            out[_sealed(sender, state, BYTE0_DATA, ipv4(v4(1), v4(1), b"spoofed"))] = b""
    return out


def _sealed(sender: Session, state, byte0: int, payload: bytes) -> bytes:
    """``payload`` sealed as a run of one by ``sender``, of any type and body."""
    size = len(payload)
    out = bytearray(size + 28 + 15)
    assert run.seal(sender, state, byte0, payload, 0, size, 1, size, size, out) == 1
    return bytes(out[:size + 28])


AUTHENTIC = _senders()


def split_prefixed(body: bytes) -> list[bytes]:
    out, at = [], 0
    while at + 2 <= len(body) and len(out) < 64:
        size = struct.unpack_from(">H", body, at)[0]
        out.append(body[at + 2:at + 2 + size])
        at += 2 + size
    return out


def chunks(body: bytes, seg: int) -> list[bytes]:
    seg = seg if seg > 0 else max(len(body), 1)
    return [body[i:i + seg] for i in range(0, len(body), seg)]


def snapshot(session: Session) -> tuple:
    """Everything but the drop counters (and per-epoch auth failure counts) that receiving may change."""
    status = session.status(NOW)
    epochs = [{k: v for k, v in e.items() if k != "auth_failures"} for e in status["epochs"]]
    windows = []
    for epoch in (1, 2):
        state = session.epoch_for_wire(epoch, NOW)
        for index, rx in sorted(state.receivers.items()):
            if rx.window.top != -1:
                windows.append((epoch, index, rx.window.top, bytes(rx.window._ring)))  # noqa: SLF001
    requests = [r for r in status["requests"] if r != "fetch"]
    return epochs, status["members"], requests, windows


def check_delivered(delivered: list[bytes], datagrams: list[bytes]) -> None:
    plain = [AUTHENTIC[d] for d in datagrams if AUTHENTIC.get(d)]
    for inner in delivered:
        assert inner in plain, f"delivered an inner packet nobody sealed: {inner[:40].hex()}"


def test_one_input(data: bytes) -> None:
    if len(data) < 3:
        return
    mode, seg, body = data[0] % MODES, struct.unpack_from(">H", data, 1)[0], data[3:]
    alice = receiver()
    before, drops_before = snapshot(alice), sum(alice.drops.values())
    if mode == 0:
        datagrams = split_prefixed(body)
        delivered = []
        for datagram in datagrams:
            counted = sum(alice.drops.values())
            inner = alice.on_datagram(datagram, SOURCE, NOW)
            dropped = sum(alice.drops.values()) - counted
            if inner is not None:
                assert dropped == 0, "delivered and counted as a drop"
                delivered.append(inner)
            else:
                keepalive = dropped == 0 and AUTHENTIC.get(datagram, b"") is None
                assert dropped == 1 or keepalive, f"{dropped} drops counted for one datagram"
    else:
        datagrams = chunks(body, seg)
        if not body:
            datagrams = [b""]  # open_run counts an empty receive as one short datagram
        out = memoryview(bytearray(len(body) + 64))
        delivered = [bytes(v) for v in alice.open_run(memoryview(bytearray(body)), seg, SOURCE, NOW, out).packets(out)]
        keepalives = sum(1 for d in datagrams if d in AUTHENTIC and AUTHENTIC[d] is None)
        dropped = sum(alice.drops.values()) - drops_before
        assert dropped + len(delivered) <= len(datagrams), "more outcomes than datagrams"
        assert dropped + len(delivered) >= len(datagrams) - keepalives, "a datagram went uncounted"
    check_delivered(delivered, datagrams)
    if not any(d in AUTHENTIC for d in datagrams):
        assert snapshot(alice) == before, "unauthenticated input changed the receiver's state"


def _prefixed(datagrams) -> bytes:
    return b"".join(struct.pack(">H", len(d)) + d for d in datagrams)


def seeds() -> dict[str, bytes]:
    sealed = list(AUTHENTIC)
    data = [d for d in sealed if AUTHENTIC[d]]
    assert len({len(d) for d in sealed[:4]}) == 1
    same = sealed[:4]  # bob's four equal-size IPv4 packets of epoch 1 (suite 1): one GRO run
    out = {"single-each": bytes([0, 0, 0]) + _prefixed(sealed),
           "replayed": bytes([0, 0, 0]) + _prefixed(sealed[:2] * 2),
           "junk": bytes([0, 0, 0]) + _prefixed([b"", b"\x11" * 27, b"\x21" + sealed[0][1:],
                                                 sealed[0][:1] + b"\x80" + sealed[0][2:]])}
    run = b"".join(same)
    out["gro-batch"] = bytes([1]) + struct.pack(">H", len(same[0])) + run
    out["gro-run"] = bytes([2]) + struct.pack(">H", len(same[0])) + run
    out["gro-run-short-last"] = bytes([2]) + struct.pack(">H", len(same[0])) + run + data[-1]
    return out
