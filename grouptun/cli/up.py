"""``grouptun up GROUP``: run the member daemon in the foreground.

This is exactly what the systemd unit runs. The config is
``<config-dir>/<GROUP>.toml`` unless ``--config`` names a file. The
credential comes from ``--credential-file``, systemd's credentials
directory, the config's ``paths.credential_file`` or a terminal prompt
(:mod:`grouptun.control.credential`). Exit codes follow grouptun.errors.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

DEFAULT_CONFIG_DIR = Path("/etc/grouptun")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("group", help="group name (the config file's stem), e.g. lan")
    parser.add_argument("--config", type=Path, help="config file (default: CONFIG_DIR/GROUP.toml)")
    parser.add_argument("--config-dir", type=Path, default=DEFAULT_CONFIG_DIR)
    parser.add_argument("--credential-file", type=Path, help="file holding the identification credential")
    parser.add_argument("--log-level", choices=("debug", "info", "warning", "error"),
                        help="override daemon.log_level")


def run(args: argparse.Namespace) -> int:
    # numpy's OpenBLAS starts a thread per extra core at import; the daemon does no linear algebra
    # (numpy only reshapes and sums packet bytes), so that thread would only idle. Set before the
    # first numpy import; an explicit setting in the environment wins.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    from grouptun import config as config_mod
    from grouptun.control import credential
    from grouptun.daemon import Daemon
    from grouptun.errors import ConfigError
    from grouptun.ops.logsetup import setup_logging

    path = args.config or args.config_dir / f"{args.group}.toml"
    cfg = config_mod.load(path)
    if cfg.group.name != args.group:
        raise ConfigError("group.name", f"{path} is for group {cfg.group.name!r}, not {args.group!r}")
    setup_logging((args.log_level or cfg.daemon.log_level).upper())
    cred = credential.obtain(cfg.group.name, args.credential_file, cfg.paths.credential_file)
    return Daemon(cfg, cred).run()
