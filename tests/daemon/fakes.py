"""In-memory fakes at the daemon's boundaries: TUN, UDP, netlink, provider.

The data path's devices (:mod:`grouptun.data.devices` Protocols): :class:`FakeTun`
and :class:`QueueTun` (TUNs without offloads: runs of one), :class:`VnetTun`
(a TUN with the virtio-net header, running the real offload code of
:mod:`grouptun.data.offload.tunruns` over queues), :class:`FakeUdp` (a socket
without GRO) and :class:`GsoUdp` (with GSO/GRO: each send is one receive).

The fake provider does real cryptography (HPKE capsules, signed archives,
key_check) so the control path's acceptance order runs for real; only
HTTP, TLS and storage are missing. ``FakeClient`` stands in for the
ProviderClient; ``FakeTransport`` instead answers the real ProviderClient's
HTTP requests from the same fake (and records every request it was sent).
"""

from __future__ import annotations

import base64
import collections
import errno
import hmac
import json
import os
from pathlib import Path
import socket
import struct
import threading
import time
import types
from urllib.parse import parse_qs, urlsplit

import requests
from cryptography.hazmat.primitives.asymmetric import ed25519, mldsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from grouptun.core import capsule
from grouptun.core.archive import Archive, ArchiveEpoch, sign_archive
from grouptun.core.archivemember import ArchiveMember, instance_of
from grouptun.core.envelope import ProviderKeys
from grouptun.core.keys import HEAP, EpochKeys, SecretMemory, data_id
from grouptun.core.session import EpochMaterial, MemberInfo
from grouptun.control import credkeys
from grouptun.control import keystore
from grouptun.control.credmigrate import SaltProof
from grouptun.errors import ProviderError, ProviderRefused
from grouptun.control.keystore import MemberKeys, write_atomic
from grouptun.data.offload.tunruns import PlainRuns, VnetRuns
from grouptun.data.udp import MAX_SEGMENTS, SEND_MAX, gather_runs

CREDENTIAL = b"correct horse battery"
AUTHENTICATOR = bytes(range(32))  # what a fake member shows when no keystore is involved
FAST = keystore.KdfCost(memory_kib=64, iterations=1, lanes=1)


def proof() -> SaltProof:
    """The salt proof of a fake member that shows AUTHENTICATOR."""
    return SaltProof(bytearray(AUTHENTICATOR))


def legacy_keystore(keys: MemberKeys, credential: bytes, cost: keystore.KdfCost = FAST) -> bytes:
    """A version-1 keystore (AES key = Argon2id(credential)), as grouptun wrote before the credential split."""
    salt, nonce = os.urandom(16), os.urandom(12)
    header = struct.pack(">4sBIIB16s12s", b"GTKS", 1, cost.memory_kib, cost.iterations, cost.lanes, salt, nonce)
    key = credkeys.argon2id(credential, salt, cost)
    return header + AESGCM(bytes(key)).encrypt(nonce, bytes(keys._plaintext()), header)  # noqa: SLF001


class FakeTun:
    """A TUN stand-in with a real fd: one end of an AF_UNIX datagram socketpair.

    ``inject(pkt)`` is a packet the kernel routes into the tunnel;
    ``delivered()`` the packets the daemon wrote to the kernel.
    """

    def __init__(self, name: str = "gt-fake") -> None:
        self.name = name
        self._mine, self._kernel = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._mine.setblocking(False)
        self._kernel.setblocking(False)
        self.closed = False
        runs = PlainRuns(self.read, self.write_one)
        self.counters, self.read_runs, self.write, self.flush = runs.counters, runs.read_runs, runs.write, runs.flush

    def fileno(self) -> int:
        return self._mine.fileno()

    def describe(self) -> str:
        return "fake"

    def read(self) -> bytes | None:
        try:
            return self._mine.recv(65535)
        except BlockingIOError:
            return None

    def write_one(self, packet) -> bool:
        self._mine.send(packet)
        return True

    def inject(self, packet: bytes) -> None:
        self._kernel.send(packet)

    def delivered(self) -> list[bytes]:
        out = []
        while True:
            try:
                out.append(self._kernel.recv(65535))
            except BlockingIOError:
                return out

    def close(self) -> None:
        if not self.closed:
            self._mine.close()
            self._kernel.close()
            self.closed = True


class QueueTun:
    """A TUN without fd for handler-level tests."""

    def __init__(self) -> None:
        self.inbox: collections.deque = collections.deque()
        self.written: list[bytes] = []
        runs = PlainRuns(self.read, self.write_one)
        self.counters, self.read_runs, self.write, self.flush = runs.counters, runs.read_runs, runs.write, runs.flush

    def fileno(self) -> int:
        return -1

    def describe(self) -> str:
        return "queue"

    def read(self):
        return self.inbox.popleft() if self.inbox else None

    def write_one(self, packet) -> bool:
        self.written.append(bytes(packet))
        return True


class FakeNetwork:
    """An in-memory underlay: endpoints -> FakeUdp, datagrams queued per receiver."""

    def __init__(self) -> None:
        self.sockets: dict[tuple[str, int], "FakeUdp"] = {}
        self.sent = 0


class FakeUdp:
    def __init__(self, net: FakeNetwork, endpoint: tuple[str, int]) -> None:
        self.net, self.endpoint, self.port = net, endpoint, endpoint[1]
        self.inbox: collections.deque = collections.deque()
        net.sockets[endpoint] = self
        self._runs = bytearray(4 * 65536)

    def fileno(self) -> int:
        return -1

    def describe(self) -> str:
        return "fake udp"

    def recvfrom(self):
        return self.inbox.popleft() if self.inbox else None

    def _recv_one(self, buf):
        if not self.inbox:
            return None
        data, source = self.inbox.popleft()
        buf[:len(data)] = data
        return len(data), len(data), source

    def recv_runs(self, budget: int):
        return gather_runs(self._recv_one, self._runs, budget)

    def send_run(self, data, seg, endpoint) -> int:
        return sum(self.sendto(data[at:at + seg], endpoint) for at in range(0, len(data), seg))

    def sendto(self, data, endpoint) -> bool:
        peer = self.net.sockets.get(tuple(endpoint))
        if peer is None:
            return False
        self.net.sent += 1
        peer.inbox.append((bytes(data), self.endpoint))
        return True

    def can_reach(self, host: str) -> bool:
        return True

    def close(self) -> None:
        self.net.sockets.pop(self.endpoint, None)


class VnetTun:
    """A TUN with IFF_VNET_HDR and TSO/USO: reads give queued buffers, writes are kept."""

    vnet_hdr = True
    offloads = 0x01 | 0x02 | 0x04 | 0x20 | 0x40

    def __init__(self) -> None:
        self.queue: list[bytes] = []
        self.written: list[bytes] = []
        runs = VnetRuns(self.read_into, self.write_parts)
        self.runs = runs
        self.counters, self.read_runs, self.write, self.flush = runs.counters, runs.read_runs, runs.write, runs.flush

    def fileno(self) -> int:
        return -1

    def read_into(self, buf) -> int | None:
        if not self.queue:
            return None
        data = self.queue.pop(0)
        buf[:len(data)] = data
        return len(data)

    def write_raw(self, data) -> bool:
        self.written.append(bytes(data))
        return True

    def write_parts(self, parts) -> bool:
        return self.write_raw(b"".join(parts))

    def describe(self) -> str:
        return "fake-vnet"


class GsoUdp:
    """A socket with GSO and GRO: each GSO send is one GRO receive at the destination."""

    gso = gro = True

    def __init__(self, net: dict, me) -> None:
        self.net, self.me = net, me
        self.inbox: list = []
        self.sends = 0
        net[me] = self
        self._runs = bytearray(4 * 65536)

    def fileno(self) -> int:
        return -1

    def describe(self) -> str:
        return "fake gso/gro"

    def send_run(self, data, seg, endpoint) -> int:
        chunk = max(1, min(MAX_SEGMENTS, SEND_MAX // seg)) * seg  # as the kernel takes them
        for at in range(0, len(data), chunk):
            self.sends += 1
            self.net[endpoint].inbox.append((bytes(data[at:at + chunk]), seg, self.me))
        return -(-len(data) // seg)

    def recv_runs(self, budget: int):
        return gather_runs(self.recv_batch, self._runs, budget)

    def recv_batch(self, buf):
        if not self.inbox:
            return None
        data, seg, source = self.inbox.pop(0)
        buf[:len(data)] = data
        return len(data), seg, source

    def can_reach(self, host: str) -> bool:
        return True

    def close(self) -> None:
        self.net.pop(self.me, None)


class FakeNetConfig:
    def __init__(self, ifname: str) -> None:
        self.ifname = ifname
        self.addresses: list[str] = []
        self.mtu = None
        self.routes: set[str] = set()
        self.up = False

    def configure(self, addresses, mtu, routes=()) -> None:
        self.addresses, self.mtu, self.up = [str(a) for a in addresses], mtu, True
        self.routes |= set(routes)

    def set_addresses(self, wanted) -> None:
        self.addresses = [str(a) for a in wanted]

    def set_mtu(self, mtu) -> None:
        self.mtu = mtu

    def add_routes(self, routes) -> None:
        self.routes |= set(routes)

    def remove_routes(self, routes) -> None:
        self.routes -= set(routes)


class FakeLinkDns:
    """The host resolver's per-link DNS (grouptun.apps.names_server.LinkDns): records what was asked."""

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[tuple] = []
        self.fail = fail

    def register(self, ifname: str, servers: list[str], domain: str) -> None:
        self.calls.append(("register", ifname, tuple(servers), domain))
        if self.fail:
            raise OSError("resolvectl: Failed to set DNS configuration: Link not found")

    def revert(self, ifname: str) -> None:
        self.calls.append(("revert", ifname))


class FakeClock:
    """A monotonic clock the test moves (``clock()`` reads it, ``advance`` moves it)."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FullDisk:
    """The statefile's write boundary (``EpochStateFile(write=...)``) on a disk that can fill up.

    While ``full`` every write raises OSError(ENOSPC) and is counted in ``refused``; else it writes for real.
    """

    def __init__(self) -> None:
        self.full = False
        self.refused = 0

    def write(self, path, data: bytes, mode: int) -> None:
        if self.full:
            self.refused += 1
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        write_atomic(path, data, mode)


class FakeProvider:
    """A group's provider in memory: opens epochs with real crypto and signs archives."""

    def __init__(self, names: list[str], port_base: int = 51000, suite: int = 1, switch_delay: float = 2.0) -> None:
        self.ed = ed25519.Ed25519PrivateKey.generate()
        self.ml = mldsa.MLDSA65PrivateKey.generate()
        raw = lambda k: k.public_key().public_bytes_raw()  # noqa: E731
        self.keys = ProviderKeys(raw(self.ed), raw(self.ml))
        self.group_id = os.urandom(16)
        self.members = {n: MemberKeys.generate() for n in names}
        self.secrets = {n: AUTHENTICATOR for n in names}  # what each member must show for a salt
        self.migrated: list[str] = []  # members whose credential a registration replaced
        self.endpoints = {n: (f"127.0.0.1:{port_base + i}",) for i, n in enumerate(names)}
        self.addresses = {n: (f"10.77.0.{i + 2}/24", f"fd77::{i + 2}/64") for i, n in enumerate(names)}
        self.suite, self.switch_delay = suite, switch_delay
        self.epoch = 0
        self.version = 0
        self.signed: bytes | None = None          # the full archive (the enroll answer's)
        self.signed_compact: bytes | None = None  # its compact form (PROTOCOL.md 2.2), same version
        self.serve_compact = True  # start/archive/watch answer the compact form, as to a daemon; False: full
        self.capsules: dict[tuple[int, str], bytes] = {}
        self.salts: dict[tuple[int, str], bytes] = {}
        self.down = False
        self.refusing: ProviderRefused | None = None  # set: every call is refused with it (a 4xx)
        self.calls: list[tuple] = []
        self.changed = threading.Condition()
        self.tamper: str | None = None  # "capsule" | "salt" | "signature" | "key_check"
        self.pending: dict[str, bytes] = {}  # member -> start challenge waiting for a second member
        self.instances: dict[str, bytes | None] = dict.fromkeys(names)  # member -> instance (PROTOCOL.md 4)
        self.current: ArchiveEpoch | None = None
        self.attributes: dict[str, tuple] = {}  # member -> signed attribute pairs (issue 17)
        self.policy = None  # grouptun.core.archive.ArchivePolicy in every archive signed from now on (issue 17)
        self.export_rules = None  # grouptun.core.exportrules.ExportRules, likewise (issue 20)
        self.removed: dict[str, str] = {}  # member -> reason: its requests get the provider's 410
        self.routes: dict[str, tuple[str, ...]] = {}  # member -> approved subnet routes (archive "routes")
        self.watch_cap = 0.2  # the fake's long-poll returns after at most this long
        self.hold_watch = threading.Event()  # set: watches answer nothing until release_watch (or timeout)
        self.release_watch = threading.Event()
        self.watching = 0  # watch calls now inside their long-poll
        self.rekeys_during_watch: list[str] = []  # rekey reasons that arrived while a long-poll was open
        self.provider_urls: tuple[str, ...] = ()  # signed into every archive from now on (() = the key absent)
        self.metadata = None  # grouptun.core.archive.GroupMetadata signed into every archive from now on
        self.homes: dict[str, str] = {}  # member -> its home provider's id (a linked provider's member)
        self.vouch_issuer = None  # () -> a fresh signed voucher: what the member's home answers GET /vouch with
        if len(names) < 2:
            self.publish()

    def _members(self) -> tuple:
        names = sorted(self.members)
        return tuple(ArchiveMember(n, i, self.addresses[n], self.endpoints[n], self.members[n].ed25519_public,
                                   self.members[n].kem_public, self.instances.get(n), self.attributes.get(n, ()),
                                   routes=self.routes.get(n, ()), home=self.homes.get(n))
                     for i, n in enumerate(names))

    def remove_member(self, name: str, reason: str = "'alice' was removed from 'lan' by the admin") -> None:
        """The admin removes ``name`` (or its time ended): a new epoch without it; its requests get 410."""
        del self.members[name]
        self.removed[name] = reason
        self.open_epoch() if len(self.members) >= 2 else self.publish()

    def publish(self) -> None:
        """Re-sign the archive: a new version, same epoch (or none below 2 members), current endpoints."""
        with self.changed:
            self.version += 1
            archive = Archive(self.group_id, "lan", self.version, self.current, self._members(), "10.77.0.0/24",
                              "fd77::/64", 1420, time.time() + 3600, provider_urls=self.provider_urls, policy=self.policy,
                              export_rules=self.export_rules, metadata=self.metadata)
            self._sign(archive, self.ed)
            self.changed.notify_all()

    def _sign(self, archive: Archive, ed) -> None:
        self.signed = sign_archive(archive, ed, self.ml)
        self.signed_compact = sign_archive(archive, ed, self.ml, compact=True)

    def served(self, compact: bool | None = None) -> bytes | None:
        """What the provider answers start, archive or watch with: the form asked for (None: as to a daemon,
        ``serve_compact``)."""
        return self.signed_compact if (self.serve_compact if compact is None else compact) else self.signed

    def add_member(self, name: str) -> None:
        """Enroll ``name``: a new epoch (listing pending starts) from 2 members on."""
        self.members[name] = MemberKeys.generate()
        self.secrets[name] = AUTHENTICATOR
        i = len(self.members) - 1
        self.endpoints[name] = (f"127.0.0.1:{51000 + 50 + i}",)
        self.addresses[name] = (f"10.77.0.{i + 2}/24", f"fd77::{i + 2}/64")
        if len(self.members) >= 2:
            self.open_epoch()
        else:
            self.publish()

    def start_elsewhere(self, name: str) -> bytes:
        """A second daemon of ``name`` starts (a copied config): its epoch names the new instance."""
        challenge = os.urandom(32)
        self.open_epoch(starts={name: challenge})
        return challenge

    def open_epoch(self, challenges=(), number: int | None = None, starts: dict[str, bytes] | None = None) -> int:
        """A new epoch listing ``challenges`` and answering ``starts`` (member -> challenge) and pending starts."""
        with self.changed:
            starts, self.pending = {**self.pending, **(starts or {})}, {}
            challenges = tuple(challenges) + tuple(starts.values())
            for name, challenge in starts.items():
                self.instances[name] = instance_of(challenge)
            self.epoch = self.epoch + 1 if number is None else number
            ss, salt = os.urandom(32), os.urandom(32)
            keys = EpochKeys(self.suite, self.group_id, self.epoch, ss, salt)
            key_check = keys.key_check()
            keys.wipe()
            if self.tamper == "key_check":
                key_check = bytes(16)
            names = sorted(self.members)
            members = self._members()
            for n in names:
                kem_pub = self.members[n].kem_public
                self.capsules[(self.epoch, n)] = capsule.seal(
                    kem_pub, capsule.capsule_info(self.group_id, self.epoch, n), ss)
                self.salts[(self.epoch, n)] = capsule.seal(
                    kem_pub, capsule.salt_info(self.group_id, self.epoch, n), salt)
            ep = ArchiveEpoch(self.epoch, self.suite, int.from_bytes(os.urandom(4), "big"), len(names),
                              data_id(ss), key_check, 600.0, 2**27, self.switch_delay, 30.0,
                              tuple(challenges), time.time())
            self.current = ep
            self.version += 1
            archive = Archive(self.group_id, "lan", self.version, ep, members, "10.77.0.0/24", "fd77::/64",
                              1420, time.time() + 3600, provider_urls=self.provider_urls, policy=self.policy,
                              export_rules=self.export_rules, metadata=self.metadata)
            self._sign(archive, ed25519.Ed25519PrivateKey.generate() if self.tamper == "signature" else self.ed)
            self.changed.notify_all()
            return self.epoch

    def client(self, name: str) -> "FakeClient":
        return FakeClient(self, name)

    def enroll(self, name: str, ed25519_public: bytes, kem_public: bytes, authenticator: bytes) -> dict:
        """What the provider's enrollment does (the token is not checked); the answer's JSON."""
        self.members[name] = types.SimpleNamespace(ed25519_public=ed25519_public, kem_public=kem_public)
        self.secrets[name] = authenticator
        i = len(self.members) - 1
        self.endpoints.setdefault(name, (f"127.0.0.1:{51000 + 50 + i}",))
        self.addresses.setdefault(name, (f"10.77.0.{i + 2}/24", f"fd77::{i + 2}/64"))
        self.open_epoch() if len(self.members) >= 2 else self.publish()
        index = sorted(self.members).index(name)
        return {"group": "lan", "member_name": name, "index": index, "addresses": list(self.addresses[name]),
                "provider_keys": self.keys.to_json(), "archive": self.signed.decode()}

    def check_salt_proof(self, name: str, shown: bytes, old_credential: bytes | None) -> None:
        """The provider's rule for a salt request (ProviderRefused 403 if it fails)."""
        expected = self.secrets.get(name, b"")
        if hmac.compare_digest(shown, expected):
            return  # the authenticator; or a registration the provider holds already
        if old_credential is not None and hmac.compare_digest(old_credential, expected):
            self.secrets[name] = shown
            self.migrated.append(name)
            return
        raise ProviderRefused(403, "wrong credential")


class FakeClient:
    """ProviderClient's interface (contracts.md) against a FakeProvider (one provider under every URL)."""

    def __init__(self, provider: FakeProvider, name: str, urls: tuple[str, ...] = ("https://fake:8443",)) -> None:
        self.p, self.name = provider, name
        self.urls = tuple(urls)
        self.compact: bool | None = None  # the form asked for (FakeTransport: ?form=); None: the provider's default
        self.answered_by: str | None = None

    def use_urls(self, urls) -> None:
        self.urls = tuple(urls)

    def _call(self, what, *args):
        self.p.calls.append((self.name, what) + args)
        if self.p.down:
            raise ProviderError("provider unreachable: ConnectionError")
        self.answered_by = self.urls[0]
        if self.p.refusing is not None:
            raise self.p.refusing
        if self.name in self.p.removed:
            raise ProviderRefused(410, self.p.removed[self.name])

    def start(self, challenge: bytes) -> bytes | None:
        self._call("start", challenge)
        if len(self.p.members) < 2:  # the real provider's 202 "waiting for members"
            self.p.pending[self.name] = challenge
            return None
        self.p.open_epoch(starts={self.name: challenge})
        return self.p.served(self.compact)

    def archive(self, compact: bool | None = None) -> bytes:
        self._call("archive")
        return self.p.served(self.compact if compact is None else compact)

    def kem_public(self, member: str) -> bytes:
        """A member's KEM key as the provider holds it (``GET .../members/NAME/kem``)."""
        self._call("kem", member)
        if member not in self.p.members:
            raise ProviderRefused(404, f"no member {member!r}")
        return self.p.members[member].kem_public

    def vouch(self) -> bytes:
        """The home provider's fresh voucher (a linked provider's member; PROTOCOL.md 8)."""
        self._call("vouch")
        if self.p.vouch_issuer is None:
            raise ProviderRefused(404, "no voucher here")
        return self.p.vouch_issuer()

    def watch(self, version: int, timeout: float = 25.0) -> bytes | None:
        self._call("watch", version)
        self.p.watching += 1
        try:
            return self._watch(version, timeout)
        finally:
            self.p.watching -= 1

    def _watch(self, version: int, timeout: float) -> bytes | None:
        with self.p.changed:
            if self.p.hold_watch.is_set():  # a long-poll that nothing answers early
                self.p.changed.release()
                try:
                    self.p.release_watch.wait(min(timeout, self.p.watch_cap))
                finally:
                    self.p.changed.acquire()
                return None
            self.p.changed.wait_for(lambda: self.p.version != version or self.p.down,
                                    timeout=min(timeout, self.p.watch_cap))
            if self.p.down:
                raise ProviderError("provider unreachable: ConnectionError")
            return self.p.served(self.compact) if self.p.version != version else None

    def capsule(self, epoch: int) -> bytes:
        self._call("capsule", epoch)
        c = self.p.capsules[(epoch, self.name)]
        if self.p.tamper == "capsule":
            c = bytes([c[0] ^ 1]) + c[1:]
        return c

    def salt(self, epoch: int, authenticator: bytes, old_credential: bytes | None = None) -> bytes:
        self._call("salt", epoch)
        self.p.check_salt_proof(self.name, authenticator, old_credential)
        s = self.p.salts[(epoch, self.name)]
        if self.p.tamper == "salt":
            s = s[:-1] + bytes([s[-1] ^ 1])
        return s

    def report(self, endpoints, packets_sent) -> None:
        self._call("report", tuple(endpoints), dict(packets_sent))

    def request_routes(self, prefixes) -> None:
        self._call("request_routes", tuple(prefixes))

    def rekey(self, reason: str) -> None:
        self._call("rekey", reason)
        if self.p.watching:
            self.p.rekeys_during_watch.append(reason)
        self.p.open_epoch()

    def close(self) -> None:
        pass


class FakeTransport(requests.adapters.BaseAdapter):
    """The provider's HTTP API for the real ProviderClient, answered by a FakeProvider; records every request.

    ``session(fingerprint)`` is a ``session_factory`` for ProviderClient (and
    a stand-in for ``pinned_session``). Signed requests are taken to come
    from ``member`` (signatures are not checked: the fake checks contents).
    ``sent`` holds (method, url, headers, body bytes) of each request.
    The one fake provider answers at every URL (``host:port``) except those
    in ``dead`` (connection refused), ``hung`` (timeout) and ``failing``
    (that 5xx status): replicas that die and come back.
    """

    def __init__(self, provider: FakeProvider, member: str = "") -> None:
        super().__init__()
        self.p, self.member = provider, member
        self.sent: list[tuple[str, str, dict, bytes]] = []
        self.dead: set[str] = set()
        self.hung: set[str] = set()
        self.failing: dict[str, int] = {}
        self.failing_body: dict = {"detail": "replica unwell"}  # what the failing replicas answer (JSON)
        self.timeouts: list = []  # the timeout of each request sent

    def session(self, _fingerprint: str = "") -> requests.Session:
        session = requests.Session()
        session.mount("https://", self)
        return session

    def send(self, request, **kwargs) -> requests.Response:
        body = request.body or b""
        body = body.encode() if isinstance(body, str) else bytes(body)
        self.sent.append((request.method, request.url, dict(request.headers), body))
        self.timeouts.append(kwargs.get("timeout"))
        url = urlsplit(request.url)
        if url.netloc in self.dead:
            raise requests.ConnectionError(f"connection refused by {url.netloc}")
        if url.netloc in self.hung:
            raise requests.ConnectTimeout(f"{url.netloc} did not answer")
        if url.netloc in self.failing:
            status = self.failing[url.netloc]
            return self._response(request, status, json.dumps(self.failing_body).encode())
        try:
            status, content = self._answer(request.method, url.path.split("/")[1:], parse_qs(url.query), body)
        except ProviderRefused as exc:
            status, content = exc.status, json.dumps({"detail": exc.reason}).encode()
        return self._response(request, status, content)

    @staticmethod
    def _response(request, status: int, content: bytes) -> requests.Response:
        response = requests.Response()
        response.status_code, response._content, response.url, response.request = status, content, request.url, request
        return response

    def _answer(self, method: str, path: list[str], query: dict, body: bytes) -> tuple[int, bytes]:
        fields = json.loads(body) if body else {}
        b64 = lambda key: base64.b64decode(fields[key]) if fields.get(key) is not None else None  # noqa: E731
        if path == ["v1", "enroll"]:
            self.member = fields["name"]
            answer = self.p.enroll(fields["name"], b64("ed25519_public"), b64("kem_public"), b64("authenticator"))
            return 200, json.dumps(answer).encode()
        client, call = FakeClient(self.p, self.member), path[3:]
        client.compact = query.get("form") == ["compact"]  # absent: the full form, as the real provider
        if call == ["start"]:
            signed = client.start(bytes.fromhex(fields["challenge"]))
            return (202, b'{"waiting": "members"}') if signed is None else (200, signed)
        if call == ["archive"]:
            return 200, client.archive()
        if call == ["watch"]:
            signed = client.watch(int(query["version"][0]), float(query["timeout"][0]))
            return (204, b"") if signed is None else (200, signed)
        if call[:1] == ["epochs"] and call[2:] == ["capsule"]:
            return 200, client.capsule(int(call[1]))
        if call[:1] == ["epochs"] and call[2:] == ["salt"]:
            shown = b64("authenticator") if fields.get("authenticator") else b64("new_authenticator")
            old = b64("credential")
            return 200, client.salt(int(call[1]), shown if shown is not None else old,
                                    old if shown is not None else None)
        if call == ["report"]:
            client.report(fields["endpoints"], {int(e): n for e, n in fields["packets_sent"].items()})
            return 204, b""
        if call == ["rekey"]:
            client.rekey(fields["reason"])
            return 202, b'{"opened": true}'
        if len(call) == 3 and call[0] == "members" and call[2] == "kem" and method == "GET":
            return 200, client.kem_public(call[1])
        raise ProviderRefused(404, f"no route {'/'.join(path)}")

    def close(self) -> None:
        pass


class FakeEcho:
    """An ``EchoProbe`` (grouptun.cli.ping) that answers from a script: each entry is a round trip
    in seconds, or None for no reply. ``sent`` records (sequence, timeout) per request."""

    def __init__(self, rtts) -> None:
        self.rtts = list(rtts)
        self.sent: list[tuple[int, float]] = []
        self.closed = False

    def echo(self, sequence: int, timeout: float) -> float | None:
        self.sent.append((sequence, timeout))
        return self.rtts.pop(0)

    def close(self) -> None:
        self.closed = True


def ipv4_packet(src: str, dst: str, payload: bytes = b"hello") -> bytes:
    """A minimal IPv4/UDP packet (checksums zero; the session checks addresses, not checksums)."""
    total = 20 + 8 + len(payload)
    header = struct.pack(">BBHHHBBH4s4s", 0x45, 0, total, 0, 0, 64, 17, 0,
                         socket.inet_aton(src), socket.inet_aton(dst))
    return header + struct.pack(">HHHH", 1234, 5678, 8 + len(payload), 0) + payload


def ipv6_packet(src: str, dst: str, payload: bytes = b"hello6") -> bytes:
    header = struct.pack(">IHBB16s16s", 0x60000000, 8 + len(payload), 17, 64,
                         socket.inet_pton(socket.AF_INET6, src), socket.inet_pton(socket.AF_INET6, dst))
    return header + struct.pack(">HHHH", 1234, 5678, 8 + len(payload), 0) + payload


def epoch_material(epoch: int = 1, secrets: SecretMemory = HEAP, own: str = "alice") -> EpochMaterial:
    """A valid two-member EpochMaterial (alice 0, bob 1) whose SS and salt are buffers of ``secrets``."""
    import ipaddress

    ss, salt = secrets.alloc(32), secrets.alloc(32)
    ss[:], salt[:] = b"\x01" * 32, b"\x02" * 32
    members = tuple(MemberInfo(name, i, (ipaddress.ip_address(f"10.77.0.{i + 2}"),), ("127.0.0.1", 51000 + i))
                    for i, name in enumerate(("alice", "bob")))
    return EpochMaterial(group_id=bytes(16), epoch=epoch, suite=1, nonce_start=7, group_size=2,
                         own_index=0 if own == "alice" else 1, members=members, shared_secret=ss, salt=salt,
                         secrets=secrets)


def vm_locked() -> int:
    """This process's locked memory in bytes (VmLck of /proc/self/status)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmLck:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmLck in /proc/self/status")


def arena_holds(arena, needle: bytes) -> bool:
    """True if any byte of ``arena``'s mapped regions still spells ``needle`` (a test's look inside)."""
    with arena._lock:  # noqa: SLF001 - the test looks at the arena's own memory
        regions = [r for rs in arena._regions.values() for r in rs]  # noqa: SLF001
        return any(needle in bytes(r.view) for r in regions)


def mapping_flags(view: memoryview) -> list[str]:
    """The VmFlags (/proc/self/smaps) of the mapping that holds ``view``: "lo" locked, "dd" not dumped."""
    import ctypes

    window = ctypes.c_char.from_buffer(view)
    address = ctypes.addressof(window)
    del window  # the export would keep the slot from being freed
    inside = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()[0]
        if "-" in head and not head.endswith(":"):
            start, end = (int(x, 16) for x in head.split("-"))
            inside = start <= address < end
        elif line.startswith("VmFlags:") and inside:
            return line.split()[1:]
    raise AssertionError(f"no mapping holds {address:#x}")

