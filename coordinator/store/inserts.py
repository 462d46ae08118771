"""New trials: ids from the ``job_ids`` counter, batched inserts, deletion, the hot indexes.

The document protocol is hyperopt's (the ``jobs`` collection, the ``job_ids`` counter
``{a: 0, last_id}``, GridFS attachments), so stock tools keep reading it; hyperopt's own
``MongoJobs`` surface is an adapter over the store (:mod:`coordinator.hyperopt_jobs`), not part
of it. Like every write to ``jobs``, inserts stamp ``mtime`` with the server's clock (see
:mod:`~coordinator.store.base`).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import gridfs
import pymongo
import pymongo.errors
from bson import ObjectId

from coordinator.errors import TrialWriteRefused
from coordinator.store.connection import retrying
from coordinator.store.handles import MongoHandles, StorePart

logger = logging.getLogger(__name__)

_DUPLICATE_KEY = 11000  #: MongoDB's error code for a duplicate key


class TrialInserts(StorePart):
    """Part of :class:`~coordinator.store.mongo.TrialStore`; see :mod:`coordinator.store.base`."""

    def __init__(self, mongo: MongoHandles) -> None:
        super().__init__(mongo)
        self._indexed = False  #: whether this store object created the indexes

    def forget_indexes(self) -> None:
        """Create the indexes again at the next :meth:`create_jobs_indexes` (a dropped database)."""
        self._indexed = False

    @retrying
    def create_jobs_indexes(self) -> None:
        """The indexes every hot query needs (once per store object)."""
        if self._indexed:
            return
        self.jobs.create_index([("exp_key", 1), ("state", 1), ("tid", 1)])
        self.jobs.create_index([("state", 1), ("lease_expires", 1)])
        self.jobs.create_index([("exp_key", 1), ("mtime", 1)])
        # one trial by tid (dashboard trial page, `show`): 0.7 s -> 1 ms at 10,000 trials
        self.jobs.create_index([("exp_key", 1), ("tid", 1)])
        try:
            self.db.job_ids.create_index("a", unique=True)
        except pymongo.errors.OperationFailure as e:  # e.g. duplicates left by an older version
            logger.warning(
                "db.job_ids has no unique index on 'a' (%s); trial ids may repeat "
                "if two searches start at the same instant",
                e,
            )
        self._indexed = True

    @retrying
    def insert_trials(self, docs: list[dict[str, Any]]) -> list[ObjectId]:
        """Insert trial documents in one round trip, each stamped ``mtime`` with the server's
        clock (:meth:`~coordinator.store.handles.MongoHandles.server_clock`).

        Plain inserts: an upsert per document cost the embedded server ~4x the CPU (a query
        plan each; ``bench/server_op_costs.py``). A retry after a lost reply meets its own
        documents as duplicate ``_id``s (``_id`` is client-side) and accepts them when they are
        the same trials (``exp_key`` and ``tid``); an ``_id`` already used by another trial
        (e.g. a document copied from another experiment with its ``_id``) raises
        :class:`~coordinator.errors.TrialWriteRefused`.
        """
        if not docs:
            return []
        mtime = self.mongo.server_clock()
        stamped = [
            {**doc, "_id": doc.setdefault("_id", ObjectId()), "mtime": mtime} for doc in docs
        ]
        try:
            self.jobs.insert_many(stamped, ordered=False)
        except pymongo.errors.BulkWriteError as e:
            if e.timeout:  # a write-concern timeout: an outage, retried
                raise
            self._accept_own_duplicates(stamped, e)
        return [d["_id"] for d in docs]

    def _accept_own_duplicates(
        self, docs: list[dict[str, Any]], error: pymongo.errors.BulkWriteError
    ) -> None:
        """Refuse ``error`` unless every write error is a duplicate ``_id`` whose stored
        document is the same trial (a retried insert meeting what it inserted before)."""
        errors = error.details.get("writeErrors", [])
        if not errors or any(err.get("code") != _DUPLICATE_KEY for err in errors):
            raise TrialWriteRefused(f"trial insert refused: {error.details}") from error
        wanted = {docs[err["index"]]["_id"]: docs[err["index"]] for err in errors}
        stored = {
            d["_id"]: d
            for d in self.jobs.find({"_id": {"$in": list(wanted)}}, {"exp_key": 1, "tid": 1})
        }
        for _id, doc in wanted.items():
            have = stored.get(_id, {})
            if (have.get("exp_key"), have.get("tid")) != (doc.get("exp_key"), doc.get("tid")):
                raise TrialWriteRefused(
                    f"trial insert refused: _id {_id} is another trial's "
                    f"(exp key {have.get('exp_key')!r:.60}, tid {have.get('tid')!r:.20})"
                ) from error

    @retrying
    def delete_all(self, cond: dict[str, Any] | None = None, *, exp_key: str | None = None) -> None:
        """Delete trials (hyperopt's ``cond``, narrowed to ``exp_key``) with their attachments,
        and the experiment's own GridFS files (``MongoTrials.attachments``, e.g. hyperopt's
        ``FMinIter_Domain``) that match the same condition, as stock ``MongoTrials.delete_all``
        does (every version, not only the last)."""
        query = dict(cond or {})
        if exp_key is not None:
            query["exp_key"] = exp_key
        for doc in self.jobs.find(query, projection=["_id", "_attachments"]):
            for _name, file_id in doc.get("_attachments", []):
                try:
                    self.gfs.delete(file_id)
                except gridfs.errors.NoFile:
                    logger.warning("attachment %s of job %s was already gone", file_id, doc["_id"])
            self.jobs.delete_one({"_id": doc["_id"]})
        for fdoc in self.db["fs.files"].find(query, projection=["_id"]):
            self.gfs.delete(fdoc["_id"])

    @retrying
    def allocate_tids(self, n: int, *, above: int | None = None) -> list[int]:
        """``n`` fresh trial ids, unique across the database (hyperopt's ``job_ids`` counter),
        all greater than ``above`` when given (e.g. the largest tid of warm-start documents
        inserted with ids of their own).

        The counter document is created once (a unique index on ``a`` makes concurrent creators
        agree on one document), then incremented atomically. An upserting findAndModify is not
        used: under concurrency SecantusDB can answer it with no document.
        """
        self.create_jobs_indexes()
        if above is None:
            bump: Any = {"$inc": {"last_id": n}}
        else:
            start = {"$max": [{"$ifNull": ["$last_id", 0]}, above + 1]}
            bump = [{"$set": {"last_id": {"$add": [start, n]}}}]
        for _ in range(50):
            try:
                doc = self.db.job_ids.find_one_and_update(
                    {"a": 0}, bump, return_document=pymongo.ReturnDocument.AFTER
                )
            except pymongo.errors.OperationFailure as e:  # e.g. $inc on a string
                raise _bad_counter(self.db.job_ids.find_one({"a": 0})) from e
            if doc is not None:
                last = doc.get("last_id")
                if not isinstance(last, int) or isinstance(last, bool) or not n <= last < 2**62:
                    raise _bad_counter(doc)
                return list(range(last - n, last))
            with contextlib.suppress(pymongo.errors.DuplicateKeyError):  # another one won
                self.db.job_ids.update_one({"a": 0}, {"$setOnInsert": {"last_id": 0}}, upsert=True)
        raise TrialWriteRefused("could not allocate trial ids from db.job_ids")


def _bad_counter(doc: dict[str, Any] | None) -> TrialWriteRefused:
    value = None if doc is None else doc.get("last_id")
    return TrialWriteRefused(
        f"the trial id counter (db.job_ids, a: 0) holds last_id {value!r:.40}, not a whole "
        "number of ids issued: another program wrote it; set it to the largest tid in db.jobs "
        "(or delete the document when db.jobs is empty) and rerun"
    )
