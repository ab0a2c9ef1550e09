"""W concurrent watchers (long-polls over real HTTPS) spread over the replicas, and one rekey fanned out.

Each watcher is one TLS connection that long-polls ``watch?version=V&timeout=60``
and polls again on 204, as a daemon does, until it gets a newer archive (or
the deadline). Measured: how long parking them all takes, the RSS of each
replica before and with them, the time from ``group rekey`` until the last
watcher has the new archive, the replicas' CPU and sampled profile meanwhile,
and the body bytes they served.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from provbench.fanout import BODY_BYTES, fetch_once, merged, shares
from provbench.servers import Replicas, admin, cpu_seconds, insert_members, reset_peak, rss_kib
from provbench.wire import Conn, metric_sum

CONNECT_GATE = 64  # TLS handshakes in flight at once: do not overflow the listen backlog
WATCH_TIMEOUT = 60  # the longest long-poll the provider allows
PARK_DEADLINE = 240.0
FANOUT_DEADLINE = 180.0
GROUP = "watched"


@dataclass
class Round:
    encoding: str
    parked: int
    park_seconds: float
    rss_with: list[int]
    peak: list[int]
    rekey_cli: float
    got: int
    first: float
    median: float
    last: float
    cpu: float
    client: float  # the watchers' own CPU (this process) meanwhile: on 2 cores they compete with the servers
    served: float
    profile: dict[str, float]


async def _parked(urls: list[str]) -> int:
    counts = await asyncio.gather(*(metric_sum(u, "grouptun_provider_watchers{") for u in urls))
    return int(sum(counts))


async def _round(reps: Replicas, keys, watchers: int, encoding: str, version: int, tmp: Path) -> Round:
    path = f"/v1/groups/{GROUP}/watch?version={version}&timeout={WATCH_TIMEOUT}"
    gate, got, stop = asyncio.Semaphore(CONNECT_GATE), [], time.monotonic() + PARK_DEADLINE + FANOUT_DEADLINE

    async def watch(i: int) -> None:
        conn, (name, key) = Conn(reps.urls[i % len(reps.urls)]), keys[i % len(keys)]
        try:
            async with gate:
                await conn.open()
            while time.monotonic() < stop:
                reply = await conn.signed_get(path, name, key, encoding, timeout=WATCH_TIMEOUT + 30)
                if reply.status == 200:
                    got.append(time.perf_counter())
                    return
                if reply.status != 204:
                    raise RuntimeError(f"watch answered {reply.status}")
        finally:
            await conn.close()

    t_open = time.perf_counter()
    tasks = [asyncio.create_task(watch(i)) for i in range(watchers)]
    parked = 0
    for _ in range(int(PARK_DEADLINE / 0.5)):  # until every long-poll is parked (bounded)
        await asyncio.sleep(0.5)
        parked = await _parked(reps.urls)
        if parked >= watchers:
            break
    park_seconds, rss_with = time.perf_counter() - t_open, [rss_kib(p) for p in reps.pids]
    served0 = sum(await asyncio.gather(*(metric_sum(u, BODY_BYTES, "/watch") for u in reps.urls)))
    cpu0, client0 = sum(cpu_seconds(p) for p in reps.pids), time.process_time()
    for p in reps.pids:
        reset_peak(p)
    reps.toggle_sampling()
    t0 = time.perf_counter()
    await asyncio.to_thread(admin, reps.state, "group", "rekey", GROUP)
    cli = time.perf_counter() - t0
    done, _ = await asyncio.wait(tasks, timeout=FANOUT_DEADLINE)
    reps.toggle_sampling()
    cpu, client = sum(cpu_seconds(p) for p in reps.pids) - cpu0, time.process_time() - client0
    for task in tasks:
        task.cancel()
    errors = [t.exception() for t in done if not t.cancelled() and t.exception() is not None]
    if errors:
        print(f"      {len(errors)} watcher(s) failed, e.g. {errors[0]!r}")
    served = sum(await asyncio.gather(*(metric_sum(u, BODY_BYTES, "/watch") for u in reps.urls))) - served0
    after = sorted(t - t0 for t in got) or [float("nan")]
    peak = [rss_kib(p, "VmHWM") for p in reps.pids]
    return Round(encoding, parked, park_seconds, rss_with, peak, cli, len(got), after[0], statistics.median(after),
                 after[-1], cpu, client, served, merged(reps.profiles()))


def bench_watchers(tmp: Path, label: str, database_url: str | None, count: int, watchers: int,
                   group_members: int, encodings: list[str]) -> list[Round]:
    """One setup (``count`` replicas on SQLite or a PostgreSQL URL); one round per encoding."""
    print(f"{watchers} watchers on {label} x{count} (group of {group_members} members; each watcher one "
          f"TLS connection, re-polling on 204 like a daemon)")
    rounds = []
    with Replicas(tmp, database_url, count, group=GROUP, cidr="10.0.0.0/8") as reps:
        store = reps.store()
        try:
            keys = insert_members(store, GROUP, group_members)
        finally:
            store.close()
        admin(reps.state, "group", "rekey", GROUP)
        time.sleep(1.0)  # every replica's hub has the epoch
        rss_before = [rss_kib(p) for p in reps.pids]
        for encoding in encodings:
            version = _version(reps, keys[0])
            r = asyncio.run(_round(reps, keys, watchers, encoding, version, tmp))
            rounds.append(r)
            rss = ", ".join(f"{b / 1024:.0f} -> {w / 1024:.0f} MiB" for b, w in zip(rss_before, r.rss_with))
            print(f"  {encoding:>8}: {r.parked}/{watchers} parked after {r.park_seconds:.0f} s; RSS per replica "
                  f"idle -> with watchers: {rss} ({(sum(r.rss_with) - sum(rss_before)) / max(1, r.parked):.1f} "
                  f"KiB per watcher)")
            print(f"            rekey: CLI {r.rekey_cli * 1000:.0f} ms; {r.got}/{watchers} had the new archive: "
                  f"first {r.first:.2f} s, median {r.median:.2f} s, last {r.last:.2f} s after `group rekey` "
                  f"began; served {r.served / 2**20:.0f} MiB; replicas' CPU {r.cpu:.1f} s (watchers' {r.client:.1f} s) "
                  f"[{shares(r.profile)}]; peak RSS during the fan-out {', '.join(f'{k / 1024:.0f}' for k in r.peak)} MiB")
            time.sleep(1.0)  # the closed connections are gone before the next round's RSS
    return rounds


def _version(reps: Replicas, member) -> int:
    reply = asyncio.run(fetch_once(reps.urls[0], f"/v1/groups/{GROUP}/archive", member))
    return json.loads(json.loads(reply.body)["document"])["version"]
