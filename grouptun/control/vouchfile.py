"""The voucher of a member in a group a linked provider owns (PROTOCOL.md 8), kept in its state dir.

``grouptun join`` writes ``<state_dir>/provider-vouch`` when the enrollment
answer carries one (the member's own provider signed it; it is checked at
join and with every archive, so the file needs no protection beyond its
0644 mode: it holds public keys). The daemon verifies the group's archives
through it (``grouptun.core.vouch``) and then does not take the owner's
``provider_urls``: its provider stays the one it joined. Absent: an
ordinary group, archives checked against the pinned keys.
"""

from __future__ import annotations

from pathlib import Path

from grouptun.core.vouch import MAX_VOUCH_BYTES
from grouptun.errors import ConfigError

VOUCH_FILE = "provider-vouch"


def load(state_dir: Path) -> bytes | None:
    path = Path(state_dir) / VOUCH_FILE
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(str(path), f"cannot read: {exc.strerror or exc}") from exc
    if len(raw) > MAX_VOUCH_BYTES:
        raise ConfigError(str(path), f"over {MAX_VOUCH_BYTES} bytes")
    return raw


def save(state_dir: Path, vouch: bytes) -> None:
    from grouptun.control import keystore  # noqa: PLC0415 -- its atomic write (fsync, rename)

    keystore.write_atomic(Path(state_dir) / VOUCH_FILE, vouch, 0o644)
