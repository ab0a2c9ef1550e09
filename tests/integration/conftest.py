"""A real mesh per test module: provider over HTTPS, three members with TUN
devices, UDP between namespaces, plus an outsider host ``e`` on the bridge.

Everything is created here and removed at module end, also on failure (the
lab's teardown runs from the fixture's finally, atexit and SIGTERM). When a
test of the module failed, the last lines of every process log are printed.
"""

from __future__ import annotations

import itertools
import os
import time

import pytest

from grouptun.lab import Lab, LabError, links, list_ns, wait_ping
from grouptun.lab.mesh import Mesh

MEMBERS = ("a", "b", "c")


def build_mesh(lab: Lab, group_options: tuple[str, ...] = (),
               ipv6_underlay: tuple[str, ...] = (), provider_init_args: tuple[str, ...] = ()) -> Mesh:
    mesh = Mesh(lab, group_options=group_options, ipv6_underlay=ipv6_underlay,
                provider_init_args=provider_init_args)
    mesh.start_group(MEMBERS)
    for src, dst in itertools.permutations(MEMBERS, 2):     # endpoints learned, routes up
        if not wait_ping(lab, src, mesh.members[dst].overlay(4), timeout=15.0):
            raise LabError(f"no first ping {src} -> {dst}")
    return mesh


@pytest.fixture(scope="module")
def lab_mesh(request):
    tag = getattr(request.module, "LAB_TAG", "it")
    options = getattr(request.module, "GROUP_OPTIONS", ())   # extra `group create` flags
    ipv6_underlay = getattr(request.module, "IPV6_UNDERLAY", ())
    init_args = getattr(request.module, "provider_init_args", lambda lab: ())  # extra `init` flags, from the lab
    hosts = getattr(request.module, "LAB_HOSTS", ("p", *MEMBERS, "e"))
    # a module's own build(lab, request) replaces the default mesh; the fixture yields (lab, what it returns)
    build = getattr(request.module, "build_lab_mesh",
                    lambda lab, request: build_mesh(lab, options, ipv6_underlay, init_args(lab)))
    failed_before = request.session.testsfailed
    # GT_LAB_KEEP_LOGS=1 keeps the workdir (logs, pcaps; on tmpfs) for a post-mortem
    lab = Lab(tag, hosts=hosts, keep_workdir=os.environ.get("GT_LAB_KEEP_LOGS") == "1")
    t0 = time.monotonic()
    try:
        with lab:
            try:
                mesh = build(lab, request)
            except Exception:
                print("\n--- lab logs (setup failed) ---\n" + lab.log_tails(25))
                raise
            print(f"\n[lab {tag}: mesh up in {time.monotonic() - t0:.1f} s]")
            yield lab, mesh
            if request.session.testsfailed > failed_before:
                print(f"\n--- lab {tag} logs (a test failed) ---\n" + lab.log_tails(25))
    finally:
        lab.down()
    left = list_ns(lab.prefix) + [n for n in links() if n.startswith(lab.prefix)]
    assert left == [], f"lab {tag} left behind: {left}"
