"""Fixtures for ops tests: a fake systemd notify socket (real AF_UNIX datagrams)."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import threading
import time

import pytest


def _parse(data: bytes) -> dict[str, str]:
    return dict(line.split("=", 1) for line in data.decode().split("\n") if line)


class FakeNotifySocket:
    """The manager's end of NOTIFY_SOCKET: collects datagrams as dicts.

    Without :meth:`start_reader` nothing reads the socket unless the test
    calls :meth:`drain` or :meth:`wait_for` (a manager that is not reading).
    With it, a thread drains the socket the way PID 1 does.
    """

    def __init__(self, sock: socket.socket, env_value: str) -> None:
        self.sock = sock
        self.sock.setblocking(False)
        self.env_value = env_value
        self.messages: list[dict[str, str]] = []
        self._seen = 0
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._reader: threading.Thread | None = None

    def _pull(self) -> None:
        """Move every queued datagram into messages (caller holds the lock)."""
        while True:
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                return
            self.messages.append(_parse(data))
            self._cond.notify_all()

    def drain(self) -> list[dict[str, str]]:
        """Every message that arrived since the previous drain (datagrams
        sent before this call are all included: AF_UNIX enqueues synchronously)."""
        with self._cond:
            self._pull()
            new = self.messages[self._seen:]
            self._seen = len(self.messages)
        return new

    def start_reader(self) -> None:
        def loop() -> None:
            while not self._stop.is_set():
                with self._cond:
                    self._pull()
                self._stop.wait(0.005)

        self._reader = threading.Thread(target=loop, daemon=True)
        self._reader.start()

    def wait_for(self, key: str, value: str | None = None, timeout: float = 10.0, start: int = 0,
                 contains: str | None = None) -> int:
        """Index of the first message at or after ``start`` with ``key`` (= value,
        or containing ``contains``); waits (bounded) for new datagrams."""
        def match(msg: dict) -> bool:
            return key in msg and (value is None or msg[key] == value) and (
                contains is None or contains in msg[key])

        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                self._pull()
                for i in range(start, len(self.messages)):
                    if match(self.messages[i]):
                        return i
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no {key}={value or contains or '*'} within {timeout}s; "
                                         f"got {self.messages}")
                self._cond.wait(min(left, 0.01))

    def close(self) -> None:
        self._stop.set()
        if self._reader is not None:
            self._reader.join(timeout=5)
        self.sock.close()


@pytest.fixture
def notify_socket():
    """An abstract-namespace notify socket ('@name' form)."""
    name = f"gt-ops-test-{os.getpid()}-{id(object())}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(b"\0" + name.encode())
    fake = FakeNotifySocket(sock, "@" + name)
    try:
        yield fake
    finally:
        fake.close()


@pytest.fixture
def notify_path_socket():
    """A filesystem notify socket (short path: sun_path is 108 bytes)."""
    directory = tempfile.mkdtemp(prefix="gt-ops-", dir="/tmp")
    path = os.path.join(directory, "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    fake = FakeNotifySocket(sock, path)
    try:
        yield fake
    finally:
        fake.close()
        shutil.rmtree(directory)
