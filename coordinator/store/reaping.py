"""Liveness on the database clock: the reaper of expired leases.

A worker that stops heartbeating (killed, paused, partitioned) is found through data: its
trial's ``lease_expires`` falls behind the server's clock. :meth:`Reaping.reap_expired` hands
such trials back with a release that is fenced *and* re-checks the expiry, so any number of
reapers may run at once and each expired lease is released exactly once.

One rule for every state a foreign or dead writer can leave: it is recovered here, on the
server's clock.

* **A RUNNING trial without a usable lease** (``lease_expires`` missing, null, a string...: a
  writer that renews none, such as stock hyperopt's worker, or a hand edit) counts from its
  ``book_time`` or ``refresh_time``, whichever is later, plus a grace
  (:data:`~coordinator.defaults.UNLEASED_GRACE_S`, ``$HYPERFLEET_UNLEASED_GRACE_S``): after
  that its writer is taken for dead and the trial is requeued as a lost attempt. One with no
  usable date either is given a lease of one grace from now. Only callers that name the
  experiment (its search, its plain ``fmin``, a pinned worker, ``reap --exp-key``) or
  experiments hyperfleet created recover these: another team's trials in the same database are
  left alone.
* **An outage is never charged to a trial** (:mod:`coordinator.store.outages`): a lease that
  ran out while the database could not be reached gets one more lease from the end of the
  outage, for its worker to renew it; if none does, it is requeued *not counted*.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import math
from collections.abc import Iterator
from typing import Any

import pymongo.errors

from coordinator import defaults, rules
from coordinator.shown import shown
from coordinator.states import AttemptOutcome, TrialState
from coordinator.store.base import Lease
from coordinator.store.connection import env_seconds, retrying
from coordinator.store.encoding import usable_date
from coordinator.store.experiments import AttemptLimits
from coordinator.store.handles import MongoHandles, StorePart
from coordinator.store.leases import LeaseWrites
from coordinator.store.outages import Outage, OutageRecord, covering
from coordinator.store.quarantine import Quarantine

logger = logging.getLogger(__name__)

GRACE_ENV = "HYPERFLEET_UNLEASED_GRACE_S"


def unleased_grace() -> float:
    """Seconds a RUNNING trial without a usable lease is given: $HYPERFLEET_UNLEASED_GRACE_S
    or :data:`~coordinator.defaults.UNLEASED_GRACE_S`."""
    return env_seconds(
        GRACE_ENV, defaults.UNLEASED_GRACE_S, lambda v: v > 0, "a positive number of seconds"
    )


class Reaping(StorePart):
    """Part of :class:`~coordinator.store.mongo.TrialStore`; see :mod:`coordinator.store.base`."""

    def __init__(
        self,
        mongo: MongoHandles,
        leases: LeaseWrites,
        limits: AttemptLimits,
        quarantine: Quarantine,
    ) -> None:
        super().__init__(mongo)
        self._leases = leases
        self._limits = limits
        self._quarantine = quarantine
        self._outages = OutageRecord(mongo)
        mongo.outage_listeners.append(self._outages.report)
        self._grace_s = unleased_grace()
        #: (``_id``, ``attempt``) of trials whose wait this process has logged
        self._noted: set[tuple[Any, Any]] = set()
        #: ``_id``s of other teams' lease-less trials (not ours to recover)
        self._foreign: set[Any] = set()

    def reap_expired(
        self, exp_key: str | None = None, *, max_attempts: int | None = None
    ) -> list[int]:
        """Release every RUNNING trial whose lease expired; returns the tids released."""
        now = self.mongo.server_time()
        query: dict[str, Any] = {"state": int(TrialState.RUNNING)}
        if exp_key is not None:
            query["exp_key"] = exp_key
        unusable = self._quarantine.unusable_ids()
        if unusable:
            query["_id"] = {"$nin": unusable}
        reaped = self._reap_unleased(query, now, exp_key is not None, max_attempts)
        found = self._find({**query, "lease_expires": {"$lt": now}})
        expired = [doc for doc in found if self._usable(doc)]
        outages: list[Outage] = []
        if expired:
            earliest = min(d["lease_expires"] for d in expired) - dt.timedelta(days=1)
            outages = self._outages.since(earliest)
        for doc in expired:
            with self._guard(doc):
                if self._reap_expired_one(doc, now, outages, max_attempts):
                    reaped.append(doc["tid"])
        return reaped

    @contextlib.contextmanager
    def _guard(self, doc: dict[str, Any]) -> Iterator[None]:
        """Whatever else a hostile document breaks in the reaper (date arithmetic past the
        calendar, a field a release cannot write) quarantines that document, in one line; the
        reaper goes on with the others."""
        try:
            yield
        except (OverflowError, TypeError, ValueError, pymongo.errors.WriteError) as e:
            self._quarantine.quarantine_trial(
                doc, f"the reaper cannot release it ({type(e).__name__}: {shown(str(e))})"
            )

    def _reap_expired_one(
        self,
        doc: dict[str, Any],
        now: dt.datetime,
        outages: list[Outage],
        max_attempts: int | None,
    ) -> bool:
        """Release ``doc``, whose lease expired; whether this call released it."""
        expires = doc["lease_expires"]
        reason = (
            f"lease expired at {expires:%H:%M:%S} UTC: worker {doc['owner']} stopped heartbeating"
        )
        outcome = AttemptOutcome.LOST
        lease_s = _lease_s(doc)
        outage = covering(outages, expires, lease_s)
        if outage is not None:
            resume = outage.end + dt.timedelta(seconds=lease_s)
            if now < resume:
                self._note_once(
                    doc,
                    f"its lease ran out during a database outage ({outage.describe()}): "
                    f"waiting until {resume:%H:%M:%S} UTC for its worker to renew it",
                )
                return False
            outcome = AttemptOutcome.REQUEUED
            reason = (
                f"lease ran out during a database outage ({outage.describe()}) and "
                f"worker {doc['owner']} did not renew it afterwards: not counted"
            )
        elif doc.get("held") is True:  # claimed behind another trial: most likely never ran
            outcome = AttemptOutcome.REQUEUED
            reason += " (the trial was held behind another one: not counted)"
        fence = {"lease_expires": {"$lt": now}}
        return bool(self._release(doc, outcome, reason, fence, max_attempts))

    def _usable(self, doc: dict[str, Any]) -> bool:
        """Whether the reaper may release ``doc``; one it cannot use goes to quarantine."""
        problem = rules.trial_problem(doc) or _unreapable(doc)
        if problem is None and not doc.get("owner"):
            problem = "RUNNING without an owner"
        if problem is not None:  # ERROR if ours (fenced), else left alone; logged once
            self._quarantine.quarantine_trial(doc, problem)
        return problem is None

    def _release(
        self,
        doc: dict[str, Any],
        outcome: AttemptOutcome,
        reason: str,
        fence: dict[str, Any],
        max_attempts: int | None,
    ) -> bool:
        """Release ``doc`` as read (fenced on its owner, attempt and ``fence``); whether this
        call did."""
        lease = Lease.from_doc(doc)
        limit = self._limits.attempt_limit(lease.exp_key, max_attempts or defaults.MAX_ATTEMPTS)
        # ``$eq``: a foreign writer's document may have no ``attempt`` (matched as missing)
        fence = {**fence, "attempt": {"$eq": doc.get("attempt")}}
        state = self._leases.release_fenced(lease, outcome, reason, limit, fence)
        if state is None:
            return False
        logger.warning("tid %s of %s: %s; now %s", lease.tid, lease.exp_key, reason, state.name)
        return True

    # -- RUNNING without a usable lease ---------------------------------------------------------

    def _reap_unleased(
        self,
        query: dict[str, Any],
        now: dt.datetime,
        named: bool,
        max_attempts: int | None,
    ) -> list[int]:
        """Recover the RUNNING trials whose ``lease_expires`` is not a date (see the module
        docstring); ``named``: the caller named the experiment."""
        reaped = []
        grace = dt.timedelta(seconds=self._grace_s)
        for doc in self._find({**query, "lease_expires": {"$not": {"$type": "date"}}}):
            if (not named and not self._ours(doc)) or not self._usable(doc):
                continue
            with self._guard(doc):
                if self._reap_unleased_one(doc, now, grace, max_attempts):
                    reaped.append(doc["tid"])
        return reaped

    def _reap_unleased_one(
        self, doc: dict[str, Any], now: dt.datetime, grace: dt.timedelta, max_attempts: int | None
    ) -> bool:
        """Recover ``doc`` (RUNNING without a usable lease) once its grace is over."""
        since = _latest_date(doc.get("book_time"), doc.get("refresh_time"))
        if since is None:  # nothing to count from: a lease of one grace, from now
            self._give_lease(doc, now + grace)
            return False
        deadline = since + grace
        if deadline >= now:
            self._note_once(
                doc,
                f"RUNNING without a usable lease (lease_expires "
                f"{_short(doc.get('lease_expires'))}; a writer that renews none, or a hand "
                f"edit): requeued at {deadline:%Y-%m-%d %H:%M:%S} UTC unless it ends before "
                f"(${GRACE_ENV}={self._grace_s:g})",
            )
            return False
        reason = (
            f"RUNNING without a lease since {since:%Y-%m-%d %H:%M:%S} UTC, more than "
            f"{self._grace_s:g} s (${GRACE_ENV}): writer {doc['owner']} taken for dead"
        )
        # unchanged since read: a writer that refreshed it meanwhile keeps it
        fence = {k: {"$eq": doc.get(k)} for k in ("lease_expires", "book_time", "refresh_time")}
        return bool(self._release(doc, AttemptOutcome.LOST, reason, fence, max_attempts))

    def _ours(self, doc: dict[str, Any]) -> bool:
        """Whether a caller that names no experiment recovers ``doc``: only in an experiment
        hyperfleet created."""
        if doc["_id"] in self._foreign:
            return False
        if self._quarantine.is_own_experiment(doc.get("exp_key")):
            return True
        self._foreign.add(doc["_id"])
        return False

    @retrying
    def _give_lease(self, doc: dict[str, Any], expires: dt.datetime) -> None:
        fence = {"_id": doc["_id"], "state": int(TrialState.RUNNING)}
        fence.update({k: {"$eq": doc.get(k)} for k in ("owner", "attempt", "lease_expires")})
        given = self.jobs.update_one(
            fence, {"$set": {"lease_expires": expires}, "$currentDate": {"mtime": True}}
        )
        if given.matched_count == 1:
            self._note_once(
                doc,
                f"RUNNING without a usable lease or start time: given a lease until "
                f"{expires:%Y-%m-%d %H:%M:%S} UTC (${GRACE_ENV}={self._grace_s:g})",
            )

    def _note_once(self, doc: dict[str, Any], text: str) -> None:
        key = (doc["_id"], doc.get("attempt"))
        if key not in self._noted:
            self._noted.add(key)
            logger.warning(
                "tid %.40r of %.60r (owner %.60r): %s",
                doc.get("tid"),
                doc.get("exp_key"),
                doc.get("owner"),
                text,
            )

    @retrying
    def _find(self, query: dict[str, Any]) -> list[dict[str, Any]]:
        return list(self.jobs.find(query))


def _lease_s(doc: dict[str, Any]) -> float:
    value = doc.get("lease_s")
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = ok and math.isfinite(value) and 0 < value <= MAX_LEASE_S
    return float(value) if ok else defaults.LEASE_S


#: a lease longer than this (a week) is no lease any worker asked for
MAX_LEASE_S = 7 * 24 * 3600.0


def _sane(value: Any) -> bool:
    """Not a date, or a date :func:`usable_date` accepts."""
    return not isinstance(value, dt.datetime) or usable_date(value)


def _unreapable(doc: dict[str, Any]) -> str | None:
    """Why the reaper cannot release ``doc`` although the readers take it, or ``None``."""
    expires = doc.get("lease_expires")
    if isinstance(expires, (list, dict)):
        return f"its lease_expires is a {type(expires).__name__}, not a date"
    for field in ("lease_expires", "book_time", "refresh_time"):
        if not _sane(doc.get(field)):
            return f"its {field} {doc[field]!s:.40} is not a date a lease can have"
    if "attempt_history" in doc and not isinstance(doc["attempt_history"], list):
        return "its attempt_history is not a list (a release appends to it)"
    return None


def _latest_date(*values: Any) -> dt.datetime | None:
    dates = [v.replace(tzinfo=None) for v in values if isinstance(v, dt.datetime) and _sane(v)]
    return max(dates) if dates else None


def _short(value: Any) -> str:
    text = "missing or null" if value is None else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
