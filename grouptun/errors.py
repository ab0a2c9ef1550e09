"""The one exception tree of the ``grouptun`` package.

::

    GrouptunError                      base; the CLI maps every subclass to an exit code
    ├── ProtocolError                  a datagram or document breaks PROTOCOL.md
    │   ├── WireFormatError            malformed header (core.wire)
    │   ├── AuthenticationError        tag did not verify (core.seal)
    │   ├── SequenceExhausted          sender reached n_max; sending refused (core.sequence)
    │   ├── EpochRejected              a new epoch failed the acceptance order (section 2)
    │   ├── CapsuleError               a capsule or sealed salt did not open
    │   └── SealedDataError            a sealed-data blob malformed, altered, truncated or not for us
    ├── VectorsError                   malformed test-vector input (``grouptun vectors``)
    ├── UsageError                     a request the command cannot serve as asked (``grouptun export``)
    ├── ConfigError                    bad configuration; names the key at fault
    ├── CredentialError                missing or wrong identification credential
    ├── KeystoreError                  private keys at rest missing, corrupt or unreadable
    │   ├── KeystoreLocked             the credential does not open it (exits 77 like CredentialError)
    │   └── StateDirFull               the epoch statefile cannot be written: no space (ENOSPC/EDQUOT)
    ├── StateDirLocked                 another daemon runs on this state directory (its lock is held)
    ├── InstanceSuperseded             the member was started elsewhere: the provider names another instance
    ├── MemberRemoved                  the member was removed from the group (by its admin, or its time ended)
    ├── ProviderError                  the trust provider could not be reached or used
    │   ├── ProviderRefused            it answered with a refusal (4xx) and a reason
    │   └── LinkUnavailable            our (home) provider answered, but could not reach the
    │                                  linked provider that owns the group (PROTOCOL.md 8)
    ├── SystemSetupError               TUN, netlink, sockets, privileges
    ├── ControlError                   the control socket (daemon not running, refused)
    │   └── ExportRefused              an export rule limits the label to other members' attributes
    ├── LoopUnavailable                the event loop did not run a control-thread call (stalled/closed)
    └── OffloadError                   a TUN super-packet or virtio-net header that cannot be segmented

Protocol errors on the data path are never raised to the CLI: the session
turns them into drop counters. They derive from ``GrouptunError`` so that a
caller that does want to stop on them can.
"""

from __future__ import annotations


class GrouptunError(Exception):
    """Base of every error grouptun raises on purpose."""

    exit_code = 1


class ProtocolError(GrouptunError):
    exit_code = 65  # EX_DATAERR


class WireFormatError(ProtocolError):
    """A datagram whose header breaks PROTOCOL.md section 5."""


class AuthenticationError(ProtocolError):
    """A packet whose tag does not verify under the key it claims."""


class SequenceExhausted(ProtocolError):
    """The sender has used every n up to n_max in this epoch."""


class EpochRejected(ProtocolError):
    """A new epoch failed one step of the acceptance order (PROTOCOL.md 2)."""

    def __init__(self, step: str, detail: str = "") -> None:
        self.step = step
        self.detail = detail
        super().__init__(f"epoch refused at step '{step}'" + (f": {detail}" if detail else ""))


class CapsuleError(ProtocolError):
    """A capsule or sealed salt that does not open with the member's key."""


class SealedDataError(ProtocolError):
    """A sealed-data blob (core.sealeddata) that is malformed, altered, truncated or not sealed to us."""


class VectorsError(GrouptunError):
    """Malformed input to ``grouptun vectors``; names the vector and field."""

    exit_code = 2


class UsageError(GrouptunError):
    """A command-line request that is wrong as asked: unknown type, bad label, format of another type."""

    exit_code = 2  # what argparse exits with on a usage error


class ConfigError(GrouptunError):
    """Bad configuration. ``key`` names the setting at fault."""

    exit_code = 78  # EX_CONFIG

    def __init__(self, key: str, problem: str) -> None:
        self.key = key
        self.problem = problem
        super().__init__(f"config key '{key}': {problem}")


class CredentialError(GrouptunError):
    exit_code = 77  # EX_NOPERM


class KeystoreError(GrouptunError):
    exit_code = 74  # EX_IOERR


class StateDirFull(KeystoreError):
    """The state directory has no room for the epoch statefile; the control path retries with backoff."""


class StateDirLocked(GrouptunError):
    """A second ``grouptun up`` on a state directory another daemon holds (PROTOCOL.md 4)."""

    exit_code = 75  # EX_TEMPFAIL: it can start once the other daemon has stopped


class InstanceSuperseded(GrouptunError):
    """Another daemon started as this member (PROTOCOL.md 4): this one stopped sending and exits.

    Restarting would only supersede the other one in turn (two copies would
    take turns forever), so systemd's unit does not restart on this status.
    """

    exit_code = 76


class MemberRemoved(GrouptunError):
    """The provider removed this member (its admin did, or its membership's time ended): this daemon stops.

    Learnt from a verified archive, newer than the held one, that no longer
    lists the member, or from the provider's 410 to a request the member
    signed. Restarting cannot help (the member needs a new invitation), so
    systemd's unit does not restart on this status (EX_NOUSER).
    """

    exit_code = 67


class KeystoreLocked(KeystoreError):
    """The keystore's tag does not verify under this credential: a wrong credential
    (or a tampered file, which AES-GCM cannot tell apart). Neither heals by
    restarting, so it exits like a credential error: the units' RestartPreventExitStatus."""

    exit_code = 77  # EX_NOPERM


class ProviderError(GrouptunError):
    exit_code = 69  # EX_UNAVAILABLE


class ProviderRefused(ProviderError):
    """The provider answered 4xx; ``status`` and ``reason`` say why."""

    def __init__(self, status: int, reason: str) -> None:
        self.status = status
        self.reason = reason
        super().__init__(f"provider refused ({status}): {reason}")


class LinkUnavailable(ProviderError):
    """The member's home provider answered 502/503 with the state of its link to the group's owner
    (``link``: ``{"name", "contact", "down_since", "last_failure", ...}``, provider/linkstate.py)."""

    def __init__(self, status: int, reason: str, link: dict) -> None:
        self.status, self.reason, self.link = status, reason, link
        super().__init__(f"provider answered {status}: {reason}")


class SystemSetupError(GrouptunError):
    exit_code = 71  # EX_OSERR


class ControlError(GrouptunError):
    exit_code = 3

    def __init__(self, message: str = "", exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:  # the daemon's own error's status, carried over the control socket
            self.exit_code = exit_code


class ExportRefused(ControlError):
    """``grouptun export`` of a label whose export rule this member's signed attributes do not satisfy."""

    exit_code = 77  # EX_NOPERM


class OffloadError(GrouptunError):
    """A TUN super-packet or its virtio-net header that cannot be segmented (offload)."""


class LoopUnavailable(GrouptunError):
    """The daemon's event loop did not run a call from the control thread.

    ``closed``: the loop is closed (shutting down); otherwise it did not
    answer within its timeout (stalled), and the call may still run later.
    """

    exit_code = 70  # EX_SOFTWARE

    def __init__(self, message: str, closed: bool = False) -> None:
        self.closed = closed
        super().__init__(message)
