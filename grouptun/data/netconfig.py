"""Interface addresses, MTU, link state and routes via pyroute2 (netlink).

``NetConfig(ifname)`` works on a device that already exists (the TUN the
daemon opened) in the caller's network namespace. ``configure`` is
idempotent: it sets the MTU, adds missing addresses (IPv4 and IPv6),
removes global ones no longer wanted, brings the link up and adds routes
for the overlay prefixes through the device. Every netlink failure becomes
a SystemSetupError naming the step.

Every netlink call runs on one private worker thread: pyroute2 0.9 drives
its sockets with asyncio and would otherwise pick up (and fail on) the
daemon's running uvloop loop when called from the event-loop thread.

IPv6 link-local: before the link goes up, ``configure`` sets the device's
IPv6 address generation mode to none (``IFLA_INET6_ADDR_GEN_MODE`` =
``IN6_ADDR_GEN_MODE_NONE``, what ``ip link set DEV addrgenmode none`` does)
and removes any fe80:: the kernel already gave it. Otherwise the kernel
emits MLD reports and router solicitations from fe80::, which the session
drops as ``tx_source`` (not a member's overlay address) -- noise in the drop
counters. Nothing of ours needs a link-local address on a layer-3 TUN. On
a host without IPv6 (the kernel refuses the attribute) this step is skipped.

Limits: it only touches the one interface; removal of the interface is the
TUN device's close. IPv6 addresses are added with IFA_F_NODAD: a TUN link
has no neighbours to defend an address against.
"""

from __future__ import annotations

import concurrent.futures
import errno
import ipaddress
from typing import Callable, Iterable

from grouptun.errors import SystemSetupError

IFA_F_NODAD = 0x02
IN6_ADDR_GEN_MODE_NONE = 1  # linux/if_link.h
IFF_UP = 0x1
NETLINK_TIMEOUT = 30.0

_worker = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="grouptun-netlink")


def _ipr_default():
    from pyroute2 import IPRoute

    from grouptun.ops.logsetup import quiet_libraries

    quiet_libraries()  # importing pyroute2 reset its logger to NOTSET: no netlink dumps at debug
    return IPRoute()


class NetConfig:
    """Addresses/MTU/routes of one interface; opens a netlink socket per call."""

    def __init__(self, ifname: str, ipr_factory: Callable = _ipr_default) -> None:
        self.ifname = ifname
        self._factory = ipr_factory

    def _index(self, ipr) -> int:
        found = ipr.link_lookup(ifname=self.ifname)
        if not found:
            raise SystemSetupError(f"interface {self.ifname} not found")
        return found[0]

    def _run(self, step: str, fn: Callable):
        return _worker.submit(self._run_here, step, fn).result(NETLINK_TIMEOUT)

    def _run_here(self, step: str, fn: Callable):
        from pyroute2 import NetlinkError

        try:
            with self._factory() as ipr:
                return fn(ipr, self._index(ipr))
        except NetlinkError as exc:
            raise SystemSetupError(f"{self.ifname}: {step} failed: {exc}") from exc
        except OSError as exc:
            raise SystemSetupError(f"{self.ifname}: {step} failed: {exc.strerror or exc}") from exc

    def configure(self, addresses: Iterable[str], mtu: int, routes: Iterable[str] = ()) -> None:
        """Make the interface carry exactly ``addresses`` with ``mtu``, up, with ``routes``."""
        wanted = [ipaddress.ip_interface(a) for a in addresses]
        self.set_mtu(mtu)
        self.set_addresses(wanted)
        self.disable_link_local()
        self._run("link up", lambda ipr, idx: ipr.link("set", index=idx, state="up"))
        self.add_routes(routes)

    def set_mtu(self, mtu: int) -> None:
        self._run("set mtu", lambda ipr, idx: ipr.link("set", index=idx, mtu=mtu))

    def set_addresses(self, wanted: list) -> None:
        wanted = [ipaddress.ip_interface(a) for a in wanted]

        def apply(ipr, idx):
            have = set(self._addresses(ipr, idx))
            for iface in have - set(wanted):
                if iface.ip.is_link_local:
                    continue  # the kernel's fe80:: is not ours to manage
                ipr.addr("del", index=idx, address=str(iface.ip), prefixlen=iface.network.prefixlen)
            for iface in wanted:
                if iface in have:
                    continue
                extra = {"flags": IFA_F_NODAD} if iface.version == 6 else {}
                ipr.addr("add", index=idx, address=str(iface.ip), prefixlen=iface.network.prefixlen, **extra)

        self._run("set addresses", apply)

    def disable_link_local(self) -> bool:
        """No kernel fe80:: on the device (see the module doc); False when the host has no IPv6."""
        from pyroute2 import NetlinkError

        spec = {"attrs": [("AF_INET6", {"attrs": [("IFLA_INET6_ADDR_GEN_MODE", IN6_ADDR_GEN_MODE_NONE)]})]}

        def apply(ipr, idx):
            try:
                ipr.link("set", index=idx, IFLA_AF_SPEC=spec)
            except NetlinkError as exc:
                if exc.code in (errno.EAFNOSUPPORT, errno.EOPNOTSUPP):
                    return False  # IPv6 disabled in this kernel: there is no link-local either
                raise
            for iface in self._addresses(ipr, idx):
                if iface.version == 6 and iface.ip.is_link_local:
                    ipr.addr("del", index=idx, address=str(iface.ip), prefixlen=iface.network.prefixlen)
            return True

        return self._run("IPv6 link-local off", apply)

    def add_routes(self, prefixes: Iterable[str]) -> None:
        """Route each prefix through the interface; already present is fine."""
        self._routes("add routes", "add", prefixes, (errno.EEXIST,))

    def remove_routes(self, prefixes: Iterable[str]) -> None:
        """Take each prefix's route through the interface away (subnet routes); already gone is fine."""
        self._routes("remove routes", "del", prefixes, (errno.ESRCH, errno.ENOENT))

    def _routes(self, step: str, command: str, prefixes: Iterable[str], fine: tuple[int, ...]) -> None:
        from pyroute2 import NetlinkError

        def apply(ipr, idx):
            for text in prefixes:
                net = ipaddress.ip_network(text, strict=False)
                try:
                    ipr.route(command, dst=str(net), oif=idx)
                except NetlinkError as exc:
                    if exc.code not in fine:
                        raise

        self._run(step, apply)

    @staticmethod
    def _addresses(ipr, idx) -> list:
        out = []
        for msg in ipr.get_addr(index=idx):
            addr = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
            out.append(ipaddress.ip_interface(f"{addr}/{msg['prefixlen']}"))
        return out

    def state(self) -> dict:
        """What the kernel holds now: addresses, mtu, up, routes through the device."""

        def read(ipr, idx):
            link = ipr.get_links(idx)[0]
            routes = []
            for family in (2, 10):
                for msg in ipr.get_routes(family=family, oif=idx):
                    dst = msg.get_attr("RTA_DST")
                    if dst is not None and msg["dst_len"] > 0 and msg.get_attr("RTA_TABLE") == 254:
                        routes.append(str(ipaddress.ip_network(f"{dst}/{msg['dst_len']}", strict=False)))
            return {
                "addresses": [str(a) for a in self._addresses(ipr, idx)],
                "mtu": link.get_attr("IFLA_MTU"),
                "up": bool(link["flags"] & IFF_UP),
                "routes": sorted(set(routes)),
            }

        return self._run("read state", read)
