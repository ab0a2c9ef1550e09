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
  at error) therefore means a request really hung.

Logging goes through :func:`grouptun.logsetup.setup_logging` (uvicorn's own
dictConfig is disabled), so the journal gets syslog priorities.
"""

from __future__ import annotations

import socket
from typing import Callable

import uvicorn

from grouptun.sdnotify import Notifier


class ProviderServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, url: str, release_watchers: Callable[[], None],
                 notifier: Notifier | None = None) -> None:
        super().__init__(config)
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
