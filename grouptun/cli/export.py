"""``grouptun export GROUP --label NAME``: a crypto-product of the group's current epoch.

Asks the running daemon over its root-only control socket (PROTOCOL.md 3.1):
every member of the group derives the same product from the same epoch, and
the product changes with every epoch. ``--type`` (default ``key``) and
``--format`` are described in :mod:`grouptun.apps.products`; ``--epoch previous``
gives the product of the epoch before the one the daemon sends on, while it
is still held (the grace period after a switch). ``--context`` is text
(UTF-8) bound into the product. ``--json`` prints the daemon's whole answer
(type, label, epoch, identity, entropy in bits, value).

The request is checked here before the daemon is asked: an unknown type, a
bad label or a format the type does not have exits 2 with one line. A label
whose export rule (the signed archive's ``export_rules``,
:mod:`grouptun.core.exportrules`) this member's signed attributes do not
satisfy is refused by the daemon: exit 77 with the rule named.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from grouptun.ops.ctlsocket import DEFAULT_RUN_DIR


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("group", help="group name, e.g. lan")
    parser.add_argument("--label", required=True, metavar="NAME",
                        help="product name: 1..64 of A-Z a-z 0-9 . _ - (label 'grouptun/1 TYPE NAME')")
    parser.add_argument("--type", default="key", help="tls-psk, key (default), password, ed25519 or x25519")
    parser.add_argument("--context", default="", help="text bound into the product (default: empty)")
    parser.add_argument("--length", type=int, help="key: bytes (default 32); password: letters (default 24)")
    parser.add_argument("--count", type=int, help="a stream of N products (HMAC_DRBG; not for tls-psk), one a line")
    parser.add_argument("--format", help="hex, base64, pem, openssl-psk or text (default: the type's first)")
    parser.add_argument("--epoch", default="current", help="current (default) or previous")
    parser.add_argument("--json", action="store_true", help="print the whole answer as JSON")
    parser.add_argument("--socket", type=Path, help="control socket (default: /run/grouptun/GROUP.sock)")
    parser.add_argument("--run-dir", type=Path, default=DEFAULT_RUN_DIR)


def run(args: argparse.Namespace) -> int:
    from grouptun.ops.ctlsocket import request, socket_path
    from grouptun.apps.products import check_request

    wanted = check_request(args.type, args.label, args.context.encode("utf-8", "surrogateescape"),
                           args.length, args.format, args.epoch, args.count)
    answer = request(args.socket or socket_path(args.group, args.run_dir), "export", args=wanted.to_json())
    if args.json:
        json.dump(answer, sys.stdout, indent=2, sort_keys=True)
        print()
    else:
        print(answer["value"])  # type: ignore[index]
    return 0
