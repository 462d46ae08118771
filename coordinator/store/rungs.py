"""Rung records: the early-stopping decisions, one document per experiment, bracket, rung and
trial (collection ``rungs``), and the reads the rules need (:class:`coordinator.pruning.RungLog`).

A record's ``_id`` is its key (``"<exp_key>|<bracket>|<rung>|<tid>"``), so recording is one
atomic insert: of two writers of one key (a retried write, or a second attempt of the trial
after its worker was lost), the first one's decision stands and the second reads it back.
Every record holds what its decision was computed from (value, competitors ``seen``,
threshold), so a decision can be checked again from the stored data alone.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from typing import Any

import pymongo.errors
from pymongo.collection import Collection as MongoCollection

from coordinator import rules
from coordinator.states import AttemptOutcome, TrialState
from coordinator.store.connection import retrying
from coordinator.store.encoding import to_bson, utcnow
from coordinator.store.handles import StorePart


class RungRecords(StorePart):
    """Part of :class:`~coordinator.store.mongo.TrialStore`; see :mod:`coordinator.store.base`."""

    _rungs_indexed = False

    @property
    def rungs(self) -> MongoCollection:
        """The ``rungs`` collection, indexed for the read every decision makes (one rung)."""
        rungs = self.db["rungs"]
        if not self._rungs_indexed:
            rungs.create_index([("exp_key", 1), ("bracket", 1), ("rung", 1)])
            self._rungs_indexed = True
        return rungs

    @retrying
    def record_rung(self, record: dict[str, Any]) -> dict[str, Any]:
        """Insert ``record`` (``_id``: its key) and return it; if its key exists already,
        return the stored record instead (its decision stands)."""
        doc = {**to_bson(record), "at": utcnow()}
        try:
            self.rungs.insert_one(doc)
            return doc
        except pymongo.errors.DuplicateKeyError:
            stored = self.rungs.find_one({"_id": doc["_id"]})
            return stored if stored is not None else doc

    @retrying
    def rung_values(self, exp_key: str, bracket: int, rung: int) -> dict[int, float]:
        """``{tid: value}`` of the records at one rung of one bracket (a record without a value,
        e.g. a NaN, is left out: it competes with nobody)."""
        query = {"exp_key": exp_key, "bracket": bracket, "rung": rung, "value": {"$ne": None}}
        values = {}
        for r in self.rungs.find(query, projection={"tid": 1, "value": 1}):
            tid, value = r.get("tid"), r.get("value")
            # another writer's junk (a string value, no tid) competes with nobody
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if rules.is_int(tid) and number and not math.isnan(value):
                values[tid] = float(value)
        return values

    @retrying
    def settle_pause(self, key: str, reason: str) -> None:
        self.rungs.update_one(
            {"_id": key, "decision": "pause"}, {"$set": {"decision": "prune", "why": reason}}
        )

    @retrying
    def promote_paused(self, trial_id: Any, key: str, reason: str) -> bool:
        # the record first: a trial resumed before it would find "pause" and pause again. A
        # trial is only promoted from a record that paused it (a hand-made "paused" result on
        # a finished trial promotes nothing), and only while its checkpoint is linked (else it
        # would be trained again from epoch 0). A promotion cut short between the two writes
        # leaves the trial paused under a "promoted" record; the next step that ranks it in
        # the rung's best 1/η promotes it, the search's end stops it.
        record = self.rungs.update_one(
            {"_id": key, "decision": {"$in": ["pause", "promoted"]}},
            {"$set": {"decision": "promoted"}, "$currentDate": {"promoted_at": True}},
        )
        if record.matched_count != 1:
            return False
        paused = {
            "_id": trial_id,
            "state": int(TrialState.DONE),
            "result.pruned.paused": True,
            "checkpoint": {"$type": "object"},
        }
        projection = {"attempt": 1, "owner": 1, "result": 1, "duration_s": 1}
        doc = self.jobs.find_one(paused, projection=projection)
        if doc is None:
            return False
        pruned = doc["result"]["pruned"]
        entry = {
            "attempt": doc.get("attempt"),
            "owner": doc.get("owner"),
            "outcome": AttemptOutcome.PAUSED.value,
            "reason": reason,
            "paused_at_epoch": pruned.get("epoch"),
            "rung": pruned.get("rung"),
            "value": pruned.get("value"),
            "checkpoint_epoch": pruned.get("epoch"),
            "duration_s": rules.seconds(doc.get("duration_s")),  # the paused segment's
            "at": utcnow(),
        }
        promoted = self.jobs.update_one(
            {**paused, "attempt": {"$eq": doc.get("attempt")}},
            {
                "$set": {
                    "state": int(TrialState.NEW),
                    "owner": None,
                    "lease_expires": None,
                    "result": {"status": "new"},
                    "paused_result": doc["result"],  # what a cancel before it runs restores
                },
                "$push": {"attempt_history": entry},
                "$inc": {"version": 1, "promotions": 1},
                "$currentDate": {"refresh_time": True, "mtime": True},
            },
        )
        return promoted.matched_count == 1

    @retrying
    def finished_curves(
        self, exp_key: str, metric: str, *, known: Collection[int] = ()
    ) -> dict[int, dict[int, float] | None]:
        """The finished trials of ``exp_key`` whose tid is not in ``known``: ``{tid: {epoch:
        value}}`` for those a rule compares against (DONE, ``result.status`` ok, not pruned),
        ``{tid: None}`` for the others. Finished trials never change: callers cache them."""
        finished = [int(s) for s in (TrialState.DONE, TrialState.ERROR, TrialState.CANCEL)]
        query: dict[str, Any] = {"exp_key": exp_key, "state": {"$in": finished}}
        if known:
            query["tid"] = {"$nin": list(known)}
        projection = {"tid": 1, "state": 1, "result.status": 1, "result.pruned": 1, "epochs": 1}
        curves: dict[int, dict[int, float] | None] = {}
        for doc in self.jobs.find(query, projection=projection):
            result = doc.get("result") or {}
            ok = doc.get("state") == TrialState.DONE and result.get("status") == "ok"
            if not ok or result.get("pruned"):
                curves[doc["tid"]] = None
                continue
            curve: dict[int, float] = {}
            for i, epoch in enumerate(doc.get("epochs") or [], start=1):
                value = epoch.get(metric)
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    curve[int(epoch.get("epoch", i))] = float(value)
            curves[doc["tid"]] = curve
        return curves
