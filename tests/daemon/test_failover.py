"""Member failover between the provider's URLs (issue 16, item 3), against the shared fakes.

The rotation itself (pure: randomness injected), the real ProviderClient over
FakeTransport (replicas that refuse connections, hang or answer 5xx), the
control path adopting an archive's ``provider_urls`` and keeping them, the
join token's and the config's URL lists, and a whole daemon that starts
while its first URL is dead.
"""

from __future__ import annotations

import dataclasses
import json

import pytest

from grouptun import config as cfgmod
from grouptun.control.backoff import Backoff, ReplicaRotation
from grouptun.cli.status import format_status
from grouptun.control.plane import ControlPlane
from grouptun.core.archive import verify_archive
from grouptun.core.jointoken import JoinToken, b64url, parse_join_token
from grouptun.core.session import Session
from grouptun.daemon import Daemon
from grouptun.errors import ConfigError, EpochRejected, ProviderError, ProviderRefused
from grouptun.control.client import CONNECT_TIMEOUT, ProviderClient
from grouptun.control.providerurls import ProviderUrlsFile
from grouptun.control.statefile import EpochStateFile

from .fakes import FakeProvider, FakeTransport, proof
from .test_controlplane import DirectPort

A, B, C = "https://10.0.0.1:8443", "https://10.0.0.2:8443", "https://10.0.0.3:8443"


def netloc(url: str) -> str:
    return url.split("//", 1)[1]


# --- the rotation (sans-IO) ------------------------------------------------------------------


def test_rotation_moves_on_with_a_jittered_delay_that_doubles_up_to_its_cap():
    draws = iter([1.0, 0.5, 1.0, 1.0, 1.0, 0.0])
    rot = ReplicaRotation((A, B, C), base=0.25, cap=1.0, rng=lambda: next(draws))
    assert rot.current == A and rot.answered_by is None
    assert rot.failed(A) == 0.25 and rot.current == B          # the whole first spread
    assert rot.failed(B) == 0.25 and rot.current == C          # half of 0.5
    assert rot.failed(C) == 1.0 and rot.current == A           # 1.0, the cap ...
    assert rot.failed(A) == 1.0 and rot.failed(B) == 1.0       # ... stays the cap
    rot.answered(C)
    assert rot.answered_by == C and rot.failures == 0
    assert rot.failed(C) == 0.0 and rot.current == A           # reset: back to the first spread


def test_rotation_ignores_a_failure_of_a_url_it_moved_off_already():
    rot = ReplicaRotation((A, B, C), rng=lambda: 0.0)
    rot.failed(A)             # the watch thread saw A fail and moved to B
    rot.failed(A)             # the request thread's call to A fails a moment later
    assert rot.current == B


def test_rotation_replace_keeps_the_current_url_if_still_listed():
    rot = ReplicaRotation((A, B), rng=lambda: 0.0)
    rot.failed(A)
    rot.replace((C, B))
    assert rot.urls == (C, B) and rot.current == B
    rot.replace((A, C))
    assert rot.current == A
    with pytest.raises(ValueError):
        rot.replace(())


# --- the real client over the fake transport --------------------------------------------------


@pytest.fixture
def replicas():
    provider = FakeProvider(["alice", "bob"])
    provider.open_epoch()
    transport = FakeTransport(provider, "alice")
    slept: list[float] = []
    client = ProviderClient((A, B, C), "00" * 32, "lan", "alice", provider.members["alice"].signing_key,
                            session_factory=transport.session,
                            rotation=lambda urls: ReplicaRotation(urls, rng=lambda: 0.5), sleep=slept.append)
    return provider, transport, client, slept


def hosts(transport: FakeTransport) -> list[str]:
    return [netloc(url).split("/", 1)[0] for _, url, _, _ in transport.sent]


def test_a_compact_client_asks_for_the_compact_form_and_fetches_keys_only_on_demand(replicas):
    """PROTOCOL.md 2.2: ProviderClient(compact=True), the daemon's, adds ?form=compact to start, archive and
    watch; archive(compact=False) and kem_public(name) are what `grouptun seal` fetches besides."""
    provider, transport, _, _ = replicas
    client = ProviderClient((C,), "00" * 32, "lan", "alice", provider.members["alice"].signing_key,
                            session_factory=transport.session, compact=True)
    small = verify_archive(client.archive(), provider.keys, compact_ok=True)
    assert small.compact and transport.sent[-1][1].endswith("/archive?form=compact")
    assert not verify_archive(client.archive(compact=False), provider.keys).compact
    assert transport.sent[-1][1].endswith("/archive")
    assert verify_archive(client.start(b"\x05" * 32), provider.keys, compact_ok=True).compact
    assert transport.sent[-1][1].endswith("/start?form=compact")
    watched = client.watch(small.version, timeout=0.5)
    assert verify_archive(watched, provider.keys, compact_ok=True).compact
    assert transport.sent[-1][1].endswith("&form=compact")
    key = client.kem_public("bob")
    assert small.member("bob").kem_matches(key) and not small.member("alice").kem_matches(key)
    with pytest.raises(ProviderRefused) as refused:
        client.kem_public("mallory")
    assert refused.value.status == 404


def test_client_fails_over_on_refused_hung_and_5xx_and_stays_on_the_one_that_answered(replicas):
    provider, transport, client, slept = replicas
    transport.dead.add(netloc(A))
    transport.hung.add(netloc(B))
    assert verify_archive(client.archive(), provider.keys).epoch.epoch == provider.epoch
    assert hosts(transport) == [netloc(A), netloc(B), netloc(C)]
    assert slept == [0.125, 0.25]               # rng 0.5 of spreads 0.25, 0.5: jitter between replicas
    assert client.answered_by == C and client.url == C
    client.archive()                            # the next call starts where the last one answered
    assert hosts(transport)[-1] == netloc(C)
    transport.failing[netloc(C)] = 503
    transport.dead.clear()
    client.archive()
    assert hosts(transport)[-2:] == [netloc(C), netloc(A)] and client.answered_by == A


def test_client_raises_once_every_url_failed_naming_each(replicas):
    provider, transport, client, slept = replicas
    transport.dead.update({netloc(A), netloc(C)})
    transport.failing[netloc(B)] = 502
    with pytest.raises(ProviderError) as caught:
        client.watch(0, timeout=1.0)
    assert hosts(transport) == [netloc(A), netloc(B), netloc(C)]   # each URL once per call
    message = str(caught.value)
    assert message.startswith("no provider URL answered") and all(u in message for u in (A, B, C))
    assert "502" in message and len(slept) == 2


def test_a_refusal_is_an_answer_not_a_failover(replicas):
    provider, transport, client, slept = replicas
    provider.refusing = ProviderRefused(403, "member removed")
    with pytest.raises(ProviderRefused):
        client.rekey("test")
    assert hosts(transport) == [netloc(A)] and client.answered_by == A and slept == []


def test_connect_timeout_is_short_and_the_read_timeout_covers_the_long_poll(replicas):
    provider, transport, client, slept = replicas
    client.watch(provider.version, timeout=0.05)
    connect, read = transport.timeouts[-1]
    assert connect == CONNECT_TIMEOUT and read > 0.05


def test_single_url_client_keeps_its_error_message():
    provider = FakeProvider(["alice", "bob"])
    transport = FakeTransport(provider, "alice")
    transport.dead.add(netloc(A))
    client = ProviderClient(A, "00" * 32, "lan", "alice", provider.members["alice"].signing_key,
                            session_factory=transport.session, sleep=lambda s: pytest.fail("no other URL"))
    with pytest.raises(ProviderError, match="^provider unreachable: ConnectionError$"):
        client.archive()


def test_enrollment_tries_the_token_urls_in_order():
    from grouptun.control.keystore import MemberKeys

    provider = FakeProvider(["bob"])
    transport = FakeTransport(provider)
    transport.dead.add(netloc(A))
    token = JoinToken(A, "00" * 32, provider.keys.fingerprint(), b64url(bytes(32)), (A, B))
    keys = MemberKeys.generate()
    result = ProviderClient.enroll(token, "alice", keys.signing_key, keys.kem_public, bytes(32), [],
                                   session_factory=transport.session)
    assert result.member_name == "alice" and hosts(transport) == [netloc(A), netloc(B)]


# --- join token and member config -----------------------------------------------------------


def test_join_token_carries_the_url_list_only_when_there_are_several():
    secret = b64url(bytes(32))
    several = parse_join_token(str(JoinToken(A, "0" * 64, "1" * 64, secret, (A, B))))
    assert several.provider_urls == (A, B)
    one = JoinToken(A, "0" * 64, "1" * 64, secret, (A,))
    assert "urls" not in json.dumps(str(one)) and parse_join_token(str(one)).provider_urls == (A,)
    for bad in [(B, A), (A, A), (A, "http://x:1"), (A, *(f"https://h{i}:1" for i in range(8)))]:
        with pytest.raises(ConfigError):
            JoinToken(A, "0" * 64, "1" * 64, secret, bad)


def test_config_urls_are_validated_and_rendered(tmp_path):
    from .test_daemon import make_config

    provider = FakeProvider(["alice", "bob"])
    cfg = make_config(provider, "alice", tmp_path)
    assert cfg.provider.all_urls == (cfg.provider.url,)
    with_list = dataclasses.replace(cfg, provider=dataclasses.replace(cfg.provider, urls=(A, B)))
    path = tmp_path / "list.toml"
    path.write_text(cfgmod.render(with_list))
    assert cfgmod.load(path).provider.all_urls == (A, B)
    path.write_text(cfgmod.render(with_list).replace(f'"{B}"', '"http://plain:1"'))
    with pytest.raises(ConfigError, match="provider.urls"):
        cfgmod.load(path)


# --- the control path adopts an archive's list --------------------------------------------------


def control(provider, client, tmp_path, **kw) -> tuple[ControlPlane, Session]:
    statefile = EpochStateFile(tmp_path / "epochs.json")
    session = Session("alice")
    cp = ControlPlane(client=client, port=DirectPort(session, statefile, provider.group_id),
                      kem=provider.members["alice"].kem, proof=proof(), pinned=provider.keys,
                      group_id=provider.group_id, member="alice", statefile=statefile,
                      endpoints=lambda: ["127.0.0.1:51000"], watch_timeout=0.05, backoff=Backoff(0.01, 0.04), **kw)
    return cp, session


def test_an_archive_list_replaces_the_token_list_and_is_kept(tmp_path):
    provider = FakeProvider(["alice", "bob"])
    transport = FakeTransport(provider, "alice")
    client = ProviderClient((A,), "00" * 32, "lan", "alice", provider.members["alice"].signing_key,
                            session_factory=transport.session, sleep=lambda s: None)
    kept = ProviderUrlsFile(tmp_path)
    cp, _ = control(provider, client, tmp_path, urls_file=kept)
    assert cp.start_once(bytes(32))
    assert client.urls == (A,) and kept.load() is None and cp.state.provider_url == A
    provider.provider_urls = (B, C)
    provider.publish()
    cp.watch_once()
    assert client.urls == (B, C) and kept.load() == (B, C) and cp.state.provider_urls == (B, C)
    transport.dead.add(netloc(B))
    provider.open_epoch()
    cp.watch_once()              # B is dead: the same call goes on to C
    assert cp.held_epoch == provider.epoch and cp.state.provider_url == C
    text = format_status({"control": dataclasses.asdict(cp.state)})
    assert f"answered by {C}" in text


def test_an_archive_with_a_bad_list_is_refused_before_anything_is_used():
    from grouptun.core.archive import Archive, parse_document

    provider = FakeProvider(["alice", "bob"])
    provider.open_epoch()
    doc = json.loads(json.loads(provider.signed)["document"])
    for bad in (["http://a:1"], [], [A, A], "https://a:1", [A + "/"]):
        with pytest.raises(EpochRejected, match="provider_urls"):
            parse_document({**doc, "provider_urls": bad})
    assert parse_document(doc).provider_urls == ()
    assert "provider_urls" not in Archive.to_json(parse_document(doc))


def test_a_daemon_restart_asks_the_kept_list_and_a_broken_file_falls_back_to_the_config(tmp_path, caplog):
    from .test_daemon import make_config

    provider = FakeProvider(["alice", "bob"])
    cfg = make_config(provider, "alice", tmp_path)
    daemon = Daemon(cfg, bytearray(b"x"))
    kept = ProviderUrlsFile(cfg.paths.state_dir)
    assert daemon._client_config(kept).provider.all_urls == (cfg.provider.url,)
    kept.save((B, C))
    assert daemon._client_config(kept).provider.all_urls == (B, C)
    kept.path.write_text('{"urls": ["ftp://x"]}')
    assert daemon._client_config(kept).provider.all_urls == (cfg.provider.url,)
    assert "provider-urls.json" in caplog.text


# --- a whole daemon: first URL dead at start ------------------------------------------------


def test_a_daemon_comes_up_through_the_second_url_while_the_first_is_dead(tmp_path):
    from .test_daemon import Member, epochs

    provider = FakeProvider(["alice", "bob"])
    transport = FakeTransport(provider, "alice")
    transport.dead.add(netloc(A))
    provider.provider_urls = (A, B)
    alice = Member(provider, "alice", tmp_path)

    def client(cfg, keys):
        return ProviderClient(cfg.provider.all_urls, "00" * 32, "lan", "alice", provider.members["alice"].signing_key,
                              session_factory=transport.session)

    alice.config = dataclasses.replace(alice.config, provider=dataclasses.replace(alice.config.provider, urls=(A, B)))
    alice.daemon.config = alice.config
    alice.daemon.f = dataclasses.replace(alice.daemon.f, client=client)
    alice.thread.start()
    try:
        st = alice.wait_for(lambda st: epochs(st), "alice's first epoch through B")
        assert st["control"]["provider_url"] == B and st["control"]["provider_urls"] == [A, B]
        assert ProviderUrlsFile(alice.config.paths.state_dir).load() is None  # the archive's list is the same
        provider.provider_urls = (C, B)
        provider.publish()
        alice.wait_for(lambda st: st["control"]["provider_urls"] == [C, B], "the archive's list")
        assert ProviderUrlsFile(alice.config.paths.state_dir).load() == (C, B)
    finally:
        alice.daemon.request_stop("test over")
        alice.thread.join(timeout=10)
    assert alice.error is None and not alice.thread.is_alive()
