"""Kernel offloads for the data path: fewer, larger system calls per byte.

Pure parts (no I/O, tested without root):

- ``checksum``: the internet checksum (RFC 1071), computed by CPython's bigint
  code in C rather than a Python loop over 16-bit words.
- ``vnet``: the ``virtio_net_hdr`` that a TUN opened with ``IFF_VNET_HDR``
  puts in front of every packet (offload metadata: GSO type and size,
  partial-checksum location).
- ``segment``: TSO/USO super-packet (up to 64 KiB, read from the TUN) ->
  MTU-sized IP packets with correct headers and checksums, so that every
  datagram on the wire stays independently verifiable (PROTOCOL.md 5).
  ``fastsplit`` is its vectorised body (numpy, a dependency; ~3.5x less CPU per
  segment); without numpy the same bytes come from a Python loop.
- ``coalesce``: the reverse for the receive side: consecutive in-order TCP
  segments (or equal-sized UDP datagrams) of one flow -> one GRO
  super-packet with a virtio-net header, written to the TUN in one call.

Linux shell (``linux``): TUN open with ``IFF_VNET_HDR``/``IFF_MULTI_QUEUE``
and ``TUNSETOFFLOAD``, UDP sockets with ``UDP_SEGMENT`` (GSO) send and
``UDP_GRO`` receive, and feature probing with clean fallbacks.

``tunruns`` puts these behind the TUN device's contract
(:class:`grouptun.data.devices.TunDevice`): runs of plain packets out, runs of
opened packets in.
"""
