"""Members fail over between the provider's URLs, and ride out a whole provider outage (issue 16, item 3).

One provider (SQLite) published under three URLs on its host ``p``:
``:8441`` (a closed port: always dead), ``:8443`` (where it serves first) and
``:8445`` (where it is restarted later). ``init --public-url`` puts the list
in every join token and archive. The members join and start while the first
URL refuses connections; then the provider is killed and restarted on the
third URL, and the members' watches move there; then it is stopped for 60 s
(the issue's whole-provider outage) while the mesh keeps passing traffic
(pings sampled every few seconds throughout), and every member holds the
epoch opened during the outage within 10 s of it being back. One lab for the module (tag ``fo``); tests run in order.
"""

from __future__ import annotations

import re
import time

import pytest

from grouptun.lab import wait_until
from grouptun.lab.mesh import epochs_held

pytestmark = [pytest.mark.root, pytest.mark.slow]
LAB_TAG = "fo"
MEMBERS = ("a", "b", "c")
DEAD, FIRST, SECOND = 8441, 8443, 8445
OUTAGE = 60.0   # seconds: issue 16's "stop every replica for 60 s"
PING_EVERY = 5.0  # seconds between mesh samples during the outage


def urls(lab) -> dict[int, str]:
    ip = lab.host("p").ipv4
    return {port: f"https://{ip}:{port}" for port in (DEAD, FIRST, SECOND)}


def provider_init_args(lab) -> tuple[str, ...]:
    return tuple(arg for url in urls(lab).values() for arg in ("--public-url", url))


def control(mesh, name: str) -> dict:
    return mesh.status(name)["control"]


def newest_held(mesh, name: str) -> int:
    return max((e["epoch"] for e in epochs_held(mesh.status(name))), default=-1)


def rekey(mesh) -> int:
    out = mesh.provider_cli("group", "rekey", mesh.group)
    return int(re.search(r"epoch (\d+)", out).group(1))


def wait_all(mesh, predicate, bound: float) -> dict[str, float]:
    """Seconds until ``predicate(name)`` held for each member (bounded by ``bound``); missing = never."""
    t0, took = time.monotonic(), {}

    def check() -> bool:
        for name in MEMBERS:
            if name not in took and predicate(name):
                took[name] = time.monotonic() - t0
        return len(took) == len(MEMBERS)

    wait_until(check, timeout=bound, interval=0.2)
    return took


def test_members_joined_and_started_through_the_second_url(lab_mesh):
    lab, mesh = lab_mesh
    listed = list(urls(lab).values())
    for name in MEMBERS:
        cp = control(mesh, name)
        assert cp["provider_urls"] == listed and cp["provider_url"] == urls(lab)[FIRST], cp
    assert f"answered by {urls(lab)[FIRST]}" in mesh.status_text("a")
    # a daemon (re)started while the first URL is dead comes up through another, well within 10 s
    mesh.down("c")
    t0 = time.monotonic()
    mesh.up("c")
    mesh.wait_ready("c", timeout=10.0)
    print(f"\n[c restarted with {urls(lab)[DEAD]} dead: sending again after {time.monotonic() - t0:.1f} s]")
    # c's start opened an epoch of its own; the others hear of it through their watches (not instantly)
    epoch = newest_held(mesh, "c")
    got = wait_all(mesh, lambda n: newest_held(mesh, n) >= epoch, bound=10.0)
    print(f"[epoch {epoch} of c's start held after {', '.join(f'{n} {s:.1f} s' for n, s in sorted(got.items()))}]")
    assert set(got) == set(MEMBERS), {n: control(mesh, n) for n in MEMBERS}
    assert mesh.ping_all_pairs(count=1) == []


def test_watch_follows_the_provider_to_another_url(lab_mesh):
    """The provider is killed on the URL the watches use and serves again on another of the list: the
    watches resume there (a rekey right after it listens reaches every member through it)."""
    lab, mesh = lab_mesh
    mesh.provider_proc.kill9()
    mesh.start_provider(port=SECOND, label="provider-second")
    epoch = rekey(mesh)
    got = wait_all(mesh, lambda n: newest_held(mesh, n) >= epoch
                   and control(mesh, n)["provider_url"] == urls(lab)[SECOND], bound=10.0)
    print(f"\n[provider killed on :{FIRST}, serving on :{SECOND}, rekeyed to epoch {epoch}: held (through "
          f":{SECOND}) after {', '.join(f'{n} {s:.1f} s' for n, s in sorted(got.items()))} (from listening)]")
    assert set(got) == set(MEMBERS), {n: control(mesh, n) for n in MEMBERS}
    assert mesh.ping_all_pairs(count=1) == []


def test_whole_provider_down_the_mesh_keeps_working_and_catches_up(lab_mesh):
    lab, mesh = lab_mesh
    mesh.stop_provider()
    t0 = time.monotonic()
    assert wait_until(lambda: all(not control(mesh, n)["provider_ok"] for n in MEMBERS), timeout=OUTAGE)
    during_rekey = rekey(mesh)   # the admin CLI writes the database while no server runs
    failures, samples = [], 0
    # Sample the mesh throughout the outage (bounded: one round per PING_EVERY until OUTAGE is over)
    for _ in range(int(OUTAGE / PING_EVERY) + 1):
        failures += [f"t={time.monotonic() - t0:.0f}s {f}" for f in mesh.ping_all_pairs(count=1)]
        samples += 1
        left = OUTAGE - (time.monotonic() - t0)
        if left <= 0:
            break
        time.sleep(min(PING_EVERY, left))
    assert all(not control(mesh, n)["provider_ok"] for n in MEMBERS)  # still down when we bring it back
    print(f"\n[provider down {time.monotonic() - t0:.1f} s; {samples} all-pairs ping rounds; "
          f"failed: {failures or 'none'}]")
    assert failures == []
    mesh.start_provider(port=FIRST, label="provider-back")
    back = wait_all(mesh, lambda n: newest_held(mesh, n) >= during_rekey, bound=10.0)
    print(f"[provider back on :{FIRST}: epoch {during_rekey} (opened during the outage) held after "
          f"{', '.join(f'{n} {s:.1f} s' for n, s in sorted(back.items()))}]")
    assert set(back) == set(MEMBERS)
    epoch = rekey(mesh)
    got = wait_all(mesh, lambda n: newest_held(mesh, n) >= epoch, bound=10.0)
    print(f"[next rekey, epoch {epoch}: held after {', '.join(f'{n} {s:.1f} s' for n, s in sorted(got.items()))}]")
    assert set(got) == set(MEMBERS)
    assert all(control(mesh, n)["provider_url"] == urls(lab)[FIRST] for n in MEMBERS)
    assert mesh.ping_all_pairs(count=1) == []
