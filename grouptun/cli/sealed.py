"""``grouptun sealed list GROUP`` and ``grouptun sealed delete GROUP DATA-ID``.

``list`` shows the sealed data this member may fetch (sealed to it) or delete
(sealed by it): DATA-ID, sender, size, expiry, recipients; ``--json`` the
provider's entries. ``delete`` removes a blob this member sealed.
"""

from __future__ import annotations

import argparse

from grouptun.cli.seal import add_member_arguments, open_member


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    sub.required = True
    listing = sub.add_parser("list", help="sealed data sent to or by this member")
    add_member_arguments(listing)
    listing.add_argument("--json", action="store_true", help="the provider's entries as JSON")
    remove = sub.add_parser("delete", help="delete sealed data this member sealed")
    add_member_arguments(remove)
    remove.add_argument("data_id", metavar="DATA-ID")


def run(args: argparse.Namespace) -> int:
    import json
    import time

    from grouptun.apps import sealed
    session = open_member(args)
    try:
        api = sealed.HttpSealed(session.client)
        if args.action == "delete":
            api.delete(args.data_id)
            return 0
        entries = api.listing()
    finally:
        session.close()
    if args.json:
        print(json.dumps(entries, indent=2, sort_keys=True))
        return 0
    for e in entries:
        expires = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(e["expires_at"]))
        print(f"{e['data_id']}  from {e['sender']}  {e['size']} bytes  until {expires}  "
              f"to {','.join(e['recipients'])}")
    return 0
