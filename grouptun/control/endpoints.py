"""The UDP endpoints a member reports to the provider (``host:port`` strings).

Used by the daemon's control path (every report) and by ``grouptun join``
(the endpoint written into a new config). Asking the kernel for a source
address sends nothing: a UDP ``connect`` only chooses a route.

Limits: one endpoint at most is guessed (the source address towards the
provider); behind NAT that address is not reachable from outside, and
``network.endpoints`` must say what is.
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

from grouptun.config import Config, format_endpoint
from grouptun.data.udp import normalise_host

__all__ = ["local_address_towards", "reported_endpoints", "seen_endpoints"]


def local_address_towards(url: str) -> str | None:
    """The source address the kernel picks for traffic to the provider in ``url``.

    A UDP ``connect`` sends nothing; it only makes the kernel choose a route
    and source address. None when the provider's host does not resolve or
    no route leads there.
    """
    host = urlsplit(url).hostname
    try:
        infos = socket.getaddrinfo(host, 443, type=socket.SOCK_DGRAM)
    except (OSError, UnicodeError):
        return None
    for family, _, _, _, sockaddr in infos:
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            try:
                s.connect(sockaddr)
                return normalise_host(s.getsockname()[0])
            except OSError:
                continue
    return None


def seen_endpoints(url: str, listen_address: str, port: int) -> list[str]:
    """``[host:port]`` where host is the listen address if specific, else our source address towards ``url``."""
    listen = ipaddress.ip_address(listen_address)
    host = None if listen.is_unspecified else str(listen)
    host = host or local_address_towards(url)
    return [format_endpoint(host, port)] if host else []


def reported_endpoints(config: Config, port: int) -> list[str]:
    """What the member tells the provider: ``network.endpoints`` if set, else :func:`seen_endpoints`.

    Behind NAT, set ``network.endpoints`` (``grouptun join --endpoint``).
    """
    if config.network.endpoints:
        return list(config.network.endpoints)
    return seen_endpoints(config.provider.url, config.network.listen_address, port)
