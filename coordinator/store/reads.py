"""Named reads and counts of trials: the only ways callers look at trial documents.

Callers say *what* they want (an experiment's trials, the unfinished ones, some by id, lean
outcomes for a summary); the queries, projections and indexes they need stay here. Readers never
write.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any

from coordinator import rules
from coordinator.states import TrialState
from coordinator.store.connection import retrying
from coordinator.store.handles import StorePart

_UNFINISHED = [int(TrialState.NEW), int(TrialState.RUNNING)]
_OUTCOME_FIELDS = (
    "queued",
    "book_time",
    "ended",
    "duration_s",
    "promotions",
    *rules.TRIAL_FIELDS,
)


def _match(exp_key: str | None, states: Iterable[TrialState | int] | None) -> dict[str, Any]:
    query: dict[str, Any] = {} if exp_key is None else {"exp_key": exp_key}
    if states is not None:
        query["state"] = {"$in": [int(s) for s in states]}
    return query


def _by_tid(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # sorted here rather than in the database: SecantusDB sorts without the index; any tid type
    return sorted(docs, key=lambda d: rules.tid_order(d.get("tid")))


class TrialReads(StorePart):
    """Part of :class:`~coordinator.store.mongo.TrialStore`; see :mod:`coordinator.store.base`."""

    @retrying
    def trials(
        self,
        exp_key: str | None,
        states: Iterable[TrialState | int] | None = None,
        *,
        with_spec: bool = True,
    ) -> list[dict[str, Any]]:
        """Trial documents of ``exp_key`` (all states, or ``states``), in tid order."""
        projection = None if with_spec else {"spec": 0}
        return _by_tid(list(self.jobs.find(_match(exp_key, states), projection=projection)))

    @retrying
    def changed_trials(self, exp_key: str | None, since: dt.datetime) -> list[dict[str, Any]]:
        """The trials of ``exp_key`` (every state) written at or after ``since`` by the server's
        clock (``mtime``): an indexed read on ``(exp_key, mtime)``, O(matches)."""
        query = _match(exp_key, None)
        query["mtime"] = {"$gte": since}
        return list(self.jobs.find(query))

    @retrying
    def trial_outcomes(self, exp_key: str | None) -> list[dict[str, Any]]:
        """Lean trial documents for summaries and timings, in tid order; each with
        ``problem``: why it cannot be used (:func:`rules.trial_problem`), ``None`` if it can
        (``misc`` is read for the check, not returned)."""
        projection = dict.fromkeys(_OUTCOME_FIELDS, 1)
        docs = list(self.jobs.find(_match(exp_key, None), projection=projection))
        for doc in docs:
            doc["problem"] = rules.trial_problem(doc)
            doc.pop("misc", None)
        return _by_tid(docs)

    @retrying
    def get_trial(self, exp_key: str | None, tid: int) -> dict[str, Any] | None:
        """One trial document of ``exp_key`` by ``tid``; ``None`` if there is none."""
        query = _match(exp_key, None)
        query["tid"] = tid
        return self.jobs.find_one(query)

    @retrying
    def count(self, exp_key: str | None, states: Iterable[TrialState | int]) -> int:
        """How many trials of ``exp_key`` are in one of ``states``."""
        return self.jobs.count_documents(_match(exp_key, states))

    def queued_exp_keys(self) -> set[Any]:
        """The exp keys of the NEW trials (``None`` for a trial without one)."""
        return self.trial_exp_keys([TrialState.NEW])

    @retrying
    def trial_exp_keys(self, states: Iterable[TrialState | int] | None = None) -> set[Any]:
        """The exp keys of the trials in ``states`` (all: ``None``); ``None`` for a trial
        without one."""
        query = {} if states is None else {"state": {"$in": [int(s) for s in states]}}
        keys = self.jobs.distinct("exp_key", query)
        # a list (or document) is no dict key: another program's odd exp_key is shown as text
        return {k if isinstance(k, (str, int, float, type(None))) else repr(k) for k in keys}

    @retrying
    def count_by_state(self, exp_key: str | None) -> dict[TrialState, int]:
        """Trials of ``exp_key`` by state; O(n) in the database, so not for hot paths."""
        rows = self.jobs.aggregate(
            [{"$match": _match(exp_key, None)}, {"$group": {"_id": "$state", "n": {"$sum": 1}}}]
        )
        counts = dict.fromkeys(TrialState, 0)
        for row in rows:
            if row["_id"] in TrialState._value2member_map_:
                counts[TrialState(row["_id"])] = row["n"]
        return counts
