"""Run the real ``grouptun up`` code path with fake TUN, netlink and provider.

Used by test_daemon_lifecycle.py as a child process, so signals, the
notify socket, logging setup and the metrics listener are exactly those of
``systemctl start grouptun@lan`` minus root: cmd_up -> setup_logging ->
credential -> Daemon.run on uvloop in the main thread.

    python daemon_child.py WORKDIR METRICS_PORT [--real-net]

``--real-net`` keeps the real TUN device and pyroute2 netlink (root, and run
it inside a network namespace you own); UDP and the provider stay fake.

Writes WORKDIR/lan.toml, the keystore and a credential file, then runs
``grouptun.cli.main.main(["up", "lan", ...])`` and exits with its code.
"""

from __future__ import annotations

import faulthandler
import importlib.util
import signal
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def load_fakes():
    spec = importlib.util.spec_from_file_location("gt_ops_daemon_fakes", REPO / "tests/daemon/fakes.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(workdir: Path, metrics_port: int, real_net: bool = False) -> int:
    from grouptun.cli import main as cli
    from grouptun.control import keystore
    from grouptun import config as cfgmod
    from grouptun import daemon as daemon_mod
    from grouptun.data.udp import UdpTransport

    fakes = load_fakes()
    provider = fakes.FakeProvider(["alpha", "beta"])
    state = workdir / "state"
    state.mkdir(mode=0o700)
    provider.secrets["alpha"] = bytes(keystore.save(state / "keys.enc", provider.members["alpha"],
                                                    bytearray(fakes.CREDENTIAL), fakes.FAST))
    cred = workdir / "credential"
    cred.write_bytes(fakes.CREDENTIAL + b"\n")
    cred.chmod(0o600)
    cfg = cfgmod.Config(
        group=cfgmod.GroupConfig(name="lan", member="alpha", group_id=provider.group_id, interface="gt-opsfake",
                                 addresses=provider.addresses["alpha"]),
        provider=cfgmod.ProviderConfig(url="https://127.0.0.1:1", tls_fingerprint="00" * 32,
                                       keys_hash=provider.keys.fingerprint(),
                                       ed25519_public=provider.keys.ed25519_public,
                                       mldsa65_public=provider.keys.mldsa65_public),
        network=cfgmod.NetworkConfig(listen_address="127.0.0.1", endpoints=("127.0.0.1:9",)),
        paths=cfgmod.PathsConfig(state_dir=state, control_socket=workdir / "lan.sock"),
        daemon=cfgmod.DaemonConfig(watch_timeout=1.0, report_interval=1.0, backoff_max=1.0,
                                   metrics_listen=f"127.0.0.1:{metrics_port}"),
    )
    path = workdir / "lan.toml"
    path.write_text(cfgmod.render(cfg))

    base = daemon_mod.Factories

    def loop_with_stall_switch():
        """The daemon's uvloop, plus SIGUSR2 = block the loop for 2 s (a stalled data
        plane), bracketed by X_GT_BLOCK=start/end on the notify socket."""
        import time

        import uvloop

        from grouptun.ops.sdnotify import Notifier

        loop = uvloop.new_event_loop()
        marker = Notifier.from_env()

        def stall() -> None:
            marker.notify("X_GT_BLOCK=start")
            time.sleep(2.0)
            marker.notify("X_GT_BLOCK=end")

        loop.add_signal_handler(signal.SIGUSR2, stall)
        return loop

    class FakeFactories(base):
        def __init__(self) -> None:
            fake_net = {} if real_net else {"tun": fakes.FakeTun, "netconfig": fakes.FakeNetConfig}
            super().__init__(udp=lambda address, port: UdpTransport("127.0.0.1", 0), loop=loop_with_stall_switch,
                             client=lambda config, keys: provider.client("alpha"), **fake_net)

    daemon_mod.Factories = FakeFactories  # Daemon() looks the name up at call time
    return cli.main(["up", "lan", "--config", str(path), "--credential-file", str(cred)])


if __name__ == "__main__":
    # `kill -USR1 <pid>` dumps every thread's stack: a hung daemon explains itself.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    sys.exit(main(Path(sys.argv[1]), int(sys.argv[2]), "--real-net" in sys.argv[3:]))
