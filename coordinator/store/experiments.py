"""Experiment documents: one per exp key, every status change conditional.

Status changes are filtered on the status they expect, and every write increments ``version``,
so a coordinator that read the document, decided, and writes back can tell whether anything (a
``cancel``, another coordinator) wrote in between, instead of silently undoing it.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import pymongo.errors
from pymongo.collection import Collection

from coordinator import defaults, rules
from coordinator.states import ExperimentStatus, TrialState
from coordinator.store.connection import retrying
from coordinator.store.handles import MongoHandles, StorePart

logger = logging.getLogger(__name__)

#: fields only the status-changing methods write
_STATUS_FIELDS = frozenset({"_id", "status", "cancel_requested", "cancelled_at", "version"})


def _bump() -> dict[str, Any]:
    return {"$inc": {"version": 1}, "$currentDate": {"updated": True}}


#: MongoDB's TypeMismatch: ``$inc`` on a field that holds no number
_TYPE_MISMATCH = 14


def _update_one(collection: Collection, query: dict[str, Any], update: dict[str, Any]) -> Any:
    """``update_one`` that survives an ill-typed ``version`` (e.g. ``"v"`` written by hand):
    ``$inc`` fails on it, so the document's ``version`` is reset to a number (1) instead,
    conditionally on it still being no number, and the update is applied with that."""
    try:
        return collection.update_one(query, update)
    except pymongo.errors.WriteError as e:
        if e.code != _TYPE_MISMATCH or "version" not in update.get("$inc", {}):
            raise
    inc = {k: v for k, v in update["$inc"].items() if k != "version"}
    reset = {k: v for k, v in update.items() if k != "$inc"}
    reset["$set"] = {**update.get("$set", {}), "version": 1}
    if inc:
        reset["$inc"] = inc
    not_a_number = [{"version": {"$not": {"$type": "number"}}}, {"version": {"$type": "array"}}]
    guarded = {**query, "$or": not_a_number}
    done = collection.update_one(guarded, reset)
    if done.matched_count:
        logger.warning("experiment %r: its version was not a number; reset to 1", query.get("_id"))
        return done
    return collection.update_one(query, update)  # someone else repaired it in between


class Experiments(StorePart):
    """Part of :class:`~coordinator.store.mongo.TrialStore`; see :mod:`coordinator.store.base`."""

    @retrying
    def get_experiment(self, exp_key: str) -> dict[str, Any] | None:
        return self.experiments.find_one({"_id": exp_key})

    @retrying
    def list_experiments(self) -> list[dict[str, Any]]:
        return list(self.experiments.find({}, sort=[("created", 1)]))

    def cancel_requested(self, exp_key: str) -> bool:
        """Whether ``hyperfleet cancel`` asked this experiment to stop (one read)."""
        return rules.cancel_requested(self.get_experiment(exp_key))

    @retrying
    def create_experiment(self, doc: dict[str, Any]) -> bool:
        """Insert ``doc`` (``_id``: the exp key) as version 1; ``False`` if the key exists."""
        try:
            self.experiments.insert_one({**doc, "version": 1})
        except pymongo.errors.DuplicateKeyError:
            return False
        return True

    @retrying
    def replace_experiment(self, doc: dict[str, Any], *, version: int | None) -> bool:
        """Replace the document if its ``version`` is still ``version``; ``False`` otherwise."""
        valid = isinstance(version, int) and not isinstance(version, bool) and version >= 0
        replaced = self.experiments.replace_one(
            {"_id": doc["_id"], "version": version}, {**doc, "version": version + 1 if valid else 1}
        )
        return replaced.matched_count == 1

    @retrying
    def finish_experiment(
        self,
        exp_key: str,
        status: ExperimentStatus,
        fields: dict[str, Any],
        *,
        expect: ExperimentStatus = ExperimentStatus.RUNNING,
    ) -> bool:
        """Record ``fields``; set ``status`` only if it is still ``expect`` (``False``: it was
        not, and the status that was there stands)."""
        _check_fields(fields)
        changed = _update_one(
            self.experiments,
            {"_id": exp_key, "status": expect.value},
            {"$set": {**fields, "status": status.value}, **_bump()},
        )
        if changed.matched_count == 1:
            return True
        if fields:
            _update_one(self.experiments, {"_id": exp_key}, {"$set": fields, **_bump()})
        return False

    def cancel_experiment(self, exp_key: str, settle_s: float = 1.0) -> int:
        """Set ``cancel_requested`` (a RUNNING status becomes CANCELLED; a finished one stays)
        and mark queued trials CANCEL; returns how many were queued.

        The queue is swept twice, ``settle_s`` apart: a coordinator checks the cancel flag only
        every quarter second, so it may still queue a trial just after the first sweep.
        """
        self._request_cancel(exp_key)
        n = self.cancel_queued(exp_key)
        time.sleep(settle_s)
        return n + self.cancel_queued(exp_key)

    @retrying
    def _request_cancel(self, exp_key: str) -> None:
        flag = {"cancel_requested": True}
        stamp = {"updated": True, "cancelled_at": True}
        running = _update_one(
            self.experiments,
            {"_id": exp_key, "status": ExperimentStatus.RUNNING.value},
            {
                "$set": {**flag, "status": ExperimentStatus.CANCELLED.value},
                "$inc": {"version": 1},
                "$currentDate": stamp,
            },
        )
        if running.matched_count == 0:
            _update_one(
                self.experiments,
                {"_id": exp_key},
                {"$set": flag, "$inc": {"version": 1}, "$currentDate": stamp},
            )

    @retrying
    def cancel_queued(self, exp_key: str) -> int:
        """Mark the queued (NEW) trials of ``exp_key`` CANCEL; returns how many. A trial
        promoted from a rung (``--promote``) that had not started yet goes back to what it was,
        DONE with its paused result."""
        waiting = {"exp_key": exp_key, "state": int(TrialState.NEW)}
        restore = {"state": int(TrialState.DONE), "result": "$paused_result", "mtime": "$$NOW"}
        self.jobs.update_many(
            {**waiting, "paused_result": {"$type": "object"}}, [{"$set": restore}]
        )
        cancelled = self.jobs.update_many(
            {"exp_key": exp_key, "state": int(TrialState.NEW)}, cancel_update()
        )
        return cancelled.modified_count

    @retrying
    def renew_coordinator(self, exp_key: str, holder_id: str) -> bool:
        """Renew ``holder_id``'s coordinator lease (server clock; ``version`` + 1, so a starting
        coordinator that read the old lease re-reads); ``False`` once another holds it."""
        renewed = _update_one(
            self.experiments,
            {"_id": exp_key, "coordinator.id": holder_id},
            {"$currentDate": {"coordinator.renewed": True}, "$inc": {"version": 1}},
        )
        return renewed.matched_count == 1

    @retrying
    def release_coordinator(self, exp_key: str, holder_id: str) -> bool:
        """End ``holder_id``'s coordinator lease (``coordinator.renewed`` null)."""
        released = _update_one(
            self.experiments,
            {"_id": exp_key, "coordinator.id": holder_id},
            {"$set": {"coordinator.renewed": None}, "$inc": {"version": 1}},
        )
        return released.matched_count == 1

    @retrying
    def annotate_experiment(self, exp_key: str, fields: dict[str, Any]) -> bool:
        """Set informational ``fields`` (e.g. a test score); never the status or cancel flag."""
        _check_fields(fields)
        done = _update_one(self.experiments, {"_id": exp_key}, {"$set": fields, **_bump()})
        return done.matched_count == 1


def cancel_update(**also: Any) -> dict[str, Any]:
    """A trial that never ran -> CANCEL (queued, or claimed but not started), with ``also``."""
    return {
        "$set": {"state": int(TrialState.CANCEL), "result": {"status": "new"}, **also},
        "$currentDate": {"mtime": True, "refresh_time": True},
        "$inc": {"version": 1},
    }


def _check_fields(fields: dict[str, Any]) -> None:
    bad = sorted(_STATUS_FIELDS.intersection(fields))
    if bad:
        raise ValueError(f"{', '.join(bad)}: written only by the experiment's status changes")


#: seconds an experiment's attempt limit is reused before it is read again
ATTEMPT_LIMIT_TTL_S = 10.0


class AttemptLimits(StorePart):
    """Each experiment's attempt limit, read from its document at most every
    ``ATTEMPT_LIMIT_TTL_S`` (used by the lease writes and the reaper)."""

    def __init__(self, mongo: MongoHandles, experiments: Experiments) -> None:
        super().__init__(mongo)
        self._experiments = experiments
        self._limits: dict[str, tuple[float, dict[str, Any]]] = {}

    def forget(self) -> None:
        """Read every limit again (a dropped database)."""
        self._limits.clear()

    def attempt_limit(self, exp_key: str | None, default: int = defaults.MAX_ATTEMPTS) -> int:
        """The experiment's attempt limit (:func:`rules.max_attempts`), ``default`` where it has
        no document. Read at most every ``ATTEMPT_LIMIT_TTL_S`` per experiment."""
        if exp_key is None:
            return default
        cached = self._limits.get(exp_key)
        if cached is None or time.monotonic() - cached[0] > ATTEMPT_LIMIT_TTL_S:
            exp = self._experiments.get_experiment(exp_key)
            if exp is None:  # not cached: the experiment may be created any moment
                return default
            cached = (time.monotonic(), {"max_attempts": exp.get("max_attempts")})
            self._limits[exp_key] = cached
        return rules.max_attempts(cached[1], default)
