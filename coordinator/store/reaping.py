"""Liveness on the database clock: the attempt limit and the reaper of expired leases.

A worker that stops heartbeating (killed, paused, partitioned) is found through data: its
trial's ``lease_expires`` falls behind the server's clock. :meth:`Reaping.reap_expired` hands
such trials back with a release that is fenced *and* re-checks the expiry, so any number of
reapers may run at once and each expired lease is released exactly once.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pymongo
from pymongo.collection import Collection

from coordinator import defaults, rules
from coordinator.states import AttemptOutcome, TrialState
from coordinator.store.base import Lease
from coordinator.store.connection import retrying
from coordinator.store.encoding import utcnow

logger = logging.getLogger(__name__)

#: seconds an experiment's attempt limit is reused before it is read again
ATTEMPT_LIMIT_TTL_S = 10.0


class Reaping:
    """Mixin for :class:`~coordinator.store.mongo.TrialStore`; see :mod:`coordinator.store.base`."""

    client: pymongo.MongoClient
    jobs: Collection
    _limits: dict[str, tuple[float, dict[str, Any]]]

    if TYPE_CHECKING:

        def get_experiment(self, exp_key: str) -> dict[str, Any] | None: ...

        # Leases._release(lease, outcome, reason, limit, extra_filter)
        _release: Callable[
            [Lease, AttemptOutcome, str, int, dict[str, Any] | None], TrialState | None
        ]

        def quarantine_trial(self, doc: dict[str, Any], problem: str) -> bool: ...

        def unusable_ids(self) -> list[Any]: ...

    @retrying
    def server_time(self) -> dt.datetime:
        """The database server's clock (naive UTC), as used for leases."""
        reply = self.client.admin.command("hello")
        now = reply.get("localTime")
        return now.replace(tzinfo=None) if now is not None else utcnow()

    def attempt_limit(self, exp_key: str | None, default: int = defaults.MAX_ATTEMPTS) -> int:
        """The experiment's attempt limit (:func:`rules.max_attempts`), ``default`` where it has
        no document. Read at most every ``ATTEMPT_LIMIT_TTL_S`` per experiment."""
        if exp_key is None:
            return default
        cached = self._limits.get(exp_key)
        if cached is None or time.monotonic() - cached[0] > ATTEMPT_LIMIT_TTL_S:
            exp = self.get_experiment(exp_key)
            if exp is None:  # not cached: the experiment may be created any moment
                return default
            cached = (time.monotonic(), {"max_attempts": exp.get("max_attempts")})
            self._limits[exp_key] = cached
        return rules.max_attempts(cached[1], default)

    def reap_expired(
        self, exp_key: str | None = None, *, max_attempts: int | None = None
    ) -> list[int]:
        """Release every RUNNING trial whose lease expired; returns the tids released."""
        now = self.server_time()
        query: dict[str, Any] = {"state": int(TrialState.RUNNING), "lease_expires": {"$lt": now}}
        if exp_key is not None:
            query["exp_key"] = exp_key
        unusable = self.unusable_ids()
        if unusable:
            query["_id"] = {"$nin": unusable}
        reaped = []
        for doc in self._expired(query):
            problem = rules.trial_problem(doc)
            if problem is None and not doc.get("owner"):
                problem = "RUNNING without an owner"
            if problem is not None:  # ERROR if ours (fenced), else left alone; logged once
                self.quarantine_trial(doc, problem)
                continue
            lease = Lease.from_doc(doc)
            reason = (
                f"lease expired at {doc['lease_expires']:%H:%M:%S} UTC: worker {lease.owner} "
                "stopped heartbeating"
            )
            outcome = AttemptOutcome.LOST
            if doc.get("held") is True:  # claimed behind another trial: most likely never ran
                outcome = AttemptOutcome.REQUEUED
                reason += " (the trial was held behind another one: not counted)"
            limit = self.attempt_limit(lease.exp_key, max_attempts or defaults.MAX_ATTEMPTS)
            state = self._release(
                lease,
                outcome,
                reason,
                limit,
                {"lease_expires": {"$lt": now}},
            )
            if state is not None:
                logger.warning(
                    "trial %s of %s: %s; now %s", lease.tid, lease.exp_key, reason, state.name
                )
                reaped.append(lease.tid)
        return reaped

    @retrying
    def _expired(self, query: dict[str, Any]) -> list[dict[str, Any]]:
        return list(self.jobs.find(query))
