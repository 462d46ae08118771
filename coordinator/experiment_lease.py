"""One coordinator per experiment: the coordinator lease on the experiment document.

The coordinator that starts a search (``hyperfleet search``, ``hyperfleet local``) writes its
lease into the experiment document it writes anyway (``coordinator``: ``id``, ``host``, ``pid``,
``lease_s``, ``renewed``), conditionally on the document's ``version``
(:func:`coordinator.search.prepare_experiment`), and renews it on the database's clock from a
thread (:class:`CoordinatorLease`) while it runs. A second coordinator of the same exp key reads
the lease (:func:`check_holder`): while it is live the second one is refused in one line naming
the holder's host and pid; once it expired, or at once when the holder ran on this host and its
pid is gone, the second one takes the experiment over. A coordinator whose lease was taken over
(it was paused or cut off longer than its lease) notices at its next renewal, or before its next
insert, and stops with one line: it never queues a trial for an experiment it no longer holds.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import os
import socket
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from coordinator import defaults
from coordinator.errors import ExperimentBusy, StoreUnavailable
from coordinator.shown import shown
from coordinator.store import TrialStoreBase

logger = logging.getLogger(__name__)

#: the longest lease a stored document may claim (a hand-edited ``lease_s`` holds no longer)
MAX_LEASE_S = 3600.0
#: characters of a stored host name shown in a message
HOST_CHARS = 80


@dataclass(frozen=True)
class Holder:
    """A coordinator process, as its lease names it."""

    id: str
    host: str
    pid: int
    lease_s: float = defaults.COORDINATOR_LEASE_S

    @classmethod
    def this_process(cls, lease_s: float = defaults.COORDINATOR_LEASE_S) -> Holder:
        host, pid = socket.gethostname(), os.getpid()
        return cls(f"{host}:{pid}:{uuid.uuid4().hex[:8]}", host, pid, lease_s)

    def stamp(self, now: dt.datetime) -> dict[str, Any]:
        """The experiment document's ``coordinator`` field: this lease, renewed ``now``."""
        return {
            "id": self.id,
            "host": self.host,
            "pid": self.pid,
            "lease_s": self.lease_s,
            "renewed": now,
        }


def pid_gone(pid: int) -> bool:
    """Whether no process ``pid`` runs on this host (a zombie, dead but not yet reaped by its
    parent, counts as gone)."""
    if not isinstance(pid, int) or isinstance(pid, bool) or not 0 < pid < 2**31:
        return False  # no pid of this host (junk in a document): not known to be gone
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (OSError, OverflowError, ValueError):  # e.g. another user's process: it exists
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except (OSError, IndexError):  # no /proc (not Linux): it exists
        return False


def describe(coordinator: Mapping[str, Any]) -> str:
    """``host myhost pid 123`` (the host bounded: it comes from the database)."""
    host = shown(coordinator.get("host"), HOST_CHARS, bare=True)
    return f"host {host} pid {shown(coordinator.get('pid'), bare=True)}"


def lease_state(coordinator: Any, now: dt.datetime, me: Holder | None = None) -> tuple[str, float]:
    """Whether the stored ``coordinator`` field still holds the experiment against ``me``:
    ``("none", 0)`` (no lease: never written, released, or ``me``'s own, same process
    included), ``("live", seconds left)``, ``("expired", seconds since)`` or ``("gone", 0)``
    (it ran on this host and its pid no longer exists)."""
    if not isinstance(coordinator, Mapping):
        return "none", 0.0
    renewed = coordinator.get("renewed")
    if not isinstance(renewed, dt.datetime):
        return "none", 0.0
    host, pid = coordinator.get("host"), coordinator.get("pid")
    if me is not None and (coordinator.get("id") == me.id or (host == me.host and pid == me.pid)):
        return "none", 0.0
    lease_s = coordinator.get("lease_s")
    if isinstance(lease_s, bool) or not isinstance(lease_s, (int, float)):
        lease_s = defaults.COORDINATOR_LEASE_S
    lease_s = min(float(lease_s), MAX_LEASE_S) if math.isfinite(lease_s) else MAX_LEASE_S
    age = (now - renewed.replace(tzinfo=None)).total_seconds()
    a_pid = isinstance(pid, int) and not isinstance(pid, bool) and pid > 0
    if a_pid and host == socket.gethostname() and pid_gone(pid):
        return "gone", 0.0
    if abs(age) >= lease_s:  # also a renewal stamped far ahead of the server clock (by hand)
        return "expired", age - lease_s
    return "live", lease_s - age


def check_holder(
    existing: Mapping[str, Any] | None, exp_key: str, now: dt.datetime, me: Holder | None
) -> None:
    """Raise :class:`ExperimentBusy` (one line, naming the holder's host and pid) when another
    live coordinator holds ``exp_key``; log a takeover when a dead one held it."""
    coordinator = (existing or {}).get("coordinator")
    state, seconds = lease_state(coordinator, now, me)
    if state == "live":
        assert isinstance(coordinator, Mapping)
        raise ExperimentBusy(
            f"exp key {exp_key!r} is being run by another coordinator ({describe(coordinator)}); "
            "one coordinator per experiment: wait for it to end, stop that process (kill its "
            "pid: a rerun continues the search), or use another --exp-key (`hyperfleet cancel` "
            f"ends the experiment for good); if it died, it is taken over "
            f"{math.ceil(seconds)} s from now"
        )
    if state in ("expired", "gone") and me is not None:
        assert isinstance(coordinator, Mapping)
        why = (
            "its pid is gone from this host"
            if state == "gone"
            else f"its lease expired {seconds:.0f} s ago"
        )
        logger.warning(
            "taking over %r from the coordinator %s: %s", exp_key, describe(coordinator), why
        )


class CoordinatorLease:
    """Renew ``holder``'s lease on ``exp_key`` every ``lease_s / 3`` while the ``with`` block
    runs, and release it at the end. :meth:`check` raises :class:`ExperimentBusy` once the
    lease was taken over; before an insert it renews the lease itself if the thread has not
    renewed it for half a lease (this process was paused), so a paused coordinator never
    queues a trial after another one took over."""

    def __init__(self, store: TrialStoreBase, exp_key: str, holder: Holder) -> None:
        self.store = store
        self.exp_key = exp_key
        self.holder = holder
        self.interval_s = holder.lease_s / 3
        self.lost = threading.Event()
        self._confirmed = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"coordinator-lease-{exp_key}", daemon=True
        )

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            if not self._renew():
                return

    def _renew(self) -> bool:
        """Renew once; ``False`` once the lease is lost (another coordinator took over)."""
        try:
            if self.store.renew_coordinator(self.exp_key, self.holder.id):
                self._confirmed = time.monotonic()
                return True
        except StoreUnavailable as e:  # the loop itself fails on the same outage
            logger.debug("coordinator lease of %r not renewed: %s", self.exp_key, e)
            return True
        if not self._stop.is_set():
            self.lost.set()
        return False

    def check(self, *, before_insert: bool = False) -> None:
        """Raise :class:`ExperimentBusy` if another coordinator took the experiment over."""
        stale = time.monotonic() - self._confirmed > self.holder.lease_s / 2
        if before_insert and stale and not self.lost.is_set():
            self._renew()
        if self.lost.is_set():
            exp = self.store.get_experiment(self.exp_key) or {}
            other = exp.get("coordinator")
            who = describe(other) if isinstance(other, Mapping) else "another coordinator"
            raise ExperimentBusy(
                f"search {self.exp_key!r}: taken over by the coordinator {who} while this one "
                "was paused or cut off longer than its lease; this one stops (the trials it "
                "queued stay for that one)"
            )

    def __enter__(self) -> CoordinatorLease:
        self._confirmed = time.monotonic()
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        if self.lost.is_set():
            return
        try:
            self.store.release_coordinator(self.exp_key, self.holder.id)
        except Exception as e:  # noqa: BLE001 - the lease then simply expires
            logger.debug("coordinator lease of %r not released: %s", self.exp_key, e)
