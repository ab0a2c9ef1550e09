"""The daemon's control socket: ``grouptun status`` and ``grouptun down``.

A Unix stream socket, by default ``/run/grouptun/<group>.sock``, mode 0600
(bound under umask 077 with a temporary name and renamed into place once
listening: it is never wider, and never there without an answer), in a
0755 directory. One request per connection: a JSON object on one line
(``{"cmd": "status"}``, ``{"cmd": "down"}``, or ``{"cmd": "export", "args":
{...}}``: ``args`` become the handler's keyword arguments), one JSON line
back: ``{"ok": true, "result": ...}`` or ``{"ok": false, "error": "...",
"exit_code"?: int}``. A handler's GrouptunError is a refusal of the
request, answered with its message and its exit status (the client exits
with it, e.g. 77 for an export an export rule refuses) and not logged as a
failure.

The server runs on the daemon's event loop, so handlers read the session
from its own thread. Peers are checked with SO_PEERCRED: only root or the
daemon's own uid (defence in depth beside the file mode). Limits: requests
up to 64 KiB, 5 s per connection; unknown commands get an error answer.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import struct
from pathlib import Path
from typing import Callable

from grouptun.errors import ControlError, GrouptunError, SystemSetupError

log = logging.getLogger("grouptun.ops.ctlsocket")

MAX_REQUEST = 64 * 1024
TIMEOUT = 5.0
DEFAULT_RUN_DIR = Path("/run/grouptun")


def socket_path(group: str, run_dir: Path = DEFAULT_RUN_DIR) -> Path:
    return Path(run_dir) / f"{group}.sock"


def _peer_uid(writer: asyncio.StreamWriter) -> int | None:
    sock = writer.get_extra_info("socket")
    if sock is None:
        return None
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]


class ControlServer:
    """Serves ``handlers[cmd](**args) -> JSON-able`` on a Unix socket."""

    def __init__(self, path: Path, handlers: dict[str, Callable[..., object]]) -> None:
        self.path = Path(path)
        self.handlers = handlers
        self._server: asyncio.AbstractServer | None = None
        self._started = False
        self._tasks: set[asyncio.Task] = set()
        self._closing = False

    def check_free(self) -> None:
        """SystemSetupError if a live daemon already answers on our path; removes a stale socket."""
        self._prepare()

    def _prepare(self) -> None:
        self.path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        if self.path.exists() or self.path.is_symlink():
            if _is_alive(self.path):
                raise SystemSetupError(f"another daemon answers on {self.path}")
            self.path.unlink()  # stale socket from a crashed daemon

    async def start(self) -> None:
        """Listen. The socket is bound under a temporary name, made 0600, put in
        listening state and only then renamed into place, so a client never
        finds the path before the daemon answers on it."""
        self._prepare()
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            tmp.unlink(missing_ok=True)
            sock.bind(str(tmp))
            os.chmod(tmp, 0o600)
            sock.listen(16)
            os.rename(tmp, self.path)
        except OSError as exc:
            sock.close()
            tmp.unlink(missing_ok=True)
            raise SystemSetupError(f"cannot listen on {self.path}: {exc.strerror}") from exc
        finally:
            os.umask(old)
        self._started = True
        self._server = await asyncio.start_unix_server(self._serve, sock=sock, limit=MAX_REQUEST)

    async def close(self) -> None:
        """Stop accepting; the socket file stays until :meth:`remove` (the daemon's last step)."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        self._closing = True
        # A connection accepted just before close takes a few loop turns to reach
        # _serve; give it those turns (it then returns at once) and cancel the rest.
        for _ in range(8):
            await asyncio.sleep(0)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def remove(self) -> None:
        """Remove the socket file if it is still ours (``grouptun down`` waits for this)."""
        if self._started:
            self.path.unlink(missing_ok=True)
            self._started = False

    def _answer(self, line: bytes) -> dict:
        try:
            request = json.loads(line)
        except (ValueError, UnicodeDecodeError):
            return {"ok": False, "error": "request is not JSON"}
        cmd = request.get("cmd") if isinstance(request, dict) else None
        handler = self.handlers.get(cmd) if isinstance(cmd, str) else None
        if handler is None:
            return {"ok": False, "error": f"unknown command {cmd!r}; known: {', '.join(sorted(self.handlers))}"}
        args = request.get("args", {})
        if not isinstance(args, dict):
            return {"ok": False, "error": "args must be a JSON object"}
        try:
            return {"ok": True, "result": handler(**args)}
        except GrouptunError as exc:
            return {"ok": False, "error": str(exc), "exit_code": exc.exit_code}
        except Exception as exc:  # noqa: BLE001 - answered to the client and logged
            log.exception("control command %s failed", cmd)
            return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._closing:
            writer.close()
            return
        task = asyncio.current_task()
        self._tasks.add(task)
        try:
            uid = _peer_uid(writer)
            if uid not in (0, os.geteuid()):
                answer = {"ok": False, "error": "permission denied"}
            else:
                try:
                    line = await asyncio.wait_for(reader.readline(), TIMEOUT)
                except (asyncio.LimitOverrunError, ValueError):
                    line = b"\0"
                answer = self._answer(line)
            writer.write(json.dumps(answer, default=str).encode() + b"\n")
            await asyncio.wait_for(writer.drain(), TIMEOUT)
        except (asyncio.TimeoutError, ConnectionError) as exc:
            log.debug("control client went away: %r", exc)
        finally:
            writer.close()
            self._tasks.discard(task)


def _is_alive(path: Path) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(1.0)
    try:
        s.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        s.close()


def request(path: Path, cmd: str, timeout: float = TIMEOUT, args: dict | None = None) -> object:
    """Send one command (with keyword ``args`` for its handler); returns ``result`` or raises ControlError."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        try:
            s.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise ControlError(f"no daemon is running on {path}") from exc
        except PermissionError as exc:
            raise ControlError(f"permission denied on {path} (run as root)") from exc
        message = {"cmd": cmd} if args is None else {"cmd": cmd, "args": args}
        s.sendall(json.dumps(message).encode() + b"\n")
        chunks = []
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
            if chunk.endswith(b"\n"):
                break
    except socket.timeout as exc:
        raise ControlError(f"daemon on {path} did not answer within {timeout:g} s") from exc
    except OSError as exc:
        raise ControlError(f"control socket {path}: {exc.strerror or exc}") from exc
    finally:
        s.close()
    try:
        answer = json.loads(b"".join(chunks))
    except ValueError as exc:
        raise ControlError(f"daemon on {path} sent a malformed answer") from exc
    if not isinstance(answer, dict) or not answer.get("ok"):
        code = answer.get("exit_code") if isinstance(answer, dict) else None
        raise ControlError(str(answer.get("error") if isinstance(answer, dict) else "bad answer"),
                           code if type(code) is int and 1 <= code <= 125 else None)  # noqa: E721 - no bool
    return answer.get("result")
