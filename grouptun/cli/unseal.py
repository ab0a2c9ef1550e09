"""``grouptun unseal GROUP DATA-ID [-o FILE]``: fetch sealed data and open it with this member's key.

Every chunk is authenticated before it is written. With ``-o FILE`` the
plaintext goes to a temporary file beside FILE (0600) that replaces FILE only
once the whole blob authenticated; a blob altered or cut short leaves no
FILE and exits 65. Without ``-o`` it goes to stdout as it authenticates (an
error then still exits 65, after what was written). ``--keys FILE`` opens
with another key file, e.g. the one kept from before a re-enrollment
(self-escrow: that key file and its credential are what opens it;
``--keys-credential-file`` if its credential was another); the requests
are still signed with the current key file.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from grouptun.cli.seal import add_member_arguments, open_member


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_member_arguments(parser)
    parser.add_argument("data_id", metavar="DATA-ID", help="as `grouptun seal` printed it")
    parser.add_argument("-o", "--output", type=Path, help="write the plaintext here (default: stdout)")
    parser.add_argument("--keys", type=Path, help="another key file to open with, e.g. one kept from before a "
                                                  "re-enrollment (requests are still signed with keys.enc)")
    parser.add_argument("--keys-credential-file", type=Path,
                        help="the credential of --keys, if it differs from the current one")


def _unseal_to_file(session, data_id: str, target: Path) -> str:
    from grouptun.apps import sealed
    partial = target.with_name(f".{target.name}.unseal-{os.getpid()}")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as sink:
            digest = sealed.unseal(sealed.HttpSealed(session.client), session.config.group.group_id,
                                   session.config.group.member, session.kem, data_id, sink)
            sink.flush()
            os.fsync(sink.fileno())
        os.replace(partial, target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return digest


def run(args: argparse.Namespace) -> int:
    from grouptun.apps import sealed
    session = open_member(args, args.keys, args.keys_credential_file)
    try:
        if args.output is not None:
            digest = _unseal_to_file(session, args.data_id, args.output)
        else:
            digest = sealed.unseal(sealed.HttpSealed(session.client), session.config.group.group_id,
                                   session.config.group.member, session.kem, args.data_id, sys.stdout.buffer)
            sys.stdout.flush()
    finally:
        session.close()
    print(f"sha256 {digest}", file=sys.stderr)
    return 0
