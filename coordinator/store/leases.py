"""The worker's side of the contract: reserve a trial, keep its lease, finish, fail or release it.

Every write here is one ``update_one`` filtered on the lease's fence (trial, RUNNING, owner,
attempt), so a worker whose lease was reaped changes nothing and learns so from the ``False``
(or ``None``) it gets back. Lease times and ``mtime`` (set by every write, heartbeats included)
come from ``$$NOW``/``$currentDate``: the database's clock.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from pymongo.collection import Collection

from coordinator import defaults, rules
from coordinator.states import AttemptOutcome, TrialState
from coordinator.store.base import Lease
from coordinator.store.connection import retrying
from coordinator.store.encoding import utcnow

#: candidates read per reservation try (claimed in random order, to spread competing workers)
_CANDIDATES = 4


class LeaseWrites:
    """Mixin for :class:`~coordinator.store.mongo.TrialStore`; see :mod:`coordinator.store.base`."""

    jobs: Collection

    if TYPE_CHECKING:

        def attempt_limit(
            self, exp_key: str | None, default: int = defaults.MAX_ATTEMPTS
        ) -> int: ...  # Reaping's

        def quarantine_trial(self, doc: dict[str, Any], problem: str) -> bool: ...

        def unusable_ids(self) -> list[Any]: ...  # Quarantine's

    @retrying
    def reserve_trial(
        self,
        owner: str,
        *,
        exp_key: str | None = None,
        lease_s: float = defaults.LEASE_S,
        trusted: bool = False,
        worker: dict[str, Any] | None = None,
        skip_exp_keys: Iterable[str | None] = (),
    ) -> Lease | None:
        """Claim one NEW trial for ``owner``; ``None`` when none is queued.

        An indexed ``find`` picks candidates and a conditional ``update_one`` claims one (fast on
        both SecantusDB, whose findAndModify scans the collection, and MongoDB). The claim is
        filtered on the ``attempt`` read, so two workers can never both win one attempt.
        A candidate that :func:`rules.trial_problem` refuses is never claimed: it goes to
        :meth:`quarantine_trial` (ERROR if it is hyperfleet's own, left alone otherwise) and is
        not read again by this store. ``skip_exp_keys``: experiments this caller does not serve.
        """
        query: dict[str, Any] = {"state": int(TrialState.NEW)}
        if exp_key is not None:
            query["exp_key"] = exp_key
        skipped = list(skip_exp_keys)
        if skipped and exp_key is None:
            query["exp_key"] = {"$nin": skipped}
        claim = [
            {
                "$set": {
                    "state": int(TrialState.RUNNING),
                    "owner": owner,
                    "attempt": {"$add": [{"$ifNull": ["$attempt", 0]}, 1]},
                    "book_time": "$$NOW",
                    "refresh_time": "$$NOW",
                    "lease_expires": {"$add": ["$$NOW", int(lease_s * 1000)]},
                    "lease_s": lease_s,
                    "worker": {"$literal": worker or {"id": owner}},
                    "version": {"$add": [{"$ifNull": ["$version", 0]}, 1]},
                    "mtime": "$$NOW",
                }
            }
        ]
        for _ in range(8):
            unusable = self.unusable_ids()
            if unusable:
                query["_id"] = {"$nin": unusable}
            candidates = self._reserve_candidates(query, trusted)
            if not candidates:
                return None
            random.shuffle(candidates)
            for cand in candidates:
                problem = rules.trial_problem(cand)
                if problem is not None:
                    self.quarantine_trial(cand, problem)
                    continue
                attempt = cand.get("attempt")
                claimed = self.jobs.update_one(
                    {
                        "_id": cand["_id"],
                        "state": int(TrialState.NEW),
                        "owner": None,
                        "attempt": attempt,  # unchanged since we read it (None: never reserved)
                    },
                    claim,
                )
                if claimed.modified_count == 1:
                    # what the claim wrote, applied locally: no third round trip (the server's
                    # timestamps stay unknown here, and nothing downstream needs them)
                    doc = {
                        **cand,
                        "state": int(TrialState.RUNNING),
                        "owner": owner,
                        "attempt": (attempt or 0) + 1,
                        "lease_s": lease_s,
                        "worker": worker or {"id": owner},
                        "version": cand.get("version", 0) + 1,
                        "book_time": utcnow(),  # approximately; the document has server time
                    }
                    return Lease.from_doc(doc)
        return None

    def _reserve_candidates(self, query: dict[str, Any], trusted: bool) -> list[dict[str, Any]]:
        """Up to 4 NEW trials, oldest first; untrusted workers only get named-space ones.

        ``space`` is checked here rather than with ``$exists`` in the query: SecantusDB then
        scans every trial of the experiment (230 ms at 5,000 trials instead of 2 ms).
        """
        found = list(self.jobs.find(query, sort=[("tid", 1)], limit=_CANDIDATES))
        if trusted:
            return found
        named = [doc for doc in found if "space" in doc]
        if named or len(found) < _CANDIDATES:
            return named
        # the oldest queued trials are all pickled ones: look past them (rare, slow path)
        query = {**query, "space": {"$exists": True}}
        return list(self.jobs.find(query, sort=[("tid", 1)], limit=_CANDIDATES))

    @retrying
    def heartbeat(self, lease: Lease, lease_s: float) -> bool:
        """Renew ``lease`` for ``lease_s`` seconds of server time; ``False`` if it was lost."""
        renewed = self.jobs.update_one(
            lease.fence,
            [
                {
                    "$set": {
                        "refresh_time": "$$NOW",
                        "lease_expires": {"$add": ["$$NOW", int(lease_s * 1000)]},
                        "mtime": "$$NOW",
                    }
                }
            ],
        )
        return renewed.matched_count == 1

    @retrying
    def record_epoch(self, lease: Lease, metrics: dict[str, Any]) -> bool:
        """Append one epoch's metrics to the trial's ``epochs`` list; ``False`` if lease lost."""
        pushed = self.jobs.update_one(
            lease.fence,
            {"$push": {"epochs": metrics}, "$currentDate": {"refresh_time": True, "mtime": True}},
        )
        return pushed.matched_count == 1

    @retrying
    def finish(self, lease: Lease, result: dict[str, Any], fields: dict[str, Any]) -> bool:
        """RUNNING -> DONE with ``result`` (and extra ``fields``); ``False`` if lease lost."""
        done = self.jobs.update_one(
            lease.fence,
            {
                "$set": {
                    "state": int(TrialState.DONE),
                    "result": result,
                    "lease_expires": None,
                    **fields,
                },
                "$currentDate": {"ended": True, "refresh_time": True, "mtime": True},
                "$inc": {"version": 1},
            },
        )
        return done.matched_count == 1

    @retrying
    def fail(self, lease: Lease, error: dict[str, Any], fields: dict[str, Any]) -> bool:
        """RUNNING -> ERROR, recording ``error`` (type, message, traceback); ``False`` if lost."""
        failed = self.jobs.update_one(
            lease.fence,
            {
                "$set": {
                    "state": int(TrialState.ERROR),
                    "result": {"status": "fail", "failure": error.get("message", "")},
                    "error": error,
                    "misc.error": [error.get("type", ""), error.get("message", "")],
                    "lease_expires": None,
                    **fields,
                },
                "$currentDate": {"ended": True, "refresh_time": True, "mtime": True},
                "$inc": {"version": 1},
            },
        )
        return failed.matched_count == 1

    def release(
        self,
        lease: Lease,
        outcome: AttemptOutcome,
        reason: str,
        *,
        max_attempts: int | None = None,
    ) -> TrialState | None:
        """Hand a RUNNING trial back. Returns its new state, or ``None`` if the lease was lost.

        ``LOST`` and ``CRASHED`` count toward the limit (``max_attempts``, by default the
        experiment's :meth:`attempt_limit`); the release that reaches it marks the trial ERROR
        ("worker lost 3 times"). ``REQUEUED`` does not count.
        """
        limit = self.attempt_limit(lease.exp_key) if max_attempts is None else max_attempts
        return self._release(lease, outcome, reason, limit, None)

    @retrying
    def _release(
        self,
        lease: Lease,
        outcome: AttemptOutcome,
        reason: str,
        limit: int,
        extra_filter: dict[str, Any] | None,
    ) -> TrialState | None:
        counted = outcome is not AttemptOutcome.REQUEUED
        attempts = lease.doc.get("attempts", 0) + (1 if counted else 0)
        entry = {
            "attempt": lease.attempt,
            "owner": lease.owner,
            "outcome": outcome.value,
            "reason": reason,
            "started": lease.doc.get("book_time"),
            "at": utcnow(),
        }
        update: dict[str, Any] = {
            "$push": {"attempt_history": entry},
            "$set": {"attempts": attempts, "lease_expires": None},
            "$currentDate": {"refresh_time": True, "mtime": True},
            "$inc": {"version": 1},
        }
        if counted and attempts >= limit:
            verb = "lost" if outcome is AttemptOutcome.LOST else "crashed"
            message = f"worker {verb} {attempts} times (last: {reason})"
            new_state = TrialState.ERROR
            update["$set"].update(
                state=int(new_state),
                result={"status": "fail", "failure": message},
                error={"type": f"Worker{verb.capitalize()}", "message": message},
            )
        else:
            new_state = TrialState.NEW
            update["$set"].update(state=int(new_state), owner=None)
        fence = {**lease.fence, **(extra_filter or {})}
        released = self.jobs.update_one(fence, update)
        return new_state if released.matched_count == 1 else None
