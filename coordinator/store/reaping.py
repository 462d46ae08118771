"""Liveness on the database clock: the attempt limit and the reaper of expired leases.

A worker that stops heartbeating (killed, paused, partitioned) is found through data: its
trial's ``lease_expires`` falls behind the server's clock. :meth:`Reaping.reap_expired` hands
such trials back with a release that is fenced *and* re-checks the expiry, so any number of
reapers may run at once and each expired lease is released exactly once.
"""

from __future__ import annotations

import logging
from typing import Any

from coordinator import defaults, rules
from coordinator.states import AttemptOutcome, TrialState
from coordinator.store.base import Lease
from coordinator.store.connection import retrying
from coordinator.store.experiments import AttemptLimits
from coordinator.store.handles import MongoHandles, StorePart
from coordinator.store.leases import LeaseWrites
from coordinator.store.quarantine import Quarantine

logger = logging.getLogger(__name__)


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

    def reap_expired(
        self, exp_key: str | None = None, *, max_attempts: int | None = None
    ) -> list[int]:
        """Release every RUNNING trial whose lease expired; returns the tids released."""
        now = self.mongo.server_time()
        query: dict[str, Any] = {"state": int(TrialState.RUNNING), "lease_expires": {"$lt": now}}
        if exp_key is not None:
            query["exp_key"] = exp_key
        unusable = self._quarantine.unusable_ids()
        if unusable:
            query["_id"] = {"$nin": unusable}
        reaped = []
        for doc in self._expired(query):
            problem = rules.trial_problem(doc)
            if problem is None and not doc.get("owner"):
                problem = "RUNNING without an owner"
            if problem is not None:  # ERROR if ours (fenced), else left alone; logged once
                self._quarantine.quarantine_trial(doc, problem)
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
            limit = self._limits.attempt_limit(lease.exp_key, max_attempts or defaults.MAX_ATTEMPTS)
            state = self._leases.release_fenced(
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
