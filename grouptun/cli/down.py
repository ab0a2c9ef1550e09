"""``grouptun down GROUP``: ask the running daemon to stop, and wait for it.

The daemon answers, then shuts down cleanly (interface removed, keys
wiped) and removes its control socket; this command returns once the
socket is gone (or after ``--wait`` seconds, exit code 1).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from grouptun.ops.ctlsocket import DEFAULT_RUN_DIR


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("group", help="group name, e.g. lan")
    parser.add_argument("--socket", type=Path, help="control socket (default: /run/grouptun/GROUP.sock)")
    parser.add_argument("--run-dir", type=Path, default=DEFAULT_RUN_DIR)
    parser.add_argument("--wait", type=float, default=10.0, help="seconds to wait for the daemon to exit")


def run(args: argparse.Namespace) -> int:
    from grouptun.ops.ctlsocket import request, socket_path

    path = args.socket or socket_path(args.group, args.run_dir)
    request(path, "down")
    deadline = time.monotonic() + args.wait
    while time.monotonic() < deadline:
        if not path.exists():
            print(f"{args.group}: stopped")
            return 0
        time.sleep(0.05)
    print(f"{args.group}: asked to stop, still running after {args.wait:g} s")
    return 1
