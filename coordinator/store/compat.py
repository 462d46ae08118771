"""hyperopt's ``MongoJobs`` protocol on pymongo 4: what ``MongoTrials`` and ``fmin`` call.

hyperopt 0.3.0 still calls pymongo-3 APIs that pymongo 4 removed (``insert``, ``update``,
``remove``, ``find_and_modify``, ``Cursor.count``); these methods replace them while keeping its
document protocol: the ``jobs`` collection, the ``job_ids`` counter (``{a: 0, last_id}``) and
GridFS attachments. Trial ids and inserts live here too, as hyperopt defines them.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import gridfs
import pymongo
import pymongo.errors
from bson import ObjectId
from hyperopt.mongoexp import OperationFailure as HyperoptOperationFailure
from pymongo.collection import Collection
from pymongo.database import Database

from coordinator.store.connection import retrying

logger = logging.getLogger(__name__)


class HyperoptJobs:
    """Mixin for :class:`~coordinator.store.mongo.TrialStore` (a ``MongoJobs`` subclass)."""

    db: Database
    jobs: Collection
    gfs: gridfs.GridFS
    _indexed: bool

    def __len__(self) -> int:
        return self.jobs.count_documents({})

    @retrying
    def create_jobs_indexes(self) -> None:
        """The indexes every hot query needs (once per store object)."""
        if self._indexed:
            return
        self.jobs.create_index([("exp_key", 1), ("state", 1), ("tid", 1)])
        self.jobs.create_index([("state", 1), ("lease_expires", 1)])
        self.jobs.create_index([("exp_key", 1), ("mtime", 1)])
        try:
            self.db.job_ids.create_index("a", unique=True)
        except pymongo.errors.OperationFailure as e:  # e.g. duplicates left by an older version
            logger.warning(
                "db.job_ids has no unique index on 'a' (%s); trial ids may repeat "
                "if two searches start at the same instant",
                e,
            )
        self._indexed = True

    def create_drivers_indexes(self) -> None:
        """hyperopt's unused ``drivers`` collection is not created."""

    @retrying
    def insert(self, job: dict[str, Any]) -> dict[str, Any]:
        """hyperopt's single insert."""
        doc = dict(job)
        try:
            self.jobs.insert_one(doc)
        except pymongo.errors.OperationFailure as e:
            raise HyperoptOperationFailure(e) from e
        return doc

    @retrying
    def insert_trials(self, docs: list[dict[str, Any]]) -> list[ObjectId]:
        """Insert trial documents; a retry after a lost reply is harmless (ids are client-side,
        duplicates of an earlier try are skipped)."""
        for doc in docs:
            doc.setdefault("_id", ObjectId())
        try:
            self.jobs.insert_many(docs, ordered=False)
        except pymongo.errors.BulkWriteError as e:
            if any(err.get("code") != 11000 for err in e.details.get("writeErrors", [])):
                raise
        return [d["_id"] for d in docs]

    @retrying
    def delete(self, job: dict[str, Any]) -> None:
        self.jobs.delete_one({"_id": job["_id"]})

    @retrying
    def delete_all(self, cond: dict[str, Any] | None = None, *, exp_key: str | None = None) -> None:
        """Delete trials (hyperopt's ``cond``, narrowed to ``exp_key``) with their attachments."""
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

    @retrying
    def update(
        self,
        doc: dict[str, Any],
        dct: dict[str, Any],
        collection: Any = None,
        do_sanity_checks: bool = True,
    ) -> dict[str, Any]:
        """Set ``dct`` on ``doc`` if its version did not move (hyperopt's optimistic update)."""
        collection = self.jobs if collection is None else collection
        dct = {k: v for k, v in dct.items() if k not in ("_id", "version")}
        query: dict[str, Any] = {"_id": doc["_id"]}
        if "version" in doc:
            query["version"] = doc["version"]
        dct["version"] = doc.get("version", 0) + 1
        result = collection.update_one(query, {"$set": dct, "$currentDate": {"mtime": True}})
        if do_sanity_checks and result.matched_count != 1:
            raise HyperoptOperationFailure(f"updated doc not found (concurrent change?): {query}")
        doc.update(dct)
        return doc

    @retrying
    def allocate_tids(self, n: int) -> list[int]:
        """``n`` fresh trial ids, unique across the database (hyperopt's ``job_ids`` counter).

        The counter document is created once (a unique index on ``a`` makes concurrent creators
        agree on one document), then incremented atomically. An upserting findAndModify is not
        used: under concurrency SecantusDB can answer it with no document.
        """
        self.create_jobs_indexes()
        for _ in range(50):
            doc = self.db.job_ids.find_one_and_update(
                {"a": 0}, {"$inc": {"last_id": n}}, return_document=pymongo.ReturnDocument.AFTER
            )
            if doc is not None:
                last = doc["last_id"]
                return list(range(last - n, last))
            with contextlib.suppress(pymongo.errors.DuplicateKeyError):  # another one won
                self.db.job_ids.update_one({"a": 0}, {"$setOnInsert": {"last_id": 0}}, upsert=True)
        raise HyperoptOperationFailure("could not allocate trial ids from db.job_ids")
