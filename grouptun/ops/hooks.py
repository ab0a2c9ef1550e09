"""The daemon's operations hooks: systemd notifications (READY, STATUS, WATCHDOG, STOPPING) and the
Prometheus metrics listener.

Each piece is optional: without ``NOTIFY_SOCKET`` the notifier does nothing, without
``daemon.metrics_listen`` no listener is started. Not thread-safe: start/stop from the thread that
owns the event loop, before it closes.
"""

from __future__ import annotations

import asyncio
from typing import Callable

from grouptun.config import Config

__all__ = ["OpsHooks"]


class OpsHooks:
    """systemd notifications + metrics; every call is a no-op without them."""

    def __init__(self) -> None:
        from grouptun.ops.sdnotify import Notifier

        self.notifier = Notifier.from_env()
        self.metrics = None
        self._watchdog = None

    def start(self, config: Config, loop, snapshot: Callable[[], dict], healthy: Callable[[], bool]) -> None:
        """Start the watchdog task (on ``loop``) and the metrics listener if configured."""
        from grouptun.ops.sdnotify import start_watchdog

        async def on_loop():
            return start_watchdog(self.notifier, healthy)

        self._watchdog = loop.run_until_complete(on_loop())
        if config.daemon.metrics_listen:
            from grouptun.ops.metrics import DaemonMetrics

            self.metrics = DaemonMetrics(config.group.name, snapshot, loop)
            self.metrics.serve(config.daemon.metrics_listen)

    def stop(self, loop) -> None:
        """Before the loop closes: end the watchdog task and the metrics listener."""
        if self._watchdog is not None:
            self._watchdog.cancel()
            loop.run_until_complete(asyncio.gather(self._watchdog, return_exceptions=True))
            self._watchdog = None
        if self.metrics is not None:
            self.metrics.close()
            self.metrics = None

    def close(self) -> None:
        self.notifier.close()
