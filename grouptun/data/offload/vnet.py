"""The ``virtio_net_hdr`` a TUN with ``IFF_VNET_HDR`` exchanges with us.

Layout (include/uapi/linux/virtio_net.h, 10 bytes, host byte order for a
legacy TUN on a little-endian host, which is what ``TUNSETVNETLE`` would
also choose; big-endian hosts use their native order unless told otherwise)::

    u8 flags; u8 gso_type; u16 hdr_len; u16 gso_size; u16 csum_start; u16 csum_offset

``flags & NEEDS_CSUM``: the transport checksum is partial (pseudo-header
only, not complemented) at ``csum_start + csum_offset`` and someone must
finish it. ``gso_type`` != NONE: the packet is a super-packet to be cut into
``gso_size`` payload pieces. ``hdr_len`` from the kernel is a hint only: it
is recomputed from the packet (wireguard-go does the same).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from grouptun.errors import OffloadError

VNET_HDR_LEN = 10

F_NEEDS_CSUM = 1
F_DATA_VALID = 2

GSO_NONE = 0
GSO_TCPV4 = 1
GSO_UDP = 3  # UFO (fragmenting); never requested by us
GSO_TCPV6 = 4
GSO_UDP_L4 = 5  # USO: one UDP header per segment
GSO_ECN = 0x80

_HDR = struct.Struct("=BBHHHH")
ZERO_HDR = bytes(VNET_HDR_LEN)


@dataclass(frozen=True, slots=True)
class VnetHdr:
    """One decoded virtio-net header. ``gso_type`` keeps the ECN bit."""

    flags: int = 0
    gso_type: int = GSO_NONE
    hdr_len: int = 0
    gso_size: int = 0
    csum_start: int = 0
    csum_offset: int = 0

    @property
    def gso_kind(self) -> int:
        return self.gso_type & ~GSO_ECN

    def encode(self) -> bytes:
        return _HDR.pack(self.flags, self.gso_type, self.hdr_len, self.gso_size, self.csum_start, self.csum_offset)

    def pack_into(self, buf: bytearray | memoryview, offset: int = 0) -> None:
        _HDR.pack_into(buf, offset, self.flags, self.gso_type, self.hdr_len, self.gso_size, self.csum_start, self.csum_offset)


def decode(buf: bytes | bytearray | memoryview, offset: int = 0) -> VnetHdr:
    """Parse the header at ``offset``; OffloadError if it is short or names an unknown GSO type."""
    if len(buf) - offset < VNET_HDR_LEN:
        raise OffloadError(f"virtio-net header needs {VNET_HDR_LEN} bytes, got {max(0, len(buf) - offset)}")
    flags, gso_type, hdr_len, gso_size, csum_start, csum_offset = _HDR.unpack_from(buf, offset)
    if gso_type & ~GSO_ECN not in (GSO_NONE, GSO_TCPV4, GSO_UDP, GSO_TCPV6, GSO_UDP_L4):
        raise OffloadError(f"unknown virtio-net gso_type {gso_type:#x}")
    return VnetHdr(flags, gso_type, hdr_len, gso_size, csum_start, csum_offset)


def pack_fields_into(buf: bytearray | memoryview, offset: int, flags: int, gso_type: int, hdr_len: int,
                     gso_size: int, csum_start: int, csum_offset: int) -> None:
    """Allocation-free encode for the hot path."""
    _HDR.pack_into(buf, offset, flags, gso_type, hdr_len, gso_size, csum_start, csum_offset)


def unpack_fields(buf: bytes | bytearray | memoryview, offset: int = 0) -> tuple[int, int, int, int, int, int]:
    """Allocation-light decode for the hot path (no validation)."""
    return _HDR.unpack_from(buf, offset)
