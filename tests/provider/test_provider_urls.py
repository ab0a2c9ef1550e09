"""The provider's public URL list (issue 16, item 3): ``init --public-url``, provider.json ``public_urls``,
join tokens and signed archives carrying it; a real server on loopback, whose first listed URL is a closed port."""

from __future__ import annotations

import json

from grouptun.core.archive import verify_archive
from grouptun.core.jointoken import PREFIX, b64url_decode, parse_join_token
from provider_helpers import ServerProc, TestMember, admin, configure, free_port, init_provider


def test_tokens_and_archives_carry_the_public_urls_and_members_get_through_a_dead_first_one(tmp_path):
    port, dead = free_port(), free_port()   # nothing listens on `dead`: connections are refused
    live, gone = f"https://127.0.0.1:{port}", f"https://127.0.0.1:{dead}"
    state = tmp_path / "state"
    out = admin(state, "init", "--url", live, "--public-url", gone, "--public-url", live).stdout
    assert f"public urls:      {gone}, {live}" in out
    assert json.loads((state / "provider.json").read_text())["public_urls"] == [gone, live]
    admin(state, "group", "create", "lan", "--cidr", "10.77.0.0/24")
    server = ServerProc(state, port).start()
    try:
        tokens = {name: admin(state, "invite", "lan", name).stdout.strip() for name in ("alice", "bob")}
        assert parse_join_token(tokens["alice"]).provider_urls == (gone, live)
        alice, bob = TestMember("alice"), TestMember("bob")
        result = alice.enroll(tokens["alice"])          # the first URL refuses: enrolled through the second
        assert verify_archive(result.archive, result.provider_keys).provider_urls == (gone, live)
        bob.enroll(tokens["bob"])
        client = alice.client()
        assert client.url == gone
        archive = verify_archive(client.archive(), result.provider_keys)
        assert archive.provider_urls == (gone, live) and archive.epoch is not None
        assert client.answered_by == live
        assert {url.split("/v1", 1)[0] for _, url, _, _ in alice.sessions.sent} == {gone, live}
    finally:
        server.stop()


def test_without_public_urls_tokens_and_archives_keep_the_older_form(tmp_path):
    env = init_provider(tmp_path)
    admin(env.state, "group", "create", "lan", "--cidr", "10.77.0.0/24")
    assert "public_urls" not in env.config
    env.server.start()
    try:
        token = env.invite("alice")
        assert "urls" not in json.loads(b64url_decode(token[len(PREFIX):]))
        result = TestMember("alice").enroll(token)
        archive = verify_archive(result.archive, result.provider_keys)
        assert archive.provider_urls == ()
        assert b"provider_urls" not in result.archive
    finally:
        env.server.stop()


def test_a_bad_public_url_names_the_setting_and_writes_nothing(tmp_path):
    state = tmp_path / "state"
    for bad in (["http://127.0.0.1:1"], ["https://a:1", "https://a:1"], [f"https://h{i}:1" for i in range(9)]):
        args = [arg for url in bad for arg in ("--public-url", url)]
        proc = admin(state, "init", "--url", "https://127.0.0.1:1", *args, check=False)
        assert proc.returncode == 78 and "--public-url" in proc.stderr, proc.stderr
        assert not state.exists()
    env = init_provider(tmp_path / "other")
    configure(env, public_urls=["https://ok:1", "ftp://nope"])
    proc = admin(env.state, "invite", "lan", "alice", check=False)
    assert proc.returncode == 78 and "provider.json public_urls" in proc.stderr, proc.stderr
    configure(env, public_urls="https://ok:1")   # a string, not a list
    proc = admin(env.state, "group", "list", check=False)
    assert proc.returncode == 78 and "public_urls" in proc.stderr
