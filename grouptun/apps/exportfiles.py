"""Export files: the daemon keeps crypto-products current on disk for services to watch (issue 20, item 2).

Config (``[export]`` of the member config; absent or ``files = []``: no files)::

    [export]
    dir = "/run/grouptun/lan/export"   # default /run/grouptun/GROUP/export (made 0700)
    owner = "www-data"                 # user name or uid owning dir and files (default: the daemon's, root)
    group = "www-data"                 # group name or gid (default: the owner's primary group)
    files = [{ label = "web", type = "tls-psk", format = "openssl-psk" },
             { label = "backup", type = "key", format = "base64", length = 32, context = "nightly" }]

For each entry the daemon writes ``DIR/TYPE-LABEL.current`` (the product of
the epoch it sends on) and, while the previous epoch is still held (its grace
period), ``DIR/TYPE-LABEL.previous``; after the grace the ``.previous`` file
goes. Every file is mode 0600, written to a temporary name and renamed, so a
reader (a path watch, a reload) sees the old content or the new, never half.
Files are rewritten when the pair (current, previous epoch) changes, which
the daemon checks every ``CHECK_INTERVAL`` seconds. Each write is logged by
label and epoch, never by value. Every entry is checked at load like a
``grouptun export`` request: an unknown type, a bad label, a format the type
lacks is a ConfigError naming ``export.files[N]``.

Export rules (``grouptun.core.exportrules``): an entry whose label the
group's signed export rules limit to attributes this member lacks is not
written, and its files are removed; that is logged once by label, with the
rule, and the entry is written again once a newer archive allows it.
"""

from __future__ import annotations

import grp
import logging
import os
import pwd
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from grouptun.errors import ConfigError, UsageError

CHECK_INTERVAL = 1.0
log = logging.getLogger("grouptun.export")


@dataclass(frozen=True)
class ExportFiles:
    dir: Path | None = None      # None: /run/grouptun/GROUP/export
    uid: int | None = None       # None: the daemon's own
    gid: int | None = None
    files: tuple = ()            # grouptun.apps.products.ExportRequest, one per file

    def directory(self, group: str) -> Path:
        return self.dir or Path("/run/grouptun") / group / "export"


def _lookup(value, by_id, by_name, key: str, what: str):
    """The passwd/group entry of a name or a number; ConfigError naming ``key`` if there is none."""
    number = isinstance(value, int) and not isinstance(value, bool)
    try:
        entry = by_id(value) if number else by_name(value) if isinstance(value, str) else None
    except (KeyError, OverflowError):  # unknown, or a number beyond uid_t
        entry = None
    if entry is None:
        raise ConfigError(key, f"no such {what} {value!r} (a {what} name or number)")
    return entry


def _owner(table: dict) -> tuple[int | None, int | None]:
    uid = gid = None
    if table.get("owner") is not None:
        entry = _lookup(table["owner"], pwd.getpwuid, pwd.getpwnam, "export.owner", "user")
        uid, gid = entry.pw_uid, entry.pw_gid
    if table.get("group") is not None:
        gid = _lookup(table["group"], grp.getgrgid, grp.getgrnam, "export.group", "group").gr_gid
    return uid, gid


def _file(number: int, raw: object):
    from grouptun.apps.products import check_request

    where = f"export.files[{number}]"
    if not isinstance(raw, dict):
        raise ConfigError(where, "must be a table like { label = \"web\", type = \"tls-psk\" }")
    unknown = sorted(set(raw) - {"label", "type", "format", "length", "context"})
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}", "unknown key")
    label, type_, context = raw.get("label"), raw.get("type", "key"), raw.get("context", "")
    length, format_ = raw.get("length"), raw.get("format")
    if not isinstance(label, str) or not isinstance(type_, str) or not isinstance(context, str):
        raise ConfigError(where, "label, type and context are strings (label is required)")
    if (length is not None and (type(length) is not int)) or (format_ is not None and not isinstance(format_, str)):
        raise ConfigError(where, "length is an integer and format a string")
    try:
        return check_request(type_, label, context.encode("utf-8"), length, format_)
    except UsageError as exc:
        raise ConfigError(where, str(exc)) from None


def parse(data: dict) -> ExportFiles:
    """The ``[export]`` table of a decoded config; ConfigError names the key at fault."""
    table = data.get("export")
    if table is None:
        return ExportFiles()
    if not isinstance(table, dict):
        raise ConfigError("export", "must be a table")
    for key in table:
        if key not in {"dir", "owner", "group", "files"}:
            raise ConfigError(f"export.{key}", "unknown key")
    directory = table.get("dir")
    if directory is not None and (not isinstance(directory, str) or not os.path.isabs(directory)):
        raise ConfigError("export.dir", "must be an absolute path")
    files = table.get("files", [])
    if not isinstance(files, list):
        raise ConfigError("export.files", "must be an array of tables")
    requests = tuple(_file(n, raw) for n, raw in enumerate(files))
    names = [f"{r.type}-{r.name}" for r in requests]
    if len(set(names)) != len(names):
        raise ConfigError("export.files", "two entries have the same type and label (one file each)")
    uid, gid = _owner(table)
    return ExportFiles(Path(directory) if directory else None, uid, gid, requests)


def to_toml(export: ExportFiles) -> dict:
    """``[export]`` as ``config.render`` writes it back (empty when there are no files)."""
    if not export.files:
        return {}
    out: dict = {} if export.dir is None else {"dir": str(export.dir)}
    out.update({k: v for k, v in (("owner", export.uid), ("group", export.gid)) if v is not None})
    out["files"] = [{"label": r.name, "type": r.type, "format": r.format,
                     **({"length": r.length} if r.length is not None else {}),
                     **({"context": r.context.decode("utf-8")} if r.context else {})} for r in export.files]
    return out


class ExportWriter:
    """Writes the files of ``config`` for the epochs held; ``render(request, state)`` makes one product's text."""

    def __init__(self, config: ExportFiles, group: str, render: Callable[[object, object], str],
                 chown: Callable[[str, int, int], None] = os.chown) -> None:
        self.config, self.dir, self.render, self.chown = config, config.directory(group), render, chown
        self.written: tuple | None = None    # (current epoch, previous epoch, refused labels) last written

    def refresh(self, current, previous, refused: dict[str, str] | None = None) -> bool:
        """Rewrite if the (current, previous) epochs or the ``refused`` labels (label -> why) changed;
        EpochState or None each. True if written."""
        refused = refused or {}
        wanted = (None if current is None else current.epoch, None if previous is None else previous.epoch,
                  frozenset(refused))
        if wanted == self.written or current is None:
            return False
        self._prepare_dir()
        for request in self.config.files:
            base = f"{request.type}-{request.name}"
            if request.name in refused:
                self._drop(base)
                log.warning("export file %s (label %r) not written: %s", base, request.name, refused[request.name])
                continue
            self._write(base + ".current", self.render(request, current))
            if previous is not None:
                self._write(base + ".previous", self.render(request, previous))
            else:
                (self.dir / (base + ".previous")).unlink(missing_ok=True)
            log.info("export file %s (label %r): epoch %d%s", base, request.name, current.epoch,
                     "" if previous is None else f", previous {previous.epoch}")
        self.written = wanted
        return True

    def _prepare_dir(self) -> None:
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)
        self._own(str(self.dir))

    def _own(self, path: str) -> None:
        if self.config.uid is not None or self.config.gid is not None:
            self.chown(path, -1 if self.config.uid is None else self.config.uid,
                       -1 if self.config.gid is None else self.config.gid)

    def _write(self, name: str, text: str) -> None:
        temporary = self.dir / f".{name}.tmp"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="ascii") as handle:
                handle.write(text + "\n")
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(temporary, 0o600)
            self._own(str(temporary))
            os.replace(temporary, self.dir / name)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise

    def _drop(self, base: str) -> None:
        for suffix in (".current", ".previous"):
            (self.dir / f"{base}{suffix}").unlink(missing_ok=True)

    def remove(self) -> None:
        """At shutdown: the products of epochs nobody holds any more should not stay on disk."""
        for request in self.config.files:
            self._drop(f"{request.type}-{request.name}")
