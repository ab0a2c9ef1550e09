"""Fuzz target ``jointoken``: the join token parser (grouptun.core.jointoken).

Input: the token text (UTF-8; undecodable bytes become U+FFFD, as a terminal would show them).
"""

from __future__ import annotations

from grouptun.core.jointoken import MAX_TOKEN_CHARS, PREFIX, JoinToken, b64url, parse_join_token
from grouptun.errors import ConfigError

INVARIANT = (
    "parse_join_token raises nothing but ConfigError naming the key 'join token'; a token it "
    "accepts prints (str) as a token of at most 2048 characters that parses back to an equal one.")


def test_one_input(data: bytes) -> None:
    text = data.decode("utf-8", "replace")
    try:
        token = parse_join_token(text)
    except ConfigError as exc:
        assert exc.key == "join token", f"ConfigError names {exc.key!r}"
        return
    printed = str(token)
    assert printed.startswith(PREFIX) and len(printed) <= MAX_TOKEN_CHARS
    assert parse_join_token(printed) == token


def seeds() -> dict[str, bytes]:
    good = JoinToken("https://provider.example:8443", "ab" * 32, "cd" * 32, b64url(bytes(range(32))))
    v6 = JoinToken("https://[fd00::1]:8443", "01" * 32, "23" * 32, b64url(bytes(32)))
    replicas = JoinToken("https://a.example:8443", "ab" * 32, "cd" * 32, b64url(bytes(32)),
                         ("https://a.example:8443", "https://b.example:8443"))
    return {"good": str(good).encode(), "ipv6": str(v6).encode(), "replicas": str(replicas).encode(), "prefix-only": PREFIX.encode(),
            "padded": (" " + str(good) + "\n").encode()}
