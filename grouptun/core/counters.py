"""Drop counters by reason (PROTOCOL.md 6: dropped, counted, never answered).

Receive side, in the order the session decides them (everything up to
``SEQUENCE``/``OWN_INDEX`` is read from the header alone, before any
cryptographic work; ``REPLAY`` is checked before decryption too)::

    short         datagram shorter than header + tag
    version_type  version not 1, or unknown type
    flags         a flag bit set
    unknown_epoch wire epoch matches no held epoch
    sequence      s < nonce_start, or n > n_max
    own_index     the sender index is our own
    replay        n already seen, or older than the window
    length        keepalive body not 2 bytes, data without room for an IP header
    auth          tag does not verify
    inner         plaintext is not one IPv4/IPv6 packet from the sender's addresses
    not_for_me    authentic, but sealed for another member: the inner destination is
                  none of ours (nor broadcast/multicast), or a keepalive names
                  another index (a copy an outsider redirected to us)

Send side (packets from the TUN that are not sent)::

    tx_invalid      not an IPv4/IPv6 packet, or shorter than its header
    tx_source       source address is not one of our own overlay addresses
    tx_no_route     destination is no member's overlay address
    tx_no_epoch     no epoch to send on yet
    tx_no_endpoint  the member's UDP endpoint is not known yet
    tx_exhausted    our sequence reached n_max in this epoch

Counters are plain ints in a dict (the hot path does ``drops[R] += 1``);
they start at 0 for every reason so ``status`` always lists all of them.
"""

from __future__ import annotations

SHORT = "short"
VERSION_TYPE = "version_type"
FLAGS = "flags"
UNKNOWN_EPOCH = "unknown_epoch"
SEQUENCE = "sequence"
OWN_INDEX = "own_index"
REPLAY = "replay"
LENGTH = "length"
AUTH = "auth"
INNER = "inner"
NOT_FOR_ME = "not_for_me"

TX_INVALID = "tx_invalid"
TX_SOURCE = "tx_source"
TX_NO_ROUTE = "tx_no_route"
TX_NO_EPOCH = "tx_no_epoch"
TX_NO_ENDPOINT = "tx_no_endpoint"
TX_EXHAUSTED = "tx_exhausted"

RECEIVE_REASONS = (SHORT, VERSION_TYPE, FLAGS, UNKNOWN_EPOCH, SEQUENCE, OWN_INDEX,
                   REPLAY, LENGTH, AUTH, INNER, NOT_FOR_ME)
SEND_REASONS = (TX_INVALID, TX_SOURCE, TX_NO_ROUTE, TX_NO_EPOCH, TX_NO_ENDPOINT, TX_EXHAUSTED)
REASONS = RECEIVE_REASONS + SEND_REASONS


class DropCounters(dict):
    """reason -> count, every reason present from the start."""

    def __init__(self) -> None:
        super().__init__((reason, 0) for reason in REASONS)

    def bump(self, reason: str, count: int = 1) -> None:
        if reason not in self:
            raise KeyError(f"unknown drop reason {reason!r}")
        self[reason] += count

    def total(self) -> int:
        return sum(self.values())

    def snapshot(self) -> dict[str, int]:
        return dict(self)
