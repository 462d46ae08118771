"""Documents nobody can use: quarantined when they are hyperfleet's own, left alone otherwise.

A job document that breaks :func:`coordinator.rules.trial_problem` (no ``tid``, no ``misc``, a
state ``"2"``, a result that is a list, ...) must never crash or stall a process. Where one is
met on a write path (a worker's reservation, a reaper), :meth:`Quarantine.quarantine_trial`
decides: a document of an experiment that hyperfleet created (its exp key has an experiment
document) is marked ERROR with the reason, with one write filtered on the state, owner and
attempt it was read with (the usual fence); anything else, e.g. another team's jobs in the same
database, is left exactly as it is. Either way it is logged once per process, and the caller
remembers its ``_id`` so that the next poll does not meet it again.
"""

from __future__ import annotations

import logging
from typing import Any

from coordinator.rules import MALFORMED
from coordinator.states import TrialState
from coordinator.store.connection import retrying
from coordinator.store.experiments import Experiments
from coordinator.store.handles import MongoHandles, StorePart

logger = logging.getLogger(__name__)


class Quarantine(StorePart):
    """Part of :class:`~coordinator.store.mongo.TrialStore`; see :mod:`coordinator.store.base`."""

    def __init__(self, mongo: MongoHandles, experiments: Experiments) -> None:
        super().__init__(mongo)
        self._experiments = experiments
        self._unusable: set[Any] = set()  #: ``_id``s of documents nobody can use

    def unusable_ids(self) -> list[Any]:
        """``_id``s of the documents this process met and could not use (not to be read
        again on hot paths such as reservation)."""
        return list(self._unusable)

    def is_own_experiment(self, exp_key: Any) -> bool:
        """Whether ``exp_key`` names an experiment that hyperfleet created (one with an
        experiment document); documents of any other key are foreign."""
        return isinstance(exp_key, str) and self._experiments.get_experiment(exp_key) is not None

    def quarantine_trial(self, doc: dict[str, Any], problem: str) -> bool:
        """Deal with ``doc``, which :func:`~coordinator.rules.trial_problem` refused for
        ``problem``: mark it ERROR if it is one of hyperfleet's own (fenced on the ``state``,
        ``owner`` and ``attempt`` it was read with; ``True`` when this call wrote), leave it
        alone otherwise (``False``). Logged once per document and process."""
        first = doc.get("_id") not in self._unusable
        own = self.is_own_experiment(doc.get("exp_key"))
        written = own and self._mark_malformed(doc, problem)
        # only now: if the write failed (an outage), the caller's retry must meet it again
        self._unusable.add(doc.get("_id"))
        if first:
            logger.warning(
                "job document %s (exp key %.60r, tid %.40r) cannot be used: %s; %s",
                doc.get("_id"),
                doc.get("exp_key"),
                doc.get("tid"),
                problem,
                "marked ERROR"
                if written
                else ("left as it is (changed meanwhile)" if own else "left alone (not ours)"),
            )
        return written

    @retrying
    def _mark_malformed(self, doc: dict[str, Any], problem: str) -> bool:
        message = f"unusable trial document: {problem}"
        version = doc.get("version")
        # ``$eq``: a stored value such as ``{"$ne": 0}`` is matched as a value, not run
        fence = {"_id": doc["_id"]}
        fence.update({k: {"$eq": doc.get(k)} for k in ("state", "owner", "attempt")})
        marked = self.jobs.update_one(
            fence,
            {
                "$set": {
                    "state": int(TrialState.ERROR),
                    "result": {"status": "fail", "failure": message},
                    "error": {"type": MALFORMED, "message": message},
                    "lease_expires": None,
                    "version": version + 1 if isinstance(version, int) else 1,
                },
                "$currentDate": {"ended": True, "refresh_time": True, "mtime": True},
            },
        )
        return marked.matched_count == 1
