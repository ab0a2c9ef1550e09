"""Logging for grouptun: journald under systemd, timestamps on a terminal.

``setup_logging(level, journald=None)`` configures the root logger with one
stderr handler:

* journald mode (stderr is the journal stream: ``$JOURNAL_STREAM`` names
  stderr's device:inode, see systemd.exec(5)): ``<N>logger: message``. The
  ``<N>`` syslog priority prefix (sd-daemon(3)) sets PRIORITY in the
  journal, so ``journalctl -p warning`` works; no timestamp of our own
  because journald adds one.
* terminal / file mode: ``2026-11-23T03:10:00.123Z WARNING logger: message``
  (UTC, ISO 8601).

Every event is exactly ONE line in both modes: newlines and other control
characters in the message or traceback are escaped (``\\n``), so a
peer-supplied string cannot forge a second log entry and ``journalctl``
keeps a traceback together with its event.

Libraries: pyroute2 logs below ERROR are dropped (``QUIET_LIBRARIES``): it
warns twice at import when ``/proc/net/psched`` is hidden (``ProcSubset=pid``;
we use no tc), and at debug it dumps every netlink message. Our own debug
logs stay. The CLI's last words before a non-zero exit go through
:func:`fatal`, at priority err in the journal.

Secrets: :class:`SecretGuard` sits on the handler and rewrites records
before formatting. It replaces (1) any bytes-like argument longer than
``MAX_BYTES_ARG`` bytes, also inside a tuple/list/dict argument, and
(2) any ``b'...'``/``bytearray(b'...')`` literal longer than that in the
rendered message (catches f-strings and ``%r`` of objects holding bytes)
with ``<redacted N bytes>``, and (3) any :class:`Secret` by ``<secret>``.
Limits: it cannot recognise a secret already turned into hex, base64 or an
int by the caller; code must not do that (log fingerprints, not keys).
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import re
import sys
from typing import Any, TextIO

# Longer bytes-likes than this are treated as possibly secret. 16 lets a
# group_id / data_id / short fingerprint through; every key is >= 32.
MAX_BYTES_ARG = 16

_PRIORITY = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6, logging.DEBUG: 7}

# Library loggers whose records below the level are dropped at our handler. A filter, not
# only setLevel: pyroute2 resets its logger to NOTSET when it is first imported (after setup).
QUIET_LIBRARIES = {"pyroute2": logging.ERROR}

_BYTES_LITERAL = re.compile(r"""(?:bytearray\()?b(?P<q>['"])(?P<body>(?:\\.|(?!(?P=q)).)*)(?P=q)\)?""")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class Secret:
    """Wrap a value that must never reach a log: ``log.info("%s", Secret(k))``."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __repr__(self) -> str:
        return "<secret>"

    __str__ = __repr__


def _redact_arg(arg: Any, depth: int = 0) -> tuple[Any, bool]:
    if isinstance(arg, Secret):
        return "<secret>", True
    if isinstance(arg, (bytes, bytearray, memoryview)):
        size = arg.nbytes if isinstance(arg, memoryview) else len(arg)
        if size > MAX_BYTES_ARG:
            return f"<redacted {size} bytes>", True
        return arg, False
    if depth < 2 and isinstance(arg, (tuple, list)):
        pairs = [_redact_arg(a, depth + 1) for a in arg]
        if any(hit for _, hit in pairs):
            return type(arg)(v for v, _ in pairs), True
    if depth < 2 and isinstance(arg, dict):
        pairs = {k: _redact_arg(v, depth + 1) for k, v in arg.items()}
        if any(hit for _, hit in pairs.values()):
            return {k: v for k, (v, _) in pairs.items()}, True
    return arg, False


def _literal_size(body: str) -> int:
    """Byte length of a repr'd bytes body such as ``\\x00ab\\n``."""
    return len(re.findall(r"\\x[0-9a-fA-F]{2}|\\.|.", body))


def _redact_literals(text: str) -> tuple[str, bool]:
    hit = False

    def sub(m: re.Match) -> str:
        nonlocal hit
        size = _literal_size(m.group("body"))
        if size <= MAX_BYTES_ARG:
            return m.group(0)
        hit = True
        return f"<redacted {size} bytes>"

    return _BYTES_LITERAL.sub(sub, text), hit


class SecretGuard(logging.Filter):
    """Rewrites records so bytes that may be keys never reach a handler.

    Installed twice by :func:`setup_logging`: in the record factory (so
    every handler, also ones added by libraries, sees the redacted record)
    and on our handler (for records made before setup). Re-running it on a
    guarded record changes nothing.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.args:
            if isinstance(record.args, dict):
                record.args, _ = _redact_arg(record.args)
            else:
                record.args = tuple(_redact_arg(a)[0] for a in record.args)
        # Render now so the literal scan sees f-strings and %r output too.
        try:
            message = record.getMessage()
        except (TypeError, ValueError) as exc:  # a bad format string must not kill logging
            message = f"{record.msg!r} (unformattable: {exc})"
        message, _ = _redact_literals(message)
        if isinstance(record.msg, (bytes, bytearray, memoryview)):
            message, _ = _redact_arg(record.msg)
        record.msg, record.args = message, None
        return True


class QuietLibraries(logging.Filter):
    """Drops records of the ``QUIET_LIBRARIES`` loggers (and their children) below their level."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, level in QUIET_LIBRARIES.items():
            if record.name == name or record.name.startswith(name + "."):
                return record.levelno >= level
        return True


def quiet_libraries() -> None:
    """Raise the library loggers' levels (again after a library's import reset them),
    so their debug records are not even made."""
    for name, level in QUIET_LIBRARIES.items():
        logging.getLogger(name).setLevel(level)


def _one_line(text: str) -> str:
    return _CONTROL.sub(lambda m: "\\n" if m.group(0) == "\n" else f"\\x{ord(m.group(0)):02x}", text)


class _BaseFormatter(logging.Formatter):
    def body(self, record: logging.LogRecord) -> str:
        text = f"{record.name}: {record.getMessage()}"
        if record.exc_info:
            exc_text, _ = _redact_literals(self.formatException(record.exc_info))
            text += "\n" + exc_text
        if record.stack_info:
            text += "\n" + record.stack_info
        return _one_line(text)


class JournaldFormatter(_BaseFormatter):
    """``<N>logger: message``: priority prefix, no timestamp."""

    def format(self, record: logging.LogRecord) -> str:
        return f"<{priority(record.levelno)}>{self.body(record)}"


class TerminalFormatter(_BaseFormatter):
    """``2026-11-23T03:10:00.123Z LEVEL logger: message``."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = _dt.datetime.fromtimestamp(record.created, _dt.timezone.utc)
        when = f"{stamp.strftime('%Y-%m-%dT%H:%M:%S')}.{stamp.microsecond // 1000:03d}Z"
        return f"{when} {record.levelname} {self.body(record)}"


def priority(levelno: int) -> int:
    """syslog priority for a logging level (custom levels round down)."""
    for level in sorted(_PRIORITY, reverse=True):
        if levelno >= level:
            return _PRIORITY[level]
    return 7


def stream_is_journal(stream: TextIO, environ: dict | None = None) -> bool:
    """True if ``stream`` is the journal stream systemd connected us to."""
    env = os.environ if environ is None else environ
    value = env.get("JOURNAL_STREAM", "")
    if ":" not in value:
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    dev, _, ino = value.partition(":")
    return dev == str(st.st_dev) and ino == str(st.st_ino)


_base_factory = None


def _install_record_factory() -> None:
    global _base_factory
    if _base_factory is not None:
        return
    _base_factory = logging.getLogRecordFactory()
    guard = SecretGuard()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = _base_factory(*args, **kwargs)
        guard.filter(record)
        return record

    logging.setLogRecordFactory(factory)


def fatal(line: str, stream: TextIO | None = None) -> None:
    """Print the CLI's one-line reason for exiting; at priority err when stderr is the journal
    (without the prefix journald files a bare stderr line at info, hidden by ``-p warning``)."""
    stream = sys.stderr if stream is None else stream
    prefix = f"<{_PRIORITY[logging.ERROR]}>" if stream_is_journal(stream) else ""
    print(prefix + _one_line(line), file=stream, flush=True)


def teardown_logging() -> None:
    """Undo :func:`setup_logging` (tests; a daemon never needs it)."""
    global _base_factory
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == "grouptun"]:
        root.removeHandler(old)
    if _base_factory is not None:
        logging.setLogRecordFactory(_base_factory)
        _base_factory = None
    logging.captureWarnings(False)


def setup_logging(level: str | int = "INFO", journald: bool | None = None,
                  stream: TextIO | None = None) -> logging.Handler:
    """Configure the root logger; returns the handler it installed.

    ``journald=None`` decides from ``$JOURNAL_STREAM``. Idempotent: a second
    call replaces the handler installed by the first.
    """
    stream = sys.stderr if stream is None else stream
    if journald is None:
        journald = stream_is_journal(stream)
    handler = logging.StreamHandler(stream)
    handler.set_name("grouptun")
    handler.addFilter(QuietLibraries())
    handler.addFilter(SecretGuard())
    handler.setFormatter(JournaldFormatter() if journald else TerminalFormatter())
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == "grouptun"]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    quiet_libraries()
    _install_record_factory()
    logging.captureWarnings(True)
    return handler
