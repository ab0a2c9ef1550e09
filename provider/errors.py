"""The provider's exceptions, all under ``grouptun.errors.GrouptunError``.

::

    GrouptunError (grouptun.errors)
    └── ProviderFault               base of everything provider/ raises on purpose
        ├── StateDirError           state dir missing, not initialised, already initialised,
        │   │                       unreadable keys, wrong passphrase, database
        │   │                       unreachable or another provider's            (exit 74)
        │   └── SchemaError         database schema version unknown or newer     (exit 74)
        ├── DatabaseUrlError        the database URL setting (--database-url, env,
        │                           provider.json) unparseable, unknown driver,
        │                           password file unreadable; names the setting  (exit 78)
        ├── InvalidInput            a bad name, CIDR, duration, field            (exit 64, HTTP 400)
        ├── NotFound                no such group / member / epoch / capsule     (exit 66, HTTP 404)
        ├── Conflict                exists already, address pool full, no epoch
        │   │                       yet, epoch counter exhausted                 (exit 75, HTTP 409)
        │   └── NotEnoughMembers    fewer than 2 members: no epoch (PROTOCOL 1)  (exit 75, HTTP 409)
        ├── Unauthorized            request signature missing, stale, not valid,
        │                           replayed, unknown or removed member          (HTTP 401)
        ├── Forbidden               join token unknown/used/expired/revoked/
        │                           exhausted, name does not match the
        │                           invitation, group expired, wrong credential  (exit 77, HTTP 403)
        ├── Gone                    a request signed by a removed or expired
        │                           member's own key (membership.py)             (HTTP 410)
        ├── LinkError               a linked provider unreachable, answering
        │   │                       badly, or not the one its link pins          (exit 69, HTTP 502)
        │   └── LinkUnreachable     the link's provider could not be reached; carries the link's
        │                           state (provider/linkstate.py)                (exit 69, HTTP 503)
        ├── PayloadTooLarge         request body over the limit                  (HTTP 413)
        ├── UnsupportedMediaType    a request body that is not application/json  (HTTP 415)
        └── RateLimited             per member / per address budget spent        (exit 75, HTTP 429)

The HTTP layer (``provider/app.py``) answers every ``ProviderFault`` with its
``http_status`` and ``{"detail": reason}``; the admin CLI prints
``grouptun-provider <cmd>: <reason>`` and exits with ``exit_code``. Anything
else escaping a route is a bug (HTTP 500, logged with a traceback).
"""

from __future__ import annotations

from grouptun.errors import GrouptunError


class ProviderFault(GrouptunError):
    exit_code = 1
    http_status = 400

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class StateDirError(ProviderFault):
    exit_code = 74  # EX_IOERR
    http_status = 500


class SchemaError(StateDirError):
    pass


class DatabaseUrlError(ProviderFault):
    exit_code = 78  # EX_CONFIG
    http_status = 500

    def __init__(self, setting: str, problem: str) -> None:
        self.setting = setting
        super().__init__(f"database URL from {setting}: {problem}")


class InvalidInput(ProviderFault):
    exit_code = 64  # EX_USAGE
    http_status = 400


class NotFound(ProviderFault):
    exit_code = 66  # EX_NOINPUT
    http_status = 404


class Conflict(ProviderFault):
    exit_code = 75  # EX_TEMPFAIL
    http_status = 409


class Unauthorized(ProviderFault):
    exit_code = 77
    http_status = 401


class Forbidden(ProviderFault):
    exit_code = 77  # EX_NOPERM
    http_status = 403


class Gone(ProviderFault):
    """The signing member was removed (by the admin, or its time ended); the reason says which."""

    exit_code = 69
    http_status = 410


class LinkError(ProviderFault):
    """A linked provider (provider/links.py) that cannot be reached, or is not the provider its link pins."""

    exit_code = 69  # EX_UNAVAILABLE
    http_status = 502


class LinkUnreachable(LinkError):
    """A link request that did not reach the linked provider; ``link`` is the link's state after it
    (``provider.linkstate.shown`` plus ``name``), which the home provider's 503 to its member carries."""

    http_status = 503

    def __init__(self, reason: str, link: dict) -> None:
        self.link = link
        super().__init__(reason)


class PayloadTooLarge(ProviderFault):
    http_status = 413


class UnsupportedMediaType(ProviderFault):
    http_status = 415


class RateLimited(ProviderFault):
    exit_code = 75
    http_status = 429


class NotEnoughMembers(Conflict):
    """The group has fewer than 2 members, so no epoch (PROTOCOL.md 1: 2 <= N)."""
