"""How both command lines end (``grouptun`` and ``grouptun-provider``): the one place an exception of either tree
becomes one line on stderr and its class's exit code.

Both trees root in ``grouptun.errors.GrouptunError`` (the provider's
``ProviderFault`` is a subclass), so one mapping serves both; a traceback
is printed only with ``GROUPTUN_DEBUG=1``, and Ctrl-C exits 130 as a shell
expects.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from grouptun.errors import GrouptunError
from grouptun.ops.logsetup import fatal

INTERRUPTED = 130  # 128 + SIGINT


def run_command(label: str, call: Callable[[], int | None]) -> int:
    """``call()``'s exit status; an error of the tree is printed after ``label`` and exits with its code."""
    try:
        return int(call() or 0)
    except GrouptunError as exc:
        if os.environ.get("GROUPTUN_DEBUG") == "1":
            raise
        fatal(f"{label}: {exc}")
        return exc.exit_code
    except KeyboardInterrupt:
        return INTERRUPTED
