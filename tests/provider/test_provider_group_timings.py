"""``group create --switch-delay/--grace``: the epoch timings members follow (short ones for labs)."""

from __future__ import annotations

import json

from tests.provider.provider_helpers import admin, init_provider


def test_timings_are_stored_and_bad_ones_refused_with_the_option_named(tmp_path):
    env = init_provider(tmp_path)
    shown = json.loads(admin(env.state, "group", "create", "lan", "--cidr", "10.78.0.0/24",
                             "--switch-delay", "1s", "--grace", "5s").stdout)
    assert (shown["switch_delay"], shown["grace"]) == (1.0, 5.0)
    default = json.loads(admin(env.state, "group", "create", "wan", "--cidr", "10.79.0.0/24").stdout)
    assert (default["switch_delay"], default["grace"]) == (2.0, 30.0)
    for option, value in (("--grace", "0s"), ("--switch-delay", "2m"), ("--grace", "soon")):
        proc = admin(env.state, "group", "create", "x", "--cidr", "10.80.0.0/24", option, value, check=False)
        assert proc.returncode != 0 and option in proc.stderr
    assert "x" not in admin(env.state, "group", "list").stdout.split()
