"""The admin CLI over HTTPS (``grouptun-provider --url --admin-key``, provider/cli_remote.py) against a real
server: the same --json shapes as the direct commands, refusals as one line with the exit code, and the
admin key encrypted with the provider passphrase when the provider has one."""

from __future__ import annotations

import json
import re

from provider_helpers import ServerProc, TestMember, admin, free_port


def _init(tmp, env=None):
    port = free_port()
    state = tmp / "state"
    out = admin(state, "init", "--url", f"https://127.0.0.1:{port}", env=env).stdout
    fingerprint = re.search(r"tls fingerprint:\s+(\S+)", out).group(1)
    key = re.search(r"admin key:\s+(admin:\S+) in (\S+)", out)
    return state, port, fingerprint, key.group(1), key.group(2), out


def remote(state, port, fingerprint, key_file, *args, **options):
    return admin(state, "--url", f"https://127.0.0.1:{port}", "--admin-key", key_file, "--fingerprint",
                 fingerprint, *args, **options)


def _without_times(value):
    """A --json answer with the fields that differ between two calls (times, ids, tokens) blanked."""
    if isinstance(value, dict):
        return {k: None if k in ("expires_at", "created_at", "token", "id", "group_id", "enrolled_at")
                else _without_times(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_times(v) for v in value]
    return value


def test_remote_commands_print_the_direct_commands_json(tmp_path):
    state, port, fingerprint, key_id, key_file, _ = _init(tmp_path)
    server = ServerProc(state, port).start()
    try:
        r = lambda *a, **k: remote(state, port, fingerprint, key_file, *a, **k)  # noqa: E731
        made = json.loads(r("group", "create", "lan", "--cidr", "10.77.0.0/24", "--members", "a,b", "--owners", "a",
                            "--json").stdout)
        admin(state, "group", "create", "lan2", "--cidr", "10.78.0.0/24", "--members", "a,b", "--owners", "a",
              "--json")
        direct = json.loads(admin(state, "group", "show", "lan2").stdout)
        assert _without_times(made["group"]) == _without_times({**direct, "name": "lan", "cidr": "10.77.0.0/24"})
        for args in (("invite", "{g}", "c", "--attr", "role=web", "--json"),
                     ("invite", "{g}", "--reusable", "--uses", "3", "--expires", "2h", "--json"),
                     ("tokens", "list", "{g}", "--json"), ("member", "list", "{g}", "--json"),
                     ("policy", "show", "{g}", "--json"), ("export-rule", "list", "{g}", "--json"),
                     ("route", "list", "{g}", "--json")):
            there = json.loads(r(*[a.format(g="lan") for a in args]).stdout)
            here = json.loads(admin(state, *[a.format(g="lan2") for a in args]).stdout)
            assert _without_times(there) == _without_times(json.loads(json.dumps(here).replace("lan2", "lan")))
        assert r("group", "list").stdout.split() == ["lan", "lan2"]
        for token in made["tokens"]:  # a and b enroll, so member, route and rekey commands have members
            TestMember(token["member"]).enroll(token["token"])
        keys = lambda out: sorted(json.loads(out))  # noqa: E731 -- the shape: its keys
        for args, shape in ((("member", "set-attr", "lan", "a", "role=web", "--json"), ["attributes", "name"]),
                            (("member", "extend", "lan", "a", "1h", "--json"),
                             "provider refused (400): member 'a' is permanent: there is no deadline to extend"),
                            (("route", "approve", "lan", "a", "192.168.5.0/24", "--json"),
                             ["action", "epoch", "group", "member", "prefix", "version"]),
                            (("route", "remove", "lan", "a", "192.168.5.0/24", "--json"),
                             ["action", "epoch", "group", "member", "prefix", "version"]),
                            (("export-rule", "set", "lan", "web", "role=web", "--json"), ["group", "label", "selector"]),
                            (("export-rule", "remove", "lan", "web", "--json"), ["group", "label", "selector"]),
                            (("tokens", "revoke", "lan", made["tokens"][0]["id"], "--json"),
                             ["id", "revoked_at", "state"]),
                            (("group", "set-meta", "lan", "--owner", "org=acme", "--json"),
                             ["expires_at", "owner", "owners", "provider_id"]),
                            (("member", "remove", "lan", "b", "--json"), ["epoch", "group", "removed", "version"])):
            done = r(*args, check=False)
            if isinstance(shape, str):  # refused by the membership rule, its reason passed on
                assert done.returncode == 69 and shape in done.stderr, done.stderr
            else:
                assert done.returncode == 0 and keys(done.stdout) == shape, done.stderr
        rekey = r("group", "rekey", "lan", check=False)  # b is gone: one member, no epoch (PROTOCOL.md 1)
        assert rekey.returncode == 69 and "provider refused (409)" in rekey.stderr, rekey.stderr
        assert json.loads(r("group", "show", "lan").stdout)["members"] == 1
        refused = r("audit", check=False)
        assert refused.returncode == 64 and "state dir only" in refused.stderr
        bad = r("policy", "set", "lan", "-", check=False, input_text="team=x -> * any allow; default deny")
        assert bad.returncode == 69 and "provider refused (400)" in bad.stderr and "'team'" in bad.stderr
        audit = admin(state, "audit").stdout
        assert f"{key_id} admin-request lan" in audit
    finally:
        server.stop()


def test_a_wrong_key_is_refused_401_and_the_key_is_encrypted_with_the_passphrase(tmp_path):
    env = {"GROUPTUN_PROVIDER_PASSPHRASE": "correct horse"}
    state, port, fingerprint, key_id, key_file, out = _init(tmp_path, env)
    assert "encrypted with the provider passphrase" in out
    with open(key_file, "rb") as f:
        assert f.read().startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    server = ServerProc(state, port, env=env).start()
    try:
        missing = remote(state, port, fingerprint, key_file, "group", "list", check=False)
        assert missing.returncode != 0 and "passphrase" in missing.stderr
        assert remote(state, port, fingerprint, key_file, "group", "list", env=env).returncode == 0
        other = tmp_path / "other"
        other_key = re.search(r"admin key:\s+\S+ in (\S+)", admin(other, "init", "--url", "https://127.0.0.1:9").stdout)
        refused = remote(state, port, fingerprint, other_key.group(1), "group", "list", check=False)
        assert refused.returncode == 69 and "provider refused (401): signature not valid" in refused.stderr
    finally:
        server.stop()
