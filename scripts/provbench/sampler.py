"""A CPU-weighted stack sampler for a provider process, and the launcher that runs one under it.

    python3 scripts/provbench/sampler.py OUT.json {toggle|always} -- <provider.cli arguments>

Every ``INTERVAL`` s a thread reads each other thread's CPU time
(``/proc/self/task/TID/schedstat``, nanoseconds) and its Python stack
(``sys._current_frames``), and charges the CPU that thread used since the
last sample to the category of its innermost recognisable frame (HPKE,
signing, request verification, database, gzip, TLS, framework, ...;
``CATEGORIES``, by priority).
CPU, not wall time: idle threads (a thread pool waiting, the event loop in
epoll) cost nothing, so the shares say where the processor went.
Time spent in C under uvloop with no Python frame of its own (socket I/O,
uvloop's TLS buffering) shows as "event loop (C: sockets, uvloop)".

``toggle``: sample between two SIGUSR1 (the bench sends them around the
rekey fan-out) and write OUT.json at the second; ``always``: from start
to exit (the admin CLI's ``group rekey``). Loopback benchmark use only.
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import sys
import threading
import time
from collections import Counter

INTERVAL = 0.002
MAX_SECONDS = 600.0  # a sampler left on stops by itself

# (category, substrings of "filename:function"), by priority: a stack is charged to the first
# category any of its frames matches (HPKE under open_epoch is HPKE; a query under a route is database)
CATEGORIES = (
    ("imports (process start)", ("<frozen importlib",)),
    ("HPKE (capsules, sealed salts)", ("grouptun/core/capsule", "hpke", "provider/epochs.py:build_epoch")),
    ("signing (Ed25519 + ML-DSA-65)", ("provider/keys.py:sign", "mldsa")),
    ("request signature check", ("grouptun/control/reqsign",)),
    ("gzip", ("gzip.py", "zlib")),
    ("database", ("sqlalchemy", "sqlite3", "psycopg")),
    ("TLS (ssl module)", ("/ssl.py",)),
    ("HTTP protocol (h11, provider/connlimits.py)", ("provider/connlimits", "/h11/")),
    ("JSON / archive encoding", ("json/", "provider/archives.py", "grouptun/core/archive.py",
                                 "grouptun/core/archivemember.py", "grouptun/core/envelope.py")),
    ("provider code", ("provider/",)),
    ("framework: pydantic (query/path validation)", ("pydantic",)),
    ("framework: fastapi/starlette (routing, dependencies, responses)", ("fastapi", "starlette", "anyio")),
    ("framework: uvicorn (ASGI server)", ("uvicorn",)),
    ("asyncio", ("asyncio/",)),
)
EVENT_LOOP = "event loop (C: sockets, uvloop)"
OTHER = "other Python (imports, startup)"
LOOP_RUNNERS = ("run_forever", "run_until_complete", "_run_once")


def categorize(frame) -> str:
    if frame.f_code.co_name in LOOP_RUNNERS or frame.f_code.co_filename.endswith("asyncio/runners.py"):
        return EVENT_LOOP  # no Python frame of its own: uvloop's C (epoll, socket writes, TLS buffers)
    wheres, depth = [], 0
    while frame is not None and depth < 200:
        wheres.append(f"{frame.f_code.co_filename}:{frame.f_code.co_name}")
        frame, depth = frame.f_back, depth + 1
    for name, needles in CATEGORIES:
        if any(n in where for where in wheres for n in needles):
            return name
    return OTHER


def _cpu_ns(tid: int) -> int | None:
    try:
        with open(f"/proc/self/task/{tid}/schedstat") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None  # the thread ended


class Sampler:
    def __init__(self) -> None:
        self.cpu: Counter = Counter()  # category -> CPU ns
        self.on = threading.Event()
        self.stopped = threading.Event()
        self._last: dict[int, int] = {}
        self._me = 0

    def start(self) -> None:
        threading.Thread(target=self._run, name="bench-sampler", daemon=True).start()

    def _run(self) -> None:
        self._me = threading.get_native_id()
        deadline = time.monotonic() + MAX_SECONDS
        while not self.stopped.is_set() and time.monotonic() < deadline:
            if self.on.wait(0.1):
                self._sample()
                time.sleep(INTERVAL)

    def _sample(self) -> None:
        natives = {t.ident: t.native_id for t in threading.enumerate()}
        for ident, frame in sys._current_frames().items():  # noqa: SLF001 -- a profiler's job
            tid = natives.get(ident)
            if tid is None or tid == self._me:
                continue
            now = _cpu_ns(tid)
            if now is None:
                continue
            before = self._last.get(tid)
            self._last[tid] = now
            if before is not None and now > before:
                self.cpu[categorize(frame)] += now - before

    def dump(self, path: str) -> None:
        with open(path + ".tmp", "w") as f:
            json.dump({k: v / 1e9 for k, v in self.cpu.items()}, f)
        os.replace(path + ".tmp", path)


def main(argv: list[str]) -> int:
    out, mode, sep, *rest = argv
    if sep != "--" or mode not in ("toggle", "always"):
        raise SystemExit("usage: sampler.py OUT.json {toggle|always} -- ARGS")
    sampler = Sampler()
    sampler.start()
    if mode == "always":
        sampler.on.set()
        atexit.register(lambda: (sampler.on.clear(), sampler.dump(out)))
    else:
        def toggle(_signum, _frame) -> None:
            if sampler.on.is_set():
                sampler.on.clear()
                sampler.dump(out)
            else:
                sampler.cpu.clear()
                sampler._last.clear()  # noqa: SLF001
                sampler.on.set()

        signal.signal(signal.SIGUSR1, toggle)
    from provider.cli import main as provider_main  # noqa: PLC0415 -- after the sampler is in place

    return provider_main(rest)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
