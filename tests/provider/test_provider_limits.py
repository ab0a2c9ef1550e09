"""Connection limits of the real provider (issue 14, defect 3), attacked from outside over TLS sockets.

The server runs with small limits (``LIMITS``) so each deadline takes about a
second; bounds asserted here are generous multiples of them, and the times
and RSS figures are printed.
"""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time

import pytest

from provider_helpers import admin, configure, init_provider, tls_socket

LIMITS = {"http_max_header_bytes": 8192, "http_max_headers": 32, "http_header_timeout": 1.5,
          "http_body_timeout": 1.5, "http_max_connections_per_address": 4, "http_max_connections": 12}
GENEROUS = 15.0  # seconds: ten times a deadline, for a loaded 2-core machine
HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: provider\r\n\r\n"
Seen = tuple[str, int | None, float]  # what a client saw: state, HTTP status, seconds


@pytest.fixture(scope="module")
def limited(tmp_path_factory):
    env = init_provider(tmp_path_factory.mktemp("limited"))
    configure(env, **LIMITS)
    env.server.extra = ("--metrics",)
    env.server.start()
    env.output = env.server.collect_output()
    try:
        yield env
    finally:
        env.server.stop()


def outcome(sock: ssl.SSLSocket, timeout: float = GENEROUS, since: float | None = None) -> Seen:
    """("status", code, seconds) for an answer, ("closed", None, s) for EOF or reset, ("open", None, s) if neither.

    Seconds count from ``since`` (a ``time.monotonic()``; default: now), the timeout from now.
    """
    start, data = since or time.monotonic(), b""
    timeout += time.monotonic() - start
    while time.monotonic() - start < timeout:
        sock.settimeout(max(0.05, timeout - (time.monotonic() - start)))
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            break
        except (ConnectionError, ssl.SSLError, OSError):
            return "closed", None, time.monotonic() - start
        if not chunk:
            break
        data += chunk
        if b"\r\n\r\n" in data:
            return "status", int(data.split(b" ", 2)[1]), time.monotonic() - start
    state = "closed" if not data and time.monotonic() - start < timeout else "open"
    return state, None, time.monotonic() - start


def send_quietly(sock: ssl.SSLSocket, data: bytes) -> bool:
    """sendall; False when the server closed the connection under us (which is what a limit does)."""
    try:
        sock.sendall(data)
        return True
    except (ConnectionError, ssl.SSLError, OSError):
        return False


def test_oversized_header_gets_431_whole_or_unfinished(limited):
    big = b"GET /healthz HTTP/1.1\r\nHost: provider\r\nX-Big: "
    with tls_socket(limited.port) as sock:  # one TLS record: the server has read it all when it answers
        sock.sendall(big + b"a" * 12000 + b"\r\n\r\n")
        assert outcome(sock)[:2] == ("status", 431)
    # Larger: the server answers and closes with the rest unread, so the kernel may reset first.
    for ending, size in ((b"\r\n\r\n", 65536), (b"", 1 << 20)):  # whole, and never finished
        with tls_socket(limited.port) as sock:
            sent = send_quietly(sock, big + b"a" * size + ending)
            state, status, seconds = outcome(sock)
            assert (state, status) in {("status", 431), ("closed", None)}, (size, state, status, sent)
            print(f"{size >> 10} KiB header{'' if ending else ', unfinished'}: {state} {status} after {seconds:.2f}s")


def test_too_many_header_fields_get_431(limited):
    fields = b"".join(b"X-F%d: 1\r\n" % i for i in range(LIMITS["http_max_headers"] + 8))
    with tls_socket(limited.port) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: provider\r\n" + fields + b"\r\n")
        assert outcome(sock)[:2] == ("status", 431)
    with tls_socket(limited.port) as sock:  # within the limits: served
        sock.sendall(HEALTHZ)
        assert outcome(sock)[:2] == ("status", 200)


def _trickle(sock: ssl.SSLSocket, head: bytes, filler: bytes) -> None:
    """``head``, then a byte of ``filler`` every 0.25 s until the server closes (or GENEROUS seconds)."""
    start = time.monotonic()
    if send_quietly(sock, head):
        while time.monotonic() - start < GENEROUS and send_quietly(sock, filler):
            time.sleep(0.25)


def _slow(limited, head: bytes, filler: bytes, sources: list[str]) -> dict[str, Seen]:
    """Trickle ``filler`` after ``head`` on one connection per source; what each one saw, and when."""
    began = time.monotonic()
    socks = {src: tls_socket(limited.port, src) for src in sources}
    threads = [threading.Thread(target=_trickle, args=(sock, head, filler)) for sock in socks.values()]
    for thread in threads:
        thread.start()
    seen = {}
    try:
        for src, sock in socks.items():
            seen[src] = outcome(sock, GENEROUS + 2, since=began)
    finally:
        for sock in socks.values():
            sock.close()
        for thread in threads:
            thread.join(timeout=GENEROUS + 5)
    return seen


def test_slow_header_is_closed_after_the_deadline(limited):
    seen = _slow(limited, b"GET /healthz HTTP/1.1\r\nHost: provider\r\n", b"X", ["127.0.0.21", "127.0.0.22"])
    with tls_socket(limited.port, "127.0.0.23") as idle:  # sends nothing after the handshake
        seen["idle"] = outcome(idle, GENEROUS + 2)
    print("slow header: " + ", ".join(f"{k} {s} {c} after {t:.2f}s" for k, (s, c, t) in seen.items()))
    for state, status, seconds in seen.values():
        assert (state, status) in {("status", 408), ("closed", None)}, seen
        assert seconds < GENEROUS, seen


def test_slow_body_is_closed_after_the_deadline(limited):
    head = (b"POST /v1/enroll HTTP/1.1\r\nHost: provider\r\nContent-Type: application/json\r\n"
            b"Content-Length: 4000\r\n\r\n{")
    seen = _slow(limited, head, b" ", ["127.0.0.31", "127.0.0.32"])
    print("slow body: " + ", ".join(f"{k} {s} {c} after {t:.2f}s" for k, (s, c, t) in seen.items()))
    for state, status, seconds in seen.values():
        assert (state, status) in {("status", 408), ("closed", None)}, seen
        assert seconds < GENEROUS, seen


def _served(port: int, source: str) -> tuple[ssl.SSLSocket, tuple]:
    sock = tls_socket(port, source)
    send_quietly(sock, HEALTHZ)
    return sock, outcome(sock, 5.0)


def _served_soon(port: int, source: str) -> tuple[ssl.SSLSocket, tuple]:
    """``_served``, retried for up to 5 s: connections closed a moment ago count until the server sees them go."""
    for _ in range(50):
        sock, seen = _served(port, source)
        if seen[:2] == ("status", 200):
            break
        sock.close()
        time.sleep(0.1)
    return sock, seen


def test_connections_over_the_caps_are_refused_and_others_served(limited):
    per_address, total = LIMITS["http_max_connections_per_address"], LIMITS["http_max_connections"]
    held = []
    try:
        for _ in range(per_address):  # kept alive after their answer
            sock, seen = _served_soon(limited.port, "127.0.0.41")
            held.append(sock)
            assert seen[:2] == ("status", 200), seen
        sock, over = _served(limited.port, "127.0.0.41")
        sock.close()
        assert over[:2] in {("status", 429), ("closed", None)}, over
        for i in range(total - per_address):  # others still served, up to the total
            sock, seen = _served_soon(limited.port, f"127.0.0.{42 + i // per_address}")
            held.append(sock)
            assert seen[:2] == ("status", 200), (i, seen)
        sock, over_total = _served(limited.port, "127.0.0.49")
        held.append(sock)
        assert over_total[:2] in {("status", 503), ("closed", None)}, over_total
    finally:
        for sock in held:
            sock.close()
    sock, seen = _served_soon(limited.port, "127.0.0.41")
    sock.close()
    assert seen[:2] == ("status", 200), seen


def test_upgrade_requests_do_not_use_up_the_address(limited):
    """A WebSocket upgrade would move the connection to another protocol, out of the address's count."""
    upgrade = (b"GET /healthz HTTP/1.1\r\nHost: provider\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    for _ in range(LIMITS["http_max_connections_per_address"] + 2):
        with tls_socket(limited.port, "127.0.0.51") as sock:
            sock.sendall(upgrade)
            assert outcome(sock, 5.0)[0] in ("status", "closed")
    sock, seen = _served_soon(limited.port, "127.0.0.51")
    sock.close()
    assert seen[:2] == ("status", 200), seen


def test_rss_stays_bounded_under_a_flood_of_unfinished_headers(limited):
    flood, size = 10, 8 << 20  # within the connection caps: only the header limit bounds this
    time.sleep(0.5)
    before = limited.server.rss_kib()
    socks = [tls_socket(limited.port, f"127.0.1.{i + 1}") for i in range(flood)]
    peak = [before]
    chunk = b"a" * (256 << 10)

    def flood_one(sock):
        if send_quietly(sock, b"GET /healthz HTTP/1.1\r\nHost: provider\r\nX-Big: "):
            for _ in range(size // len(chunk)):
                if not send_quietly(sock, chunk):
                    return

    threads = [threading.Thread(target=flood_one, args=(sock,)) for sock in socks]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 60
    while any(t.is_alive() for t in threads) and time.monotonic() < deadline:
        peak[0] = max(peak[0], limited.server.rss_kib())
        time.sleep(0.05)
    peak[0] = max(peak[0], limited.server.rss_kib())
    for sock in socks:
        sock.close()
    for thread in threads:
        thread.join(timeout=10)
    time.sleep(1.0)
    after = limited.server.rss_kib()
    print(f"RSS before {before / 1024:.1f} MiB, peak {peak[0] / 1024:.1f} MiB, after {after / 1024:.1f} MiB "
          f"({flood} connections x {size >> 20} MiB unfinished header)")
    assert peak[0] - before < 32 * 1024, (before, peak[0], after)  # the flood itself is 80 MiB


def test_bad_bodies_are_400_and_the_server_logs_no_traceback(limited):
    for value in (b"NaN", b"1e999999", b"-Infinity", b"1" * 5000):
        body = b'{"secret": ' + value + b"}"
        with tls_socket(limited.port) as sock:
            sock.sendall(b"POST /v1/enroll HTTP/1.1\r\nHost: provider\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            assert outcome(sock)[:2] == ("status", 400), value[:10]
    time.sleep(0.3)
    assert not any("Traceback" in line for line in limited.output), "".join(limited.output)[-3000:]


def test_a_bad_limit_in_provider_json_names_the_key(tmp_path):
    env = init_provider(tmp_path)
    written = json.loads((env.state / "provider.json").read_text())
    assert written["http_max_header_bytes"] == 16384 and written["http_header_timeout"] == 10
    for key, value in (("http_header_timeout", -1), ("http_max_headers", 2.5), ("http_max_connections", True)):
        configure(env, **{key: value})
        proc = admin(env.state, "serve", "--listen", f"127.0.0.1:{env.port}", check=False)
        assert proc.returncode == 78 and key in proc.stderr, (key, proc.returncode, proc.stderr)
        configure(env, **{key: written[key]})


MALFORMED = {
    "content-length-not-a-number": b"POST /v1/enroll HTTP/1.1\r\nHost: p\r\nContent-Length: abc\r\n\r\n{}",
    "content-length-negative": b"POST /v1/enroll HTTP/1.1\r\nHost: p\r\nContent-Length: -1\r\n\r\n{}",
    "content-length-twice": b"POST /v1/enroll HTTP/1.1\r\nHost: p\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
    "content-length-and-chunked": (b"POST /v1/enroll HTTP/1.1\r\nHost: p\r\nContent-Length: 2\r\n"
                                   b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"),
    "bad-chunk-size": b"POST /v1/enroll HTTP/1.1\r\nHost: p\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
    "huge-content-length": b"POST /v1/enroll HTTP/1.1\r\nHost: p\r\nContent-Length: 99999999999999999999\r\n\r\n{}",
    "bad-header-name": b"GET /healthz HTTP/1.1\r\nHost: p\r\nBad Name: x\r\n\r\n",
    "control-bytes-in-value": b"GET /healthz HTTP/1.1\r\nHost: p\r\nX-A: a\x00b\r\n\r\n",
    "garbage-request-line": b"\x16\x03\x01 nonsense\r\n\r\n",
    "http2-preface": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    "no-host": b"GET /healthz HTTP/1.1\r\n\r\n",
}


def test_malformed_requests_get_4xx_and_no_traceback(limited):
    seen = {}
    for case, request in MALFORMED.items():
        with tls_socket(limited.port) as sock:
            send_quietly(sock, request)
            seen[case] = outcome(sock, 5.0)[:2]
    print("malformed: " + ", ".join(f"{case} {status or state}" for case, (state, status) in seen.items()))
    assert all(state == "status" and 400 <= status < 500 for state, status in seen.values()), seen
    time.sleep(0.3)
    assert not any("Traceback" in line for line in limited.output), "".join(limited.output)[-3000:]


def _refusal_counts(port: int) -> dict[str, float]:
    """``grouptun_provider_connections_refused_total`` by reason, from ``GET /metrics`` (loopback clients only)."""
    with tls_socket(port) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: provider\r\nConnection: close\r\n\r\n")
        text = b""
        while chunk := sock.recv(65536):
            text += chunk
    return {line.split('"')[1]: float(line.rsplit(" ", 1)[1]) for line in text.decode().splitlines()
            if line.startswith("grouptun_provider_connections_refused_total{")}


def test_refusals_are_counted_in_the_metrics(limited):
    before = _refusal_counts(limited.port)
    with tls_socket(limited.port, "127.0.0.61") as idle, tls_socket(limited.port, "127.0.0.62") as big:
        big.sendall(b"GET /healthz HTTP/1.1\r\nHost: provider\r\nX-Big: " + b"a" * 12000 + b"\r\n\r\n")
        assert outcome(big)[:2] == ("status", 431)
        assert outcome(idle)[:2] == ("status", 408)
    after = _refusal_counts(limited.port)
    print(f"refusals counted: {after}")
    for reason in ("header-too-large", "header-timeout"):
        assert after.get(reason, 0) >= before.get(reason, 0) + 1, (reason, before, after)
