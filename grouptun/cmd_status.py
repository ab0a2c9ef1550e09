"""``grouptun status [GROUP] [--json]``: what ``wg show`` shows, for grouptun.

Asks each running daemon over its control socket (all sockets in the run
directory when no group is named). ``--json`` prints the daemon's answer
unchanged, for scripts; the text form is for people.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from grouptun.control import DEFAULT_RUN_DIR


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("group", nargs="?", help="group name (default: every running group)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--socket", type=Path, help="control socket (default: /run/grouptun/GROUP.sock)")
    parser.add_argument("--run-dir", type=Path, default=DEFAULT_RUN_DIR)


def _age(seconds) -> str:
    if seconds is None:
        return "never"
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return str(n)


def _provider_line(cp: dict, now_wall: float | None) -> str:
    if not cp:
        return "provider: (no control path)"
    if cp.get("provider_ok"):
        text = "reachable"
    else:
        text = "unreachable" if cp.get("last_contact") is None or cp.get("last_error") else "not yet contacted"
    if cp.get("last_error"):
        text += f"; last error: {cp['last_error']}"
    if cp.get("archive_version") is not None:
        text += f"; archive version {cp['archive_version']}"
    return f"provider: {text}"


def _key_memory_line(sm: dict) -> str:
    text = (f"{_bytes(sm.get('locked_bytes', 0))} locked in {sm.get('regions', 0)} region(s) "
            f"({sm.get('mechanism')}), {sm.get('slots_in_use', 0)} secrets held")
    if sm.get("unlocked_bytes"):
        text += f"; {_bytes(sm['unlocked_bytes'])} NOT locked (RLIMIT_MEMLOCK?)"
    return f"  key memory: {text}"


def format_status(st: dict) -> str:
    lines = [f"interface: {st.get('interface')}"]
    lines.append(f"  group: {st.get('group')} (member {st.get('member')}, pid {st.get('pid')}, "
                 f"up {_age(st.get('uptime'))})")
    lines.append(f"  listening port: {st.get('listen_port')}" + (f", mtu {st['mtu']}" if st.get("mtu") else ""))
    if st.get("addresses"):
        lines.append(f"  addresses: {', '.join(st['addresses'])}")
    lines.append("  " + _provider_line(st.get("control") or {}, None))
    cp = st.get("control") or {}
    if cp.get("state_dir_full"):
        retry = f" in {cp['retry_in']:.0f} s" if cp.get("retry_in") is not None else ""
        lines.append(f"  state dir full: the next epoch cannot be recorded; retrying{retry} (free some space)")
    if st.get("secret_memory"):
        lines.append(_key_memory_line(st["secret_memory"]))
    path = (st.get("dataplane") or {}).get("path")
    if path:
        lines.append(f"  data path: {path}")
    if st.get("cipher"):
        lines.append(f"  run cipher: {st['cipher']}")
    session = st.get("session") or {}
    epochs = session.get("epochs") or []
    if not epochs:
        lines.append("  epoch: none yet (waiting for the provider)")
    for e in sorted(epochs, key=lambda e: -e.get("epoch", 0)):
        role = "sending" if e.get("sending") else "receiving only"
        lines.append(f"  epoch: {e.get('epoch')} ({e.get('suite')}, age {_age(e.get('age'))}, {role}, "
                     f"{e.get('group_size')} members, {e.get('packets_sent', 0)} packets sent)")
    for m in session.get("members") or []:
        if m.get("self"):
            continue
        lines.append("")
        lines.append(f"member: {m.get('name')} (index {m.get('index')})")
        lines.append(f"  addresses: {', '.join(m.get('addresses') or []) or '(none)'}")
        lines.append(f"  endpoint: {m.get('endpoint') or '(unknown)'}")
        lines.append(f"  last seen: {_age(m.get('last_seen_age'))}" + (" ago" if m.get('last_seen_age') is not None else ""))
        lines.append(f"  transfer: {_bytes(m.get('rx_bytes', 0))} received ({m.get('rx_packets', 0)} packets), "
                     f"{_bytes(m.get('tx_bytes', 0))} sent ({m.get('tx_packets', 0)} packets)")
    drops = {k: v for k, v in (session.get("drops") or {}).items() if v}
    dp = {k: v for k, v in (st.get("dataplane") or {}).items() if v and k.endswith(("dropped", "errors"))}
    lines.append("")
    lines.append("drops: " + (", ".join(f"{k} {v}" for k, v in sorted({**drops, **dp}.items())) or "none"))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from grouptun.control import request, socket_path
    from grouptun.errors import ControlError

    if args.socket or args.group:
        paths = [args.socket or socket_path(args.group, args.run_dir)]
    else:
        paths = sorted(Path(args.run_dir).glob("*.sock"))
        if not paths:
            raise ControlError(f"no grouptun daemon is running (no sockets in {args.run_dir})")
    answers = [request(path, "status") for path in paths]
    if args.json:
        json.dump(answers[0] if args.group or args.socket else answers, sys.stdout, indent=2, sort_keys=True)
        print()
    else:
        print("\n\n".join(format_status(a) for a in answers))
    return 0
