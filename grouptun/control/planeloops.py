"""The control path's two thread bodies, and what each failure does to them.

:func:`run` is the watch thread (``ControlPlane.run``): it draws a fresh
32-byte start challenge, starts :func:`request_loop` beside it, then starts
(``ControlPlane.start_once`` until an epoch answering the challenge is
installed) and watches (``ControlPlane.watch_once``) until ``stop``. The
data plane never waits for it: a failed step is retried with jittered
exponential backoff (``backoff_max``) while the installed epoch keeps
carrying traffic, and each failure is told to the plane's
:class:`~grouptun.control.controlstate.ControlStatus` for ``status``.

It ends early only when our member is no longer ours: another daemon
started it (InstanceSuperseded) or the provider removed it (MemberRemoved,
from a verified archive or the provider's 410 to any request we sign). The
session then stops sending at once (``SessionPort.stop_sending``), the
reason is logged at error and ``on_superseded`` is told (the daemon exits
with the exception's status).

:func:`request_loop` forwards the session's requests and sends the reports
(:mod:`grouptun.control.requestforward`) every ``request_interval`` once an
epoch is held, backing off to 5 s while the provider or the event loop
fails.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from grouptun.core.archive import CHALLENGE_SIZE
from grouptun.errors import (EpochRejected, InstanceSuperseded, LinkUnavailable, LoopUnavailable, MemberRemoved,
                             ProviderError, ProviderRefused, StateDirFull)

if TYPE_CHECKING:
    from grouptun.control.plane import ControlPlane

log = logging.getLogger("grouptun.control")

MAX_REQUEST_DELAY = 5.0  # the request thread's backoff cap (s): a rekey waits no longer once the provider is back


def run(plane: ControlPlane, stop: threading.Event) -> None:
    """Thread body: start (challenge rule), then watch until ``stop``; rekeys/reports in a second thread."""
    challenge = plane.urandom(CHALLENGE_SIZE)
    log.info("requesting a fresh epoch from the provider (start challenge)")
    done = threading.Event()
    requests = threading.Thread(target=request_loop, args=(plane, stop, done), name="grouptun-control-requests",
                                daemon=True)
    requests.start()
    try:
        _drive(plane, stop, challenge)
    finally:
        done.set()


def _drive(plane: ControlPlane, stop: threading.Event, challenge: bytes) -> None:
    status = plane.status
    started = False
    while not stop.is_set():
        try:
            if not started:
                started = plane.start_once(challenge)
            else:
                plane.watch_once()
            continue
        except (InstanceSuperseded, MemberRemoved) as exc:
            _superseded(plane, exc)
            return
        except ProviderRefused as exc:
            if exc.status != 410:  # 410: the provider says our member was removed, and why
                status.refused_by_provider(exc)
            else:
                _superseded(plane, MemberRemoved(f"member {plane.member!r} was removed: {exc.reason}"))
                return
        except StateDirFull as exc:
            status.state_dir_full(exc)
        except EpochRejected as exc:
            status.refused(exc)
        except LinkUnavailable as exc:
            status.link_down(exc)
        except ProviderError as exc:
            status.provider_trouble(exc)
        except LoopUnavailable as exc:  # closed: shutting down; else the loop is stalled
            if stop.is_set():
                return
            log.warning("%s (the control path retries)", exc)
            status.set(last_error=str(exc))
        except Exception as exc:  # noqa: BLE001 - the control thread must outlive a bug
            log.exception("control path error: %s", exc)
            status.set(last_error=f"internal: {type(exc).__name__}: {exc}")
        delay = plane.backoff.next()
        status.set(retry_in=delay)
        log.debug("retrying in %.1f s", delay)
        stop.wait(delay)


def _superseded(plane: ControlPlane, exc: InstanceSuperseded | MemberRemoved) -> None:
    """Another daemon owns our member, or the provider removed it: stop sending now, say so, let the daemon exit."""
    try:
        plane.port.stop_sending()
    except LoopUnavailable as stalled:  # closed: already shutting down; stalled: exiting stops it anyway
        log.warning("stopping the session: %s", stalled)
    plane.status.stopped(exc)
    if plane.on_superseded is not None:
        plane.on_superseded(exc)


def request_loop(plane: ControlPlane, stop: threading.Event, done: threading.Event | None = None) -> None:
    """Thread body beside the watch: rekey requests and reports every ``request_interval``.

    Runs until ``stop`` or ``done`` is set; it only checks ``stop`` and
    sleeps on ``done`` (:func:`run` sets it on return), so the caller's
    ``stop.wait`` is the watch thread's alone.
    """
    done = done or threading.Event()
    failures = 0
    while not done.wait(min(plane.request_interval * 2 ** failures, MAX_REQUEST_DELAY)) and not stop.is_set():
        if plane.held_epoch < 0:
            continue  # nothing to ask for or report before the first epoch
        try:
            plane.service_requests()
            failures = 0
        except ProviderError as exc:  # the watch thread logs provider trouble; retry soon
            log.debug("request forwarding: %s", exc)
            failures = min(failures + 1, 5)
        except LoopUnavailable as exc:  # closed: shutting down; else the loop is stalled
            if stop.is_set():
                return
            log.warning("request forwarding: %s", exc)
            failures = min(failures + 1, 5)
        except Exception:  # noqa: BLE001 - the thread must outlive a bug
            log.exception("request forwarding failed")
            failures = min(failures + 1, 5)
