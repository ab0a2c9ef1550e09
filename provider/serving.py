"""The provider's uvicorn server as systemd sees it (``Type=notify``).

:class:`ProviderServer` is uvicorn's ``Server`` with two changes:

* ``READY=1`` (with ``STATUS=serving URL``) is sent only once uvicorn has
  its listening socket, i.e. when its startup completed (``started``), not
  from the ASGI lifespan, which runs before ``listen()``; a failed startup
  sends nothing and the unit fails.
* on stop it sends ``STOPPING=1`` and first ends the parked long-polls
  (``Hub.release``: they answer 204 "unchanged", and members poll again
  elsewhere), so uvicorn's graceful shutdown completes instead of
  cancelling those requests. uvicorn's "Cancel N running task(s)" (logged
  at error) therefore means a request really hung; with N = 0 nothing is
  cancelled (only idle TLS connections were still closing: a member's
  pooled keep-alive answers close_notify only when it next uses it), and
  :class:`RoutineShutdown` files that line at info.

Logging goes through :func:`grouptun.ops.logsetup.setup_logging` (uvicorn's own
dictConfig is disabled), so the journal gets syslog priorities.
"""

from __future__ import annotations

import logging
import re
import socket
from typing import Callable

import uvicorn

from grouptun.ops.sdnotify import Notifier


class RoutineShutdown(logging.Filter):
    """uvicorn.error's "Cancel 0 running task(s)": nothing was cancelled, so info, not error."""

    NOTHING_CANCELLED = re.compile(r"Cancel 0 running task\(s\)")

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.ERROR and self.NOTHING_CANCELLED.match(record.getMessage()):
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


def install_log_filters() -> None:
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, RoutineShutdown) for f in logger.filters):
        logger.addFilter(RoutineShutdown())


class ProviderServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, url: str, release_watchers: Callable[[], None],
                 notifier: Notifier | None = None) -> None:
        super().__init__(config)
        install_log_filters()
        self.url = url
        self.release_watchers = release_watchers
        self.notifier = notifier if notifier is not None else Notifier.from_env()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started:
            self.notifier.ready(f"serving {self.url}")

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.notifier.stopping("draining")
        self.release_watchers()
        await super().shutdown(sockets=sockets)
