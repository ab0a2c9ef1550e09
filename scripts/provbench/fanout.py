"""What one rekey costs the provider: bytes served when every member fetches, and N parked watchers.

:func:`bench_rekey_bytes`: a real server per group size, N members inserted,
``group rekey`` opens the epoch, then every member fetches the archive over
real HTTPS (signed GET, ``FETCHERS`` keep-alive connections), once without
and once with gzip, for the full archive and for the compact form daemons
fetch (``?form=compact``, PROTOCOL.md 2.2); bytes counted by the server (its
``grouptun_provider_http_response_body_bytes_total``) and by the client
(HTTP head + body received), the server's CPU and sampled profile.

:func:`bench_watchers`: W long-polls (one TLS connection each, re-polling
on 204 like a daemon), spread over the replicas; RSS of each replica
before/with them; then ``group rekey`` and the time until every watcher got
the new archive; the rekey CLI and the replicas sampled meanwhile.
"""

from __future__ import annotations

import asyncio
import json
import resource
import time
from dataclasses import dataclass
from pathlib import Path

from provbench.servers import Replicas, admin, cpu_seconds, insert_members
from provbench.wire import Conn, metric_sum

FETCHERS = 8
BODY_BYTES = "grouptun_provider_http_response_body_bytes_total"
FETCH_DEADLINE = 600.0


def shares(profile: dict[str, float], top: int = 4) -> str:
    total = sum(profile.values())
    if not total:
        return "no samples"
    ranked = sorted(profile.items(), key=lambda kv: -kv[1])[:top]
    return ", ".join(f"{name} {100 * sec / total:.0f}%" for name, sec in ranked) + f" (of {total:.1f} CPU s sampled)"


def merged(profiles: list[dict[str, float]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for p in profiles:
        for k, v in p.items():
            out[k] = out.get(k, 0.0) + v
    return out


def kem_share(archive: bytes) -> float:
    """Share of the archive's bytes that are the members' base64 KEM public keys (only the provider needs them)."""
    document = json.loads(json.loads(archive)["document"])
    return sum(len(m["kem_public"]) for m in document["members"]) / len(archive)


async def fetch_once(url: str, path: str, member):
    """One signed GET on a connection of its own (``member``: (name, key))."""
    conn = Conn(url)
    try:
        return await conn.signed_get(path, *member)
    finally:
        await conn.close()


FORMS = {"full": "", "compact": "?form=compact"}  # the archive forms fetched, and their query


@dataclass
class FetchPass:
    form: str
    encoding: str
    seconds: float
    served: float        # body bytes by the server's own count
    received: int        # HTTP bytes the clients received
    body: int            # one member's body as sent
    cpu: float           # server CPU seconds
    profile: dict[str, float]


async def _fetch_all(url: str, group: str, keys, form: str, encoding: str,
                     reference: bytes | None) -> tuple[int, int]:
    """Every member fetches the archive once in ``form``; (bytes received, one body's size). Checks each body
    decodes to the same archive (its length; the first one byte for byte)."""
    path, queue = f"/v1/groups/{group}/archive{FORMS[form]}", list(keys)
    sizes: list[int] = []
    deadline = time.monotonic() + FETCH_DEADLINE

    async def worker(conn: Conn) -> None:
        while queue and time.monotonic() < deadline:
            name, key = queue.pop()
            reply = await conn.signed_get(path, name, key, encoding)
            if reply.status != 200:
                raise RuntimeError(f"{name}: GET archive answered {reply.status}")
            if not sizes and reference is not None and reply.decoded() != reference:
                raise RuntimeError(f"{encoding} body does not decode to the archive")
            sizes.append(len(reply.body))
        await conn.close()

    conns = [Conn(url) for _ in range(FETCHERS)]
    await asyncio.gather(*(worker(c) for c in conns))
    if queue or len(set(sizes)) != 1:
        raise RuntimeError(f"fetch incomplete ({len(queue)} left) or bodies differ ({sorted(set(sizes))[:4]})")
    return sum(c.received for c in conns), sizes[0]


def _fetch_pass(reps: Replicas, group: str, keys, form: str, encoding: str, reference: bytes) -> FetchPass:
    url, pid = reps.urls[0], reps.pids[0]
    before, cpu0 = asyncio.run(metric_sum(url, BODY_BYTES, "/archive")), cpu_seconds(pid)
    reps.toggle_sampling()
    t0 = time.perf_counter()
    received, body = asyncio.run(_fetch_all(url, group, keys, form, encoding, reference))
    seconds = time.perf_counter() - t0
    reps.toggle_sampling()
    cpu = cpu_seconds(pid) - cpu0
    served = asyncio.run(metric_sum(url, BODY_BYTES, "/archive")) - before
    return FetchPass(form, encoding, seconds, served, received, body, cpu, reps.profiles()[0])


def bench_rekey_bytes(tmp: Path, sizes: list[int]) -> list[dict]:
    """Per size: the rekey (CLI time and profile) and one pass per encoding; prints and returns the rows."""
    print("bytes served for one rekey (every member fetches the new archive over HTTPS; SQLite, 1 replica)")
    rows = []
    for n in sizes:
        with Replicas(tmp / f"bytes{n}", group="big", cidr="10.0.0.0/8") as reps:
            store = reps.store()
            try:
                keys = insert_members(store, "big", n)
            finally:
                store.close()
            t0 = time.perf_counter()
            admin(reps.state, "group", "rekey", "big", sample=tmp / f"rekey{n}.json")
            rekey = time.perf_counter() - t0
            cli = json.loads((tmp / f"rekey{n}.json").read_text())
            references = {form: asyncio.run(fetch_once(reps.urls[0], f"/v1/groups/big/archive{query}", keys[0])).body
                          for form, query in FORMS.items()}
            passes = [_fetch_pass(reps, "big", keys, form, enc, references[form])
                      for form in FORMS for enc in ("identity", "gzip")]
        reference = references["full"]
        rows.append(dict(members=n, rekey=rekey, cli=cli, passes=passes, archive=len(reference),
                         compact=len(references["compact"]), kem=kem_share(reference)))
        print(f"  N={n:>5}: rekey CLI {rekey:5.1f} s [{shares(cli, 3)}]; archive {len(reference) / 2**20:6.2f} MiB "
              f"({100 * rows[-1]['kem']:.0f}% members' KEM keys), compact {rows[-1]['compact'] / 2**20:6.2f} MiB")
        for p in passes:
            print(f"      {p.form:>7} {p.encoding:>8}: body {p.body / 2**20:6.2f} MiB, served {p.served / 2**30:7.3f} GiB "
                  f"(clients received {p.received / 2**30:7.3f} GiB) in {p.seconds:6.1f} s, server CPU "
                  f"{p.cpu:5.1f} s = {1000 * p.cpu / n:5.1f} ms/member [{shares(p.profile, 3)}]")
    return rows


def raise_nofile(needed: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, needed)) if hard != resource.RLIM_INFINITY else max(soft, needed)
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return want


def growth_table(epochs: dict[int, dict[str, float]], rows: list[dict]) -> None:
    """How each per-rekey figure grows with the group (x: the factor from the previous size)."""
    print("\nper rekey, by group size (x = factor from the previous row; members grew by the first column's x)")
    head = ("members", "epoch ms", "archive MiB", "served GiB", "gzip GiB", "fetch-all s", "gzip s",
            "server CPU ms/member", "compact MiB", "compact gzip GiB", "compact gzip s")
    print("  " + " | ".join(head))
    prev = None
    for row in rows:
        plain, packed, small = row["passes"][0], row["passes"][1], row["passes"][-1]  # full, full gzip, compact gzip
        cells = (row["members"], epochs.get(row["members"], {}).get("total", float("nan")), row["archive"] / 2**20,
                 plain.served / 2**30, packed.served / 2**30, plain.seconds, packed.seconds,
                 1000 * plain.cpu / row["members"], row["compact"] / 2**20, small.served / 2**30, small.seconds)
        text = [_num(c) if prev is None or not p else f"{_num(c)} (x{c / p:.1f})" for c, p in zip(cells, prev or cells)]
        print("  " + " | ".join(text))
        prev = cells


def _num(value: float) -> str:
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.3g}"
