"""grouptun: a group VPN built on a trust provider and a shared epoch secret.

The package is split into a pure protocol core (``grouptun.core``: no
sockets, files, clocks, threads or randomness of its own) and thin shells
that own the TUN device, the UDP socket, HTTP and timers.
"""

__version__ = "0.1.0"
