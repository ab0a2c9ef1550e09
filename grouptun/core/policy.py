"""Access policy: ordered rules over signed member attributes (issue 17 item 6, a grouptun extension).

Grammar (one statement per line; ``;`` also ends a statement, ``#`` starts
a comment to the end of the line; blank statements are ignored)::

    policy    = [declare] *rule default
    rule      = selector "->" selector service action
    selector  = "*" | pair *("," pair)      every pair must hold (grouptun.core.attributes)
    service   = "any" | "icmp" | ("tcp" | "udp") ["/" ports]
    ports     = port | port "-" port         0 <= low < high <= 65535 (destination port)
    action    = "allow" | "deny"
    declare   = "declare" key *("," key)    attribute keys the policy may name before any member has them
    default   = "default" action            exactly once, the last statement

Tokens are separated by whitespace. ``icmp`` means ICMP and ICMPv6; ``tcp``
without ports means every port. Example::

    role=web -> role=db tcp/5432 allow
    default deny

The printed form (``str(policy)``) is canonical: the declare line first
(keys sorted), one rule per line, selector pairs sorted by key, the default
last; ``parse(str(p)) == p`` and a canonical rule prints back to itself.
Errors are :class:`PolicyError` (a ValueError) naming the line and the
statement at fault. At most :data:`MAX_RULES` rules.

Matching: a rule matches a packet when its source selector holds for the
sending member's attributes, its destination selector for the receiving
member's, its service for the packet's protocol and destination port.
The first matching rule decides; none matching, the default does. A reply
to an allowed flow passes (:mod:`grouptun.core.conntrack`), judged again by
the current rules whenever the policy or the members' attributes changed.

Inner packets (:func:`flow_of`): IPv4 with its IHL (a non-first fragment
has no ports); IPv6 follows at most :data:`MAX_EXTENSIONS` hop-by-hop,
routing, destination-options and fragment headers, anything else (AH, ESP,
a longer chain) is the protocol as found, without ports. A packet without
ports (fragment, truncated L4 header) matches only rules that name no port.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping

from grouptun.core import attributes
from grouptun.core.conntrack import Conntrack, Key

MAX_RULES = 256
MAX_TEXT = 64 * 1024
ACTIONS = ("allow", "deny")
PROTOCOLS = {"any": None, "icmp": frozenset({1, 58}), "tcp": frozenset({6}), "udp": frozenset({17})}
PORTED = ("tcp", "udp")
MAX_EXTENSIONS = 4
_V6_EXTENSIONS = {0, 43, 60}  # hop-by-hop, routing, destination options: (length + 1) * 8 bytes
_V6_FRAGMENT = 44


class PolicyError(ValueError):
    """A policy that does not parse; ``line`` (1-based, 0: the whole policy) and ``text`` name the statement."""

    def __init__(self, line: int, text: str, reason: str) -> None:
        self.line, self.text, self.reason = line, text, reason
        where = f"line {line} ({text!r})" if line else "policy"
        super().__init__(f"{where}: {reason}")


Selector = tuple[tuple[str, str], ...]  # () is "*"


@dataclass(frozen=True)
class Rule:
    source: Selector
    destination: Selector
    protocol: str                        # a PROTOCOLS key
    ports: tuple[int, int] | None        # (low, high) destination ports; None: any
    action: str

    def __str__(self) -> str:
        service = self.protocol
        if self.ports is not None:
            low, high = self.ports
            service += f"/{low}" if low == high else f"/{low}-{high}"
        return f"{selector_text(self.source)} -> {selector_text(self.destination)} {service} {self.action}"

    def keys(self) -> set[str]:
        return {k for k, _ in self.source + self.destination}


@dataclass(frozen=True)
class Policy:
    rules: tuple[Rule, ...]
    default: str
    declared: tuple[str, ...] = ()       # sorted

    def __str__(self) -> str:
        lines = [f"declare {','.join(self.declared)}"] if self.declared else []
        return "\n".join(lines + [str(r) for r in self.rules] + [f"default {self.default}"])

    def keys(self) -> set[str]:
        """The attribute keys the rules name."""
        return set().union(*(r.keys() for r in self.rules))


def selector_text(selector: Selector) -> str:
    """The canonical form of a selector ("*", or its pairs sorted by key)."""
    return ",".join(f"{k}={v}" for k, v in selector) if selector else "*"


def parse_selector(text: str) -> Selector:
    """``"*"`` or ``"k=v,k2=v2"`` (attribute grammar); ValueError naming the pair at fault."""
    if text == "":
        raise ValueError("'' is not key=value (an empty selector: '*' means any member)")
    return () if text == "*" else tuple(attributes.parse(text).items())


def holds(selector: Selector, attributes_of: Mapping[str, str]) -> bool:
    """Whether every pair of ``selector`` holds for a member with ``attributes_of`` ("*": always)."""
    return all(attributes_of.get(k) == v for k, v in selector)


def parse(text: str) -> Policy:
    """The policy in ``text`` (grammar above), else PolicyError naming the statement."""
    if len(text) > MAX_TEXT:
        raise PolicyError(0, "", f"longer than {MAX_TEXT} characters")
    rules: list[Rule] = []
    declared: set[str] = set()
    default = None
    last_line = 0
    for number, statement in statements(text):
        last_line = number
        if default is not None:
            raise PolicyError(number, statement, "after the 'default' statement (it ends the policy)")
        words = statement.split()
        if words[0] == "default":
            if len(words) != 2 or words[1] not in ACTIONS:
                raise PolicyError(number, statement, "must be 'default allow' or 'default deny'")
            default = words[1]
        elif words[0] == "declare":
            if rules or len(words) != 2:
                raise PolicyError(number, statement, "must be 'declare key[,key...]', before the rules")
            declared |= {_key(number, statement, k) for k in words[1].split(",")}
        else:
            if len(rules) >= MAX_RULES:
                raise PolicyError(number, statement, f"more than {MAX_RULES} rules")
            rules.append(parse_rule(statement, number))
    if default is None:
        raise PolicyError(last_line, "", "no 'default allow' or 'default deny' statement at the end")
    return Policy(tuple(rules), default, tuple(sorted(declared)))


def statements(text: str) -> Iterable[tuple[int, str]]:
    """(line number, statement with single spaces) for each non-blank statement, comments dropped."""
    for number, line in enumerate(text.splitlines(), 1):
        for piece in line.split("#", 1)[0].split(";"):
            if piece.strip():
                yield number, " ".join(piece.split())


def _key(number: int, statement: str, key: str) -> str:
    if not attributes.KEY.fullmatch(key):
        raise PolicyError(number, statement, f"key {key!r} must match {attributes.KEY.pattern}")
    return key


def parse_rule(statement: str, number: int = 1) -> Rule:
    """One rule statement; PolicyError (line ``number``) naming the part at fault."""
    words = statement.split()
    if len(words) != 5 or words[1] != "->":
        raise PolicyError(number, statement, "a rule is 'SOURCE -> DESTINATION SERVICE ACTION', "
                                             "e.g. 'role=web -> role=db tcp/5432 allow'")
    source, _, destination, service, action = words
    if action not in ACTIONS:
        raise PolicyError(number, statement, f"unknown action {action!r} (allow or deny)")
    protocol, ports = _service(number, statement, service)
    return Rule(_selector(number, statement, source), _selector(number, statement, destination), protocol,
                ports, action)


def _selector(number: int, statement: str, text: str) -> Selector:
    try:
        return parse_selector(text)
    except ValueError as exc:
        raise PolicyError(number, statement, f"selector {text!r}: {exc}") from exc


def _service(number: int, statement: str, text: str) -> tuple[str, tuple[int, int] | None]:
    protocol, slash, ports = text.partition("/")
    if protocol not in PROTOCOLS:
        raise PolicyError(number, statement, f"unknown protocol {protocol!r} (any, icmp, tcp, udp)")
    if not slash:
        return protocol, None
    if protocol not in PORTED:
        raise PolicyError(number, statement, f"{protocol} has no ports")
    low, dash, high = ports.partition("-")
    if not _is_port(low) or (dash and not _is_port(high)):
        raise PolicyError(number, statement, f"ports {ports!r}: a port 0..65535 or a range LOW-HIGH")
    low_n, high_n = int(low), int(high) if dash else int(low)
    if dash and low_n >= high_n:
        raise PolicyError(number, statement, f"ports {ports!r}: the range's low end must be below its high end")
    return protocol, (low_n, high_n)


def _is_port(text: str) -> bool:
    return text.isdigit() and text.isascii() and len(text) <= 5 and int(text) <= 65535 and str(int(text)) == text


# --- the inner packet ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Flow:
    protocol: int            # IP protocol / IPv6 next header; 255 for a packet that is not IP
    source: bytes            # packed addresses
    destination: bytes
    source_port: int | None  # None: no ports (not TCP/UDP, fragment, truncated)
    destination_port: int | None


def flow_of(packet: bytes | bytearray | memoryview) -> Flow:
    """The protocol, addresses and L4 ports of one IP packet (bounds-checked; limits in the docstring)."""
    size = len(packet)
    version = packet[0] >> 4 if size else 0
    if version == 4 and size >= 20:
        offset, protocol = (packet[0] & 0x0F) * 4, packet[9]
        fragment = int.from_bytes(packet[6:8], "big") & 0x1FFF
        return _ported(packet, protocol, bytes(packet[12:16]), bytes(packet[16:20]), offset, fragment == 0)
    if version == 6 and size >= 40:
        protocol, offset, first = packet[6], 40, True
        for _ in range(MAX_EXTENSIONS):
            if protocol in _V6_EXTENSIONS and offset + 2 <= size:
                protocol, offset = packet[offset], offset + (packet[offset + 1] + 1) * 8
            elif protocol == _V6_FRAGMENT and offset + 8 <= size:
                first = first and int.from_bytes(packet[offset + 2:offset + 4], "big") >> 3 == 0
                protocol, offset = packet[offset], offset + 8
            else:
                break
        return _ported(packet, protocol, bytes(packet[8:24]), bytes(packet[24:40]), offset, first)
    return Flow(255, b"", b"", None, None)


def _ported(packet, protocol: int, source: bytes, destination: bytes, offset: int, first: bool) -> Flow:
    if protocol in (6, 17) and first and offset >= 20 and offset + 4 <= len(packet):
        return Flow(protocol, source, destination, int.from_bytes(packet[offset:offset + 2], "big"),
                    int.from_bytes(packet[offset + 2:offset + 4], "big"))
    return Flow(protocol, source, destination, None, None)


# --- compiled matching --------------------------------------------------------------------------------


@dataclass
class Counters:
    """Denied packets of one policy version: ``denied[n]`` for rule n (1-based), ``denied[0]`` the default."""

    version: int
    denied: list[int] = field(default_factory=list)


class CompiledPolicy:
    """``policy`` over one epoch's member table: our index and the attributes of every index."""

    def __init__(self, policy: Policy, own_index: int, attributes_by_index: Mapping[int, Mapping[str, str]],
                 generation: int = 0) -> None:
        self.policy, self.own_index = policy, own_index
        self.generation = generation  # conntrack entries allowed under another generation are judged again
        self._attributes = {i: dict(a) for i, a in attributes_by_index.items()}
        self._per_peer: dict[tuple[int, bool], tuple] = {}  # (peer, outgoing) -> the rules its selectors pass

    def _rules_for(self, peer: int, outgoing: bool) -> tuple:
        """The rules whose selectors hold for this peer and direction (computed once per peer)."""
        found = self._per_peer.get((peer, outgoing))
        if found is None:
            own, other = self._attributes.get(self.own_index, {}), self._attributes.get(peer, {})
            source, destination = (own, other) if outgoing else (other, own)
            found = tuple((n, PROTOCOLS[r.protocol], r.ports) for n, r in enumerate(self.policy.rules, 1)
                          if holds(r.source, source) and holds(r.destination, destination))
            self._per_peer[(peer, outgoing)] = found
        return found

    def decide(self, peer: int, outgoing: bool, protocol: int, port: int | None) -> int:
        """The deciding rule's number (0: the default) for a packet to (``outgoing``) or from ``peer``."""
        for number, protocols, ports in self._rules_for(peer, outgoing):
            if (protocols is None or protocol in protocols) and (
                    ports is None or (port is not None and ports[0] <= port <= ports[1])):
                return number
        return 0

    def action(self, number: int) -> str:
        return self.policy.default if number == 0 else self.policy.rules[number - 1].action


class PolicyEnforcer:
    """One per daemon: the compiled policy of each held epoch, one conntrack, the deny counters.

    :meth:`update` (control thread, every accepted archive) compiles; the
    data path calls :meth:`inbound` after authentication and the inner
    check, :meth:`outbound` before sealing (event loop thread). Both return
    None to pass the packet, else the number of the rule that denied it (0:
    the default), already counted. No policy in the archive: everything
    passes, nothing is tracked. An epoch without a compiled table while a
    policy is set fails closed (counted on the default).
    """

    def __init__(self, max_entries: int | None = None, keep_epochs: int = 3) -> None:
        self.conntrack = Conntrack(max_entries) if max_entries else Conntrack()
        self.keep_epochs = keep_epochs
        self.policy: Policy | None = None
        self.version: int | None = None
        self.counters = Counters(0, [0])
        self.generation = 0
        self._tables: dict[int, tuple[int, dict]] = {}      # epoch -> (own index, attributes by index)
        self._compiled: dict[int, CompiledPolicy] = {}

    def update(self, epoch: int | None, policy: Policy | None, version: int | None, own_index: int | None,
               attributes_by_index: Mapping[int, Mapping[str, str]]) -> None:
        """A new archive: its policy (None: none) and, when it has an epoch, that epoch's member table."""
        tables = dict(self._tables)
        if epoch is not None and own_index is not None:
            tables[epoch] = (own_index, {i: dict(a) for i, a in attributes_by_index.items()})
            tables = dict(sorted(tables.items())[-self.keep_epochs:])
        if policy is not None and (policy != self.policy or version != self.version):
            self.counters = Counters(version or 0, [0] * (len(policy.rules) + 1))
        self.generation += 1
        compiled = {} if policy is None else {e: CompiledPolicy(policy, own, attrs, self.generation)
                                              for e, (own, attrs) in tables.items()}
        self._tables, self.version = tables, None if policy is None else version
        # The data path reads policy, then _compiled: setting a policy swaps the tables in first, so a packet
        # racing it is judged by the old or the new one (clearing one may fail one packet closed, never open).
        if policy is None:
            self.policy, self._compiled = None, compiled
        else:
            self._compiled, self.policy = compiled, policy

    def inbound(self, epoch: int, sender_index: int, packet, now: float) -> int | None:
        return None if self.policy is None else self._check(epoch, sender_index, packet, now, False)

    def outbound(self, epoch: int, dest_index: int, packet, now: float) -> int | None:
        return None if self.policy is None else self._check(epoch, dest_index, packet, now, True)

    def _check(self, epoch: int, peer: int, packet, now: float, outgoing: bool) -> int | None:
        compiled, counters = self._compiled.get(epoch), self.counters
        if compiled is None:
            counters.denied[0] += 1
            return 0
        flow = flow_of(packet)
        key = _key_of(flow, outgoing)
        if key is not None:
            entry = self.conntrack.lookup(key, now)
            if entry is not None:
                opened = entry.opened_locally  # judge the flow as it was opened: its first packet's direction
                if entry.generation == compiled.generation or compiled.action(
                        compiled.decide(peer, opened, flow.protocol, key[4] if opened else key[2])) == "allow":
                    self.conntrack.refresh(key, entry, now, compiled.generation)
                    return None
                self.conntrack.forget(key)
        number = compiled.decide(peer, outgoing, flow.protocol, flow.destination_port)
        if compiled.action(number) == "allow":
            if key is not None:
                self.conntrack.add(key, now, compiled.generation, outgoing)
            return None
        counters.denied[number] += 1
        return number

    def status(self) -> dict:
        """What ``grouptun status`` shows: version, rules with their deny counts, the table's fill."""
        if self.policy is None:
            return {"version": None}
        denied = self.counters.denied
        return {"version": self.version, "default": self.policy.default, "default_denied": denied[0],
                "rules": [{"rule": n, "text": str(r), "denied": denied[n]} for n, r in enumerate(self.policy.rules, 1)],
                "conntrack": {"entries": len(self.conntrack), "max": self.conntrack.max_entries,
                              "evicted": self.conntrack.evicted}}


def _key_of(flow: Flow, outgoing: bool) -> Key | None:
    """The conntrack key of ``flow`` seen from this host; None when it cannot be tracked (no ports, not IP)."""
    if flow.protocol == 255 or (flow.protocol in (6, 17) and flow.source_port is None):
        return None
    sport, dport = flow.source_port or 0, flow.destination_port or 0
    if outgoing:
        return (flow.protocol, flow.source, sport, flow.destination, dport)
    return (flow.protocol, flow.destination, dport, flow.source, sport)
