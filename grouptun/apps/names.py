"""Member names: the DNS answers of one group, sans-IO (the sockets are in :mod:`grouptun.apps.names_server`).

Every member answers DNS for its group's names on its tunnel addresses:
``b.lan.grouptun`` is member ``b`` of the group whose names live under
``lan.grouptun`` (``[names] domain``, default ``<group>.grouptun``). The
names and addresses come from the signed archive only (:meth:`Zone.from_archive`);
nothing here resolves anything else.

:func:`answer` turns one query (wire bytes) into one response (wire bytes),
or None when the query is dropped. The wire format is dnspython's; this
module decides only what to answer:

- a member's name: its overlay addresses as A and AAAA (authoritative, TTL
  :data:`TTL`); another type, or the domain itself: NOERROR without answers
  (the name exists), with the zone's SOA for negative caching;
- any other name under the domain: NXDOMAIN (with the SOA);
- a name outside the domain, a class other than IN: REFUSED (we are no
  recursive resolver); an opcode other than QUERY: NOTIMP;
- a message that does not parse, or has other than one question: FORMERR
  when its 12-byte header can be read, else dropped; a response (QR set),
  a datagram over :data:`MAX_QUERY` bytes: dropped (never answer an answer).

Every outcome is counted (:class:`NameCounters`). Before parsing, the shell
asks two token buckets: :class:`ClientBudgets`, one bucket per source
address (so one flooding client cannot use up the others' share), then one
:class:`QueryBudget` for all clients together (so many clients at once still
cost the event loop, which the data path shares, a bounded amount of work
per second). Queries beyond either are dropped, unanswered (an answer would
amplify a spoofed flood), and counted apart: ``client_limited``,
``rate_limited``. Limits: no zone transfers, no DNSSEC,
no wildcard names; names are matched case-insensitively (RFC 4343).
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from dataclasses import dataclass, field

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

TTL = 30  # seconds: archives change addresses rarely, but a removed member should vanish soon
MAX_QUERY = 1232  # bytes: the EDNS payload size of DNS flag day 2020; a query is a few dozen
DEFAULT_PAYLOAD = 512  # RFC 1035 UDP size without EDNS
HEADER = 12
MAX_CLIENTS = 4096  # per-client buckets remembered; about 100 bytes each
_SOA_TEXT = "ns.{domain} hostmaster.{domain} {serial} 3600 600 86400 {ttl}"


@dataclass
class NameCounters:
    """Outcomes by kind, for status and metrics (every query lands in exactly one)."""

    answered: int = 0      # NOERROR (with or without records)
    nxdomain: int = 0
    refused: int = 0
    notimp: int = 0
    formerr: int = 0       # malformed but with a readable header: answered FORMERR
    dropped: int = 0       # malformed without a header, oversized, or a response
    client_limited: int = 0  # over its source address's bucket (ClientBudgets): dropped before parsing
    rate_limited: int = 0  # over the QueryBudget of all clients: dropped before parsing
    truncated: int = 0     # answered with TC set (did not fit the client's UDP size)

    def snapshot(self) -> dict[str, int]:
        return dict(vars(self))


@dataclass(frozen=True)
class Zone:
    """One group's names: domain, member name -> its addresses, and a serial (the archive version)."""

    domain: dns.name.Name
    addresses: dict[dns.name.Name, tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...]] = field(
        default_factory=dict)
    serial: int = 0

    @classmethod
    def from_archive(cls, archive, domain: str) -> "Zone":
        """The names of ``archive`` (a verified :class:`grouptun.core.archive.Archive`) under ``domain``.

        A member whose name is no DNS label (the provider allows ``.``) gets none.
        """
        origin = dns.name.from_text(domain)
        table = {}
        for member in archive.members:
            if "." in member.name:
                continue
            try:
                name = dns.name.Name((member.name.encode("ascii"),)).concatenate(origin)
            except (dns.exception.DNSException, UnicodeError):
                continue
            table[name] = tuple(ipaddress.ip_interface(a).ip for a in member.addresses)
        return cls(origin, table, archive.version % 2**32)


class QueryBudget:
    """Token bucket: ``rate`` queries per second, up to ``burst`` at once; the caller passes the time."""

    __slots__ = ("rate", "burst", "_tokens", "_at")

    def __init__(self, rate: float, burst: int) -> None:
        if not rate > 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.rate, self.burst = float(rate), float(burst)
        self._tokens, self._at = float(burst), None

    def take(self, now: float) -> bool:
        if self._at is not None:
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


class ClientBudgets:
    """One :class:`QueryBudget` per source address, at most ``max_clients`` of them.

    The table is bounded: a new source beyond ``max_clients`` evicts the one heard from
    least recently (which starts again with a full burst when it returns). Sending from
    more addresses than that to refill buckets is possible only for a member with many
    source addresses (approved LAN prefixes); the shared :class:`QueryBudget` still caps
    the total. ``evicted`` counts evictions (a table that churns is too small or attacked).
    """

    __slots__ = ("rate", "burst", "max_clients", "evicted", "_buckets")

    def __init__(self, rate: float, burst: int, max_clients: int = MAX_CLIENTS) -> None:
        QueryBudget(rate, burst)  # the same validation
        if max_clients < 1:
            raise ValueError("max_clients must be >= 1")
        self.rate, self.burst, self.max_clients, self.evicted = rate, burst, max_clients, 0
        self._buckets: OrderedDict[str, QueryBudget] = OrderedDict()

    def take(self, source: str, now: float) -> bool:
        bucket = self._buckets.pop(source, None)
        if bucket is None:
            bucket = QueryBudget(self.rate, self.burst)
            if len(self._buckets) >= self.max_clients:
                self._buckets.popitem(last=False)
                self.evicted += 1
        self._buckets[source] = bucket  # most recently heard from: last
        return bucket.take(now)

    def __len__(self) -> int:
        return len(self._buckets)


def answer(query: bytes, zone: Zone, counters: NameCounters, max_size: int | None = None) -> bytes | None:
    """The response to ``query`` from ``zone``, or None to drop it; counted in ``counters``.

    ``max_size``: the largest response the transport carries (None: UDP, the client's EDNS
    payload size or 512; TCP passes 65535).
    """
    if len(query) > MAX_QUERY or len(query) < HEADER:
        counters.dropped += 1
        return None
    try:
        message = dns.message.from_wire(query)
    except Exception:  # dnspython on hostile bytes: any failure means the query is malformed
        return _formerr(query, counters)
    if message.flags & dns.flags.QR:
        counters.dropped += 1
        return None
    response = dns.message.make_response(message)
    response.flags |= dns.flags.AA
    response.flags &= ~dns.flags.RA
    if message.opcode() != dns.opcode.QUERY:
        return _finish(response, dns.rcode.NOTIMP, counters, max_size)
    if len(message.question) != 1:
        return _formerr(query, counters)
    question = message.question[0]
    if question.rdclass != dns.rdataclass.IN or not question.name.is_subdomain(zone.domain):
        return _finish(response, dns.rcode.REFUSED, counters, max_size)
    addresses = zone.addresses.get(question.name)
    if addresses is None and question.name != zone.domain:
        response.authority.append(_soa(zone))
        return _finish(response, dns.rcode.NXDOMAIN, counters, max_size)
    wanted = {dns.rdatatype.A: 4, dns.rdatatype.AAAA: 6, dns.rdatatype.ANY: None}.get(question.rdtype, 0)
    found = [a for a in addresses or () if wanted is None or a.version == wanted]
    for version, rdtype in ((4, "A"), (6, "AAAA")):
        texts = [str(a) for a in found if a.version == version]
        if texts:
            response.answer.append(dns.rrset.from_text_list(question.name, TTL, "IN", rdtype, texts))
    if not response.answer:
        response.authority.append(_soa(zone))
    return _finish(response, dns.rcode.NOERROR, counters, max_size)


def _soa(zone: Zone) -> dns.rrset.RRset:
    text = _SOA_TEXT.format(domain=zone.domain.to_text(), serial=zone.serial, ttl=TTL)
    return dns.rrset.from_text(zone.domain, TTL, "IN", "SOA", text)


_COUNTED = {dns.rcode.NOERROR: "answered", dns.rcode.NXDOMAIN: "nxdomain", dns.rcode.REFUSED: "refused",
            dns.rcode.NOTIMP: "notimp"}


def _finish(response: dns.message.Message, rcode: dns.rcode.Rcode, counters: NameCounters,
            max_size: int | None) -> bytes:
    response.set_rcode(rcode)
    name = _COUNTED[rcode]
    setattr(counters, name, getattr(counters, name) + 1)
    limit = max_size or max(DEFAULT_PAYLOAD, response.payload if response.edns >= 0 else 0)
    try:
        return response.to_wire(max_size=limit)
    except dns.exception.TooBig:
        counters.truncated += 1
        response.answer.clear()
        response.authority.clear()
        response.flags |= dns.flags.TC
        return response.to_wire(max_size=limit)


def _formerr(query: bytes, counters: NameCounters) -> bytes | None:
    """FORMERR echoing the query's id, when it claims to be a query; else dropped."""
    if query[2] & 0x80:  # QR: an unparseable response, never answered
        counters.dropped += 1
        return None
    reply = dns.message.Message(id=int.from_bytes(query[:2], "big"))
    reply.flags = dns.flags.QR
    reply.set_rcode(dns.rcode.FORMERR)
    counters.formerr += 1
    return reply.to_wire()
