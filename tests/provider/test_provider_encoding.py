"""gzip of the archive responses (provider/encoding.py): negotiated, one body per version, same signed bytes."""

from __future__ import annotations

import gzip
import os
import threading
import warnings

import pytest

from grouptun.control.reqsign import sign_headers
from grouptun.core.archive import verify_archive
from provider.app import Settings, create_app
from provider.encoding import CHUNK, ChunkedResponse, GzipCache, accepts_gzip
from provider.keys import Signer
from provider_helpers import STORE_KINDS, fresh_store, memory_provider, migrate_from

warnings.filterwarnings("ignore", message=".*httpx.*", category=DeprecationWarning)
TestClient = pytest.importorskip("starlette.testclient").TestClient
SIGNER = Signer.generate()


@pytest.mark.parametrize("header, accepted", [
    ("gzip", True), ("gzip, deflate", True), ("GZIP;q=0.5", True), ("x-gzip", True), ("*", True),
    ("deflate, br", False), ("identity", False), ("", False), (None, False), ("gzip;q=0", False),
    ("*, gzip;q=0", False), ("gzip;q=0, *", False), ("br, *;q=0.1", True), ("gzip;q=abc", False),
])
def test_accept_encoding_is_read_with_q_values(header, accepted):
    assert accepts_gzip(header) is accepted


def test_the_cache_compresses_each_version_once_and_keeps_the_newest():
    cache, calls = GzipCache(), []
    real = gzip.compress
    raw1, raw2 = b'{"document": "v1"}' * 100, b'{"document": "v2"}' * 100

    def counting(data, *a, **kw):
        calls.append(data)
        return real(data, *a, **kw)

    gzip.compress = counting
    try:
        threads = [threading.Thread(target=cache.body, args=("g", 1, raw1)) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert calls == [raw1]
        assert gzip.decompress(cache.cached("g", 1)) == raw1
        assert gzip.decompress(cache.body("g", 2, raw2)) == raw2 and cache.cached("g", 1) is None
        cache.body("g", 1, raw1)  # a late request for the older version does not replace the newer one
        assert cache.cached("g", 2) is not None
    finally:
        gzip.compress = real


def _get(client, key, path, encoding):
    headers = {"accept-encoding": encoding}
    sign_headers("GET", "http://testserver" + path, headers, b"", "alice", key)
    return client.get(path, headers=headers)


def test_archive_and_watch_answer_gzip_only_when_asked_and_decode_to_the_stored_bytes():
    provider, keys = memory_provider(signer=SIGNER)
    key = keys["alice"]
    asgi, _ = create_app(provider, Settings(member_rate=1000, member_burst=1000))
    version, stored = provider.store.archive("lan")
    with TestClient(asgi, client=("127.0.0.1", 4000)) as client:
        plain = _get(client, key, "/v1/groups/lan/archive", "identity")
        assert "content-encoding" not in plain.headers and plain.content == stored
        assert plain.headers["vary"] == "Accept-Encoding"
        packed = _get(client, key, "/v1/groups/lan/archive", "gzip, deflate")
        assert packed.headers["content-encoding"] == "gzip" and packed.headers["vary"] == "Accept-Encoding"
        assert packed.content == stored  # the client decoded it: the signed bytes are the same
        assert int(packed.headers["content-length"]) < len(stored) * 0.9
        watched = _get(client, key, f"/v1/groups/lan/watch?version={version - 1}&timeout=5", "gzip")
        assert watched.headers["content-encoding"] == "gzip" and watched.content == stored
        unpacked = _get(client, key, f"/v1/groups/lan/watch?version={version - 1}&timeout=5", "gzip;q=0")
        assert "content-encoding" not in unpacked.headers and unpacked.content == stored


def test_metrics_count_the_body_bytes_as_sent():
    provider, keys = memory_provider(signer=SIGNER)
    asgi, _ = create_app(provider, Settings(metrics=True))
    with TestClient(asgi, client=("127.0.0.1", 4000)) as client:
        sizes = [int(_get(client, keys["alice"], "/v1/groups/lan/archive", enc).headers["content-length"])
                 for enc in ("identity", "gzip")]
        text = client.get("/metrics").text
    line = next(x for x in text.splitlines() if x.startswith("grouptun_provider_http_response_body_bytes_total")
                and "/archive" in x)
    assert float(line.split()[-1]) == sum(sizes)


def test_the_archive_route_serves_the_hubs_copy_of_the_current_version_and_reads_the_db_otherwise():
    """After a rekey every member fetches the archive: the blob is read once per version, not per member."""
    provider, keys = memory_provider(signer=SIGNER)
    asgi, _ = create_app(provider, Settings(member_rate=1000, member_burst=1000))
    reads, real = [], provider.store.archive
    provider.store.archive = lambda group, compact=False: reads.append((group, compact)) or real(group, compact)
    with TestClient(asgi, client=("127.0.0.1", 4000)) as client:
        before = len(reads)  # the hub's own refresh at start-up
        for _ in range(3):
            assert _get(client, keys["alice"], "/v1/groups/lan/archive", "identity").content == real("lan")[1]
        assert len(reads) == before
        frozen = provider.store.group_versions()
        provider.store.group_versions = lambda: frozen  # the hub never hears of the next epoch
        provider.open_epoch("lan", "admin", "admin")
        got = _get(client, keys["alice"], "/v1/groups/lan/archive", "identity").content
        assert got == real("lan")[1] and len(reads) == before + 1  # newer in the database: read from there
        got = _get(client, keys["alice"], "/v1/groups/lan/archive?form=compact", "identity").content
        assert got == real("lan", True)[1] and reads[-1] == ("lan", True)


def test_the_compact_form_is_served_when_asked_for_and_gzipped_once_per_version():
    """?form=compact on archive and watch: the compact envelope the database holds for the same version,
    one gzip body per version and form; without it the full archive, as older clients expect."""
    provider, keys = memory_provider(signer=SIGNER)
    key = keys["alice"]
    asgi, _ = create_app(provider, Settings(member_rate=1000, member_burst=1000))
    version, full = provider.store.archive("lan")
    _, compact = provider.store.archive("lan", compact=True)
    members = len(verify_archive(full, SIGNER.public).members)
    assert verify_archive(compact, SIGNER.public, compact_ok=True).compact
    assert len(full) - len(compact) > members * 1500  # 1624 base64 key characters -> 64 hex digest ones
    with TestClient(asgi, client=("127.0.0.1", 4000)) as client:
        assert _get(client, key, "/v1/groups/lan/archive", "gzip").content == full
        got = _get(client, key, "/v1/groups/lan/archive?form=compact", "gzip")
        assert got.headers["content-encoding"] == "gzip" and got.content == compact
        watched = _get(client, key, f"/v1/groups/lan/watch?version={version - 1}&timeout=5&form=compact", "gzip")
        assert watched.content == compact
        packed = _get(client, key, "/v1/groups/lan/archive?form=compact", "gzip").headers["content-length"]
        assert int(packed) < len(compact) and int(packed) < len(gzip.compress(full))
        refused = _get(client, key, "/v1/groups/lan/archive?form=tiny", "identity")
        assert refused.status_code == 422 and "form" in refused.text


@pytest.mark.parametrize("size", [0, 1, CHUNK, CHUNK + 1, 3 * CHUNK + 5])
def test_archive_bodies_go_out_in_pieces_so_the_transport_can_drain_between_them(size):
    import asyncio

    body, sent = os.urandom(size), []

    async def send(message):
        sent.append(message)

    asyncio.run(ChunkedResponse(body, media_type="application/json")({"type": "http"}, None, send))
    start, *pieces = sent
    assert start["type"] == "http.response.start" and (b"content-length", str(size).encode()) in start["headers"]
    assert b"".join(p["body"] for p in pieces) == body
    assert all(len(p["body"]) <= CHUNK for p in pieces) and len(pieces) == max(1, -(-size // CHUNK))
    assert [p["more_body"] for p in pieces] == [True] * (len(pieces) - 1) + [False]


@pytest.mark.parametrize("kind", STORE_KINDS)
def test_a_database_before_the_compact_column_serves_the_full_form_until_the_next_version(kind, request):
    """Schema 10 -> 11 adds groups.compact (NULL): asked for the compact form, the provider answers the full
    archive (members accept either) until the group's next signed version carries both forms."""
    from provider.tables import MIGRATIONS, SCHEMA_VERSION, _compact_column  # noqa: PLC0415

    step = next(version for version, fn in MIGRATIONS.items() if fn is _compact_column)
    store = fresh_store(kind, request)
    provider, _ = memory_provider(("alice", "bob"), signer=SIGNER, store=store)
    assert migrate_from(store, step, 'ALTER TABLE groups DROP COLUMN "compact"') == str(SCHEMA_VERSION)
    version, full = store.archive("lan")
    assert store.archive("lan", compact=True) == (version, full)
    assert not verify_archive(full, SIGNER.public, compact_ok=True).compact
    provider.open_epoch("lan", "admin", "admin")
    version, compact = store.archive("lan", compact=True)
    assert verify_archive(compact, SIGNER.public, compact_ok=True).compact and compact != store.archive("lan")[1]
    store.close()
