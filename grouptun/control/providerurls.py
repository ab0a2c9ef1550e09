"""``<state_dir>/provider-urls.json``: the provider URLs of the newest archive that listed them.

The join token gives a member the provider's URLs (config ``provider.urls``);
an archive's ``provider_urls`` (PROTOCOL.md 2, grouptun extension) replaces
them at run time, and this file keeps that list across restarts, so a
member whose token named replicas since retired still finds the current
ones. Format: ``{"urls": ["https://host:port", ...]}``, written atomically.

The file only says where to ask (answers are checked against the pinned
certificate and keys), so a damaged one is not fatal: :meth:`load` says
why it is unusable and the daemon falls back to the config's list.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from grouptun.core.jointoken import url_list_problem
from grouptun.errors import ConfigError
from grouptun.control.keystore import write_atomic

FILE_NAME = "provider-urls.json"


class ProviderUrlsFile:
    def __init__(self, state_dir: Path, write: Callable[[Path, bytes, int], None] = write_atomic) -> None:
        self.path = Path(state_dir) / FILE_NAME
        self._write = write

    def load(self) -> tuple[str, ...] | None:
        """The kept list; None when there is none; ConfigError naming the file when it is unusable."""
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise ConfigError(str(self.path), f"unreadable: {exc}") from exc
        urls = data.get("urls") if isinstance(data, dict) else None
        problem = url_list_problem(urls)
        if problem is not None:
            raise ConfigError(str(self.path), f"urls {problem}")
        return tuple(urls)

    def save(self, urls: tuple[str, ...]) -> None:
        """Keep ``urls`` (OSError passes through: the caller logs it and runs on with the list in memory)."""
        self._write(self.path, (json.dumps({"urls": list(urls)}) + "\n").encode(), 0o600)
