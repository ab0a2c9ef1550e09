"""``grouptun status [GROUP] [--brief | --dump | --json]``: what ``wg show`` shows, for grouptun.

Asks each running daemon over its control socket (all sockets in the run
directory when no group is named). The default text form is for people;
``--brief`` prints one line per interface and one per member; ``--json``
prints the daemon's answer unchanged, for scripts; ``--dump`` prints
tab-separated fields in a fixed order, as ``wg show dump`` does::

    interface line:  group  member  index  listen-port  epoch  rx-drops  tx-drops
    one per member:  member  index  endpoint  addresses  last-seen  rx-bytes  tx-bytes  rx-packets  tx-packets

``epoch`` is the epoch this host sends on (0: none yet); the drops are the
sums of the receive and send reasons (``grouptun.core.counters``);
``addresses`` are comma-separated; ``last-seen`` is in unix seconds, 0 for
never; a missing endpoint or address is ``(none)``. Without GROUP every
line starts with the interface name (``wg show all dump``).

Issue 17: the default form also shows the member's signed attributes, its
deadline and the group's metadata (``membership`` in ``--json``). A member
the provider removed leaves a note beside its socket
(``grouptun.ops.removednote``): once its daemon has gone, ``status`` prints
that note (``--json``: the note's object) and exits 67. The access policy
line shows the active policy version and, per rule, the packets it denied
(``policy`` in ``--json``: ``grouptun.core.policy.PolicyEnforcer.status``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from grouptun.ops.ctlsocket import DEFAULT_RUN_DIR
from grouptun.core.counters import RECEIVE_REASONS, SEND_REASONS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("group", nargs="?", help="group name (default: every running group)")
    form = parser.add_mutually_exclusive_group()
    form.add_argument("--json", action="store_true", help="the daemon's answer as JSON, for scripts")
    form.add_argument("--dump", action="store_true", help="tab-separated fields, one line per member (wg show dump)")
    form.add_argument("--brief", action="store_true", help="one line per interface and per member")
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
        text = "reachable" + (f", answered by {cp['provider_url']}" if cp.get("provider_url") else "")
    else:
        text = "unreachable" if cp.get("last_contact") is None or cp.get("last_error") else "not yet contacted"
    if cp.get("last_error"):
        text += f"; last error: {cp['last_error']}"
    if cp.get("archive_version") is not None:
        text += f"; archive version {cp['archive_version']}"
    if not cp.get("provider_ok") and cp.get("provider_url"):
        text += f"; last answered by {cp['provider_url']}"
    if len(cp.get("provider_urls") or ()) > 1:
        text += f"; URLs {', '.join(cp['provider_urls'])}"
    return f"provider: {text}"


def _link_line(cp: dict) -> str:
    """A group a linked provider owns: our (home) provider and its link to the owner, as last seen."""
    link = cp["link"]
    home = cp.get("provider_url") or ", ".join(cp.get("provider_urls") or ()) or "?"
    text = link.get("state", "unknown")
    if text == "unreachable":
        if isinstance(link.get("since"), (int, float)):
            text += f" since {time.strftime('%H:%M:%S', time.localtime(link['since']))}"
        if link.get("reason"):
            text += f" ({link['reason']})"
        text += "; the held epoch keeps carrying traffic"
    if isinstance(link.get("seen_at"), (int, float)):
        text += f"; seen {time.strftime('%H:%M:%S', time.localtime(link['seen_at']))}"
    return f"home provider: {home}; link to owner: {text}"


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
    if cp.get("link"):
        lines.append("  " + _link_line(cp))
    if cp.get("removed"):
        lines.append(f"  REMOVED: {cp['removed']} (this daemon stopped sending and exits, status 67)")
    lines.extend(_membership_lines(st.get("membership") or {}))
    lines.extend(_policy_lines(st.get("policy") or {}))
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
    names = st.get("names")
    if names:
        where = ", ".join(names.get("listening") or []) or "no address (see the log)"
        lines.append(f"  names: *.{names.get('domain')} on {where} port {names.get('port')}"
                     + (", registered with systemd-resolved" if names.get("resolved") else ""))
        if names.get("client_limited") or names.get("rate_limited"):
            lines.append(f"  names over the rate: {names.get('client_limited', 0)} queries dropped per client"
                         f" ({names.get('clients', 0)} clients), {names.get('rate_limited', 0)} over the total")
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
        if m.get("routes"):
            lines.append(f"  subnet routes: {', '.join(m['routes'])}")
        lines.append(f"  endpoint: {m.get('endpoint') or '(unknown)'}")
        lines.append(f"  last seen: {_age(m.get('last_seen_age'))}" + (" ago" if m.get('last_seen_age') is not None else ""))
        lines.append(f"  transfer: {_bytes(m.get('rx_bytes', 0))} received ({m.get('rx_packets', 0)} packets), "
                     f"{_bytes(m.get('tx_bytes', 0))} sent ({m.get('tx_packets', 0)} packets)")
    drops = {k: v for k, v in (session.get("drops") or {}).items() if v}
    dp = {k: v for k, v in (st.get("dataplane") or {}).items() if v and k.endswith(("dropped", "errors"))}
    lines.append("")
    lines.append("drops: " + (", ".join(f"{k} {v}" for k, v in sorted({**drops, **dp}.items())) or "none"))
    return "\n".join(lines)


def _when(ts) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


def _membership_lines(ms: dict) -> list[str]:
    """Signed attributes, the member's deadline and the group's metadata (grouptun extensions)."""
    from grouptun.core.attributes import render

    lines = []
    if ms.get("attributes"):
        lines.append(f"  attributes: {render(ms['attributes'])}")
    if ms.get("expires_at") is not None:
        lines.append(f"  member until: {_when(ms['expires_at'])}")
    group = ms.get("group") or {}
    if group.get("owner"):
        lines.append(f"  group owner: {render(group['owner'])}")
    if group.get("owners"):
        lines.append(f"  group owners: {', '.join(group['owners'])}")
    if group.get("expires_at") is not None:
        lines.append(f"  group until: {_when(group['expires_at'])}")
    return lines


def _policy_lines(pol: dict) -> list[str]:
    """The active policy version and the deny count of every rule that denied something, and the default's."""
    if pol.get("version") is None:
        return ["  policy: none (everything allowed)"]
    denied = [f"rule {r['rule']} ({r['text']}) {r['denied']}" for r in pol.get("rules") or [] if r.get("denied")]
    if pol.get("default_denied"):
        denied.append(f"default {pol['default_denied']}")
    ct = pol.get("conntrack") or {}
    rules = len(pol.get("rules") or [])
    return [f"  policy: version {pol['version']}, {rules} rules, default {pol.get('default')}; "
            f"{ct.get('entries', 0)}/{ct.get('max', 0)} flows tracked",
            f"  policy denied: {', '.join(denied) or 'none'}"]


def format_removed(note: dict) -> str:
    """What a removed member's note (grouptun.ops.removednote) says, once its daemon has gone."""
    return (f"group {note.get('group')}: member {note.get('member')} was REMOVED at "
            f"{_when(note.get('removed_at', 0))}: {note.get('reason')}\n  (the daemon stopped, status 67; "
            "ask the group's admin for a new invitation)")


def current_epoch(st: dict) -> int | None:
    """The epoch this host sends on, or None before the first one."""
    sending = [e.get("epoch") for e in (st.get("session") or {}).get("epochs") or [] if e.get("sending")]
    return sending[0] if sending else None


def _own_index(st: dict):
    own = [m.get("index") for m in (st.get("session") or {}).get("members") or [] if m.get("self")]
    return own[0] if own else None


def _others(st: dict) -> list[dict]:
    return [m for m in (st.get("session") or {}).get("members") or [] if not m.get("self")]


def _drop_sums(st: dict) -> tuple[int, int]:
    drops = (st.get("session") or {}).get("drops") or {}
    return sum(drops.get(r, 0) for r in RECEIVE_REASONS), sum(drops.get(r, 0) for r in SEND_REASONS)


def _seen_unix(member: dict, now_wall: float) -> int:
    age = member.get("last_seen_age")
    return 0 if age is None else int(round(now_wall - age))


def format_dump(st: dict, now_wall: float, prefix: str = "") -> str:
    """The ``--dump`` lines of one daemon (columns in the module docstring)."""
    rx_drops, tx_drops = _drop_sums(st)
    own = _own_index(st)
    rows = [[st.get("group"), st.get("member"), "(none)" if own is None else own, st.get("listen_port") or 0,
             current_epoch(st) or 0, rx_drops, tx_drops]]
    for m in _others(st):
        rows.append([m.get("name"), m.get("index"), m.get("endpoint") or "(none)",
                     ",".join(m.get("addresses") or []) or "(none)", _seen_unix(m, now_wall),
                     m.get("rx_bytes", 0), m.get("tx_bytes", 0), m.get("rx_packets", 0), m.get("tx_packets", 0)])
    return "\n".join(prefix + "\t".join(str(v) for v in row) for row in rows)


def format_brief(st: dict) -> str:
    """One line for the interface, one per member."""
    rx_drops, tx_drops = _drop_sums(st)
    epoch = current_epoch(st)
    lines = [f"{st.get('interface')}: group {st.get('group')}, member {st.get('member')} (index {_own_index(st)}), "
             f"epoch {epoch if epoch is not None else 'none yet'}, port {st.get('listen_port')}, "
             f"drops {rx_drops} received {tx_drops} sent"]
    rows = [(m.get("name") or "", str(m.get("index")), m.get("endpoint") or "(none)",
             ",".join(m.get("addresses") or []) or "(none)",
             _age(m.get("last_seen_age")) + (" ago" if m.get("last_seen_age") is not None else ""),
             f"rx {_bytes(m.get('rx_bytes', 0))}", f"tx {_bytes(m.get('tx_bytes', 0))}") for m in _others(st)]
    widths = [max((len(row[i]) for row in rows), default=0) for i in range(7)]
    for row in rows:
        lines.append("  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    return "\n".join(lines)


def daemon_sockets(group: str | None, sock: Path | None, run_dir: Path) -> list[Path]:
    """The control socket named by GROUP or --socket, else every socket in the run directory."""
    from grouptun.ops.ctlsocket import socket_path
    from grouptun.errors import ControlError

    if sock or group:
        return [sock or socket_path(group, run_dir)]
    paths = sorted(Path(run_dir).glob("*.sock"))
    if not paths:
        raise ControlError(f"no grouptun daemon is running (no sockets in {run_dir})")
    return paths


def _removed_notes(group: str | None, sock: Path | None, run_dir: Path) -> list[dict]:
    """Notes of removed members (grouptun.ops.removednote): the named group's, else every one in ``run_dir``."""
    from grouptun.ops import removednote
    from grouptun.ops.ctlsocket import socket_path

    if sock or group:
        sockets = [sock or socket_path(group, run_dir)]
    else:
        sockets = sorted(p.with_suffix(".sock") for p in Path(run_dir).glob("*" + removednote.SUFFIX))
    return [n for n in (removednote.read(p) for p in sockets) if n is not None]


def run(args: argparse.Namespace) -> int:
    from grouptun.ops.ctlsocket import request
    from grouptun.errors import ControlError, MemberRemoved

    named = bool(args.group or args.socket)
    try:
        answers = [request(path, "status") for path in daemon_sockets(args.group, args.socket, args.run_dir)]
    except ControlError:
        notes = _removed_notes(args.group, args.socket, args.run_dir)
        if not notes:
            raise
        # the removed member's daemon has gone: its note says why (--json: the note itself)
        print(json.dumps(notes[0] if named else notes, indent=2, sort_keys=True) if args.json
              else "\n".join(format_removed(n) for n in notes))
        return MemberRemoved.exit_code
    if args.json:
        json.dump(answers[0] if named else answers, sys.stdout, indent=2, sort_keys=True)
        print()
    elif args.dump:
        now = time.time()
        print("\n".join(format_dump(a, now, "" if named else f"{a.get('interface')}\t") for a in answers))
    elif args.brief:
        print("\n".join(format_brief(a) for a in answers))
    else:
        print("\n\n".join(format_status(a) for a in answers))
    return 0
