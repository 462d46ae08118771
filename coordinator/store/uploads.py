"""Unfinished GridFS uploads: the chunks a writer killed in the middle of an upload leaves.

GridFS writes a file's chunks first and its ``fs.files`` document last, so a worker SIGKILLed
while it uploads a checkpoint or a model leaves chunks that no document owns. An upload still
going looks the same, so only time tells them apart, and no writer's clock is trusted for it
(a file id's timestamp is its writer's, and a writer may choose its id): a sweep notes each
file id it finds without a document in ``orphan_uploads`` with its chunk count (``chunks``) and
the **database's** time that count last changed (``changed``; ``first_seen`` too), and a later
sweep deletes its chunks once that is older than the age (``$HYPERFLEET_ORPHAN_CHUNK_AGE_S``,
6 h by default), the count is still the same and the file still has no document: an upload
still sending chunks is never deleted, and a copied or hand-made note only starts the clock.
Any process may sweep (the search's housekeeping, its end, ``hyperfleet reap``): the notes are
in the database, so the clock keeps running between them.

A sweep reads ``fs.chunks`` in pages of file ids (sorted on GridFS's own ``(files_id, n)``
index, chunks' data never read), for about ``SWEEP_BUDGET_S`` per call, and goes on where the
last call (of any process) stopped; files' documents are looked up by id range (a long ``$in``
is quadratic on SecantusDB). A failure other than an outage is one warning: the sweep is
housekeeping and never ends a search.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import time
from typing import Any

import bson.errors
import pymongo
import pymongo.errors
from bson import ObjectId

from coordinator import defaults
from coordinator.shown import shown
from coordinator.store.connection import env_seconds, retrying
from coordinator.store.handles import MongoHandles, StorePart

logger = logging.getLogger(__name__)

#: overrides :data:`~coordinator.defaults.ORPHAN_CHUNK_AGE_S` (every process that sweeps reads it)
ORPHAN_AGE_ENV = "HYPERFLEET_ORPHAN_CHUNK_AGE_S"
#: the least it may be set to
MIN_ORPHAN_AGE_S = 600.0
#: chunk documents read per page (their ``files_id`` only)
PAGE = 5000
#: seconds of reading one call of :meth:`UnfinishedUploads.drop_orphan_chunks` may spend
SWEEP_BUDGET_S = 2.0
#: notes whose age is checked per call (each a file id)
DUE_BATCH = 500
#: the note that keeps the sweep's place in ``fs.chunks``
CURSOR = "sweep"
#: every ObjectId, and no other type (a range compares within one type)
LAST_ID = ObjectId("f" * 24)
ALL_IDS = {"$gte": ObjectId("0" * 24), "$lte": LAST_ID}


class UnfinishedUploads(StorePart):
    """Part of :class:`~coordinator.store.mongo.TrialStore`; see :mod:`coordinator.store.base`."""

    def __init__(self, mongo: MongoHandles) -> None:
        super().__init__(mongo)
        self._age_s = env_seconds(
            ORPHAN_AGE_ENV,
            defaults.ORPHAN_CHUNK_AGE_S,
            lambda v: v >= MIN_ORPHAN_AGE_S,
            f"a number of seconds of at least {MIN_ORPHAN_AGE_S:.0f} (an upload still going "
            "must never look abandoned)",
        )

    @property
    def notes(self) -> Any:
        return self.db["orphan_uploads"]

    def drop_orphan_chunks(self, *, min_age_s: float | None = None) -> int:
        age = self._age_s if min_age_s is None else min_age_s
        if isinstance(age, bool) or not isinstance(age, (int, float)) or not math.isfinite(age):
            raise ValueError(f"min_age_s must be a finite number of seconds, got {age!r:.40}")
        try:
            self._note_unowned()
            return self._drop_due(max(0.0, float(age)))
        except (pymongo.errors.PyMongoError, bson.errors.BSONError) as e:
            if isinstance(e, pymongo.errors.ConnectionFailure) or getattr(e, "timeout", False):
                raise
            logger.warning(
                "the sweep of unfinished GridFS uploads failed (%s); the next sweep tries again",
                shown(str(e)),
            )
            return 0

    def _note_unowned(self) -> None:
        """Note the file ids that have chunks and no document, page after page, for about
        ``SWEEP_BUDGET_S`` (no page is started that the last one says would not fit); the next
        call, of any process, goes on from there (from the start once every chunk was read):
        the place is kept in the notes (``_id: "sweep"``)."""
        started = time.monotonic()
        cursor = self._read_cursor()
        while True:  # one page at least
            began = time.monotonic()
            ids, cursor = self._chunk_page(cursor)
            if ids:
                self._note(sorted(set(ids) - self._documented(min(ids), max(ids))))
            now = time.monotonic()
            if cursor is None or now + (now - began) - started > SWEEP_BUDGET_S:
                break  # (None: every chunk read, the next call starts over)
        self._write_cursor(cursor)

    @retrying
    def _read_cursor(self) -> ObjectId | None:
        place = self.notes.find_one({"_id": CURSOR}, projection={"after": 1})
        after = place.get("after") if place is not None else None
        return after if isinstance(after, ObjectId) else None  # junk: from the start

    @retrying
    def _write_cursor(self, after: ObjectId | None) -> None:
        self.notes.update_one({"_id": CURSOR}, {"$set": {"after": after}}, upsert=True)

    @retrying
    def _chunk_page(self, after: ObjectId | None) -> tuple[list[ObjectId], ObjectId | None]:
        """The ObjectId file ids of up to ``PAGE`` chunks after ``after`` (in id order), and
        the last of them (``None`` at the end). A range of ObjectIds matches no other type, so
        a junk ``files_id`` (never an upload of ours) is never read."""
        window = {"$gt": after, "$lte": LAST_ID} if after is not None else ALL_IDS
        page = self.db["fs.chunks"].find(
            {"files_id": window},
            projection={"files_id": 1, "_id": 0},
            sort=[("files_id", 1)],
            limit=PAGE,
        )
        ids = [c["files_id"] for c in page if isinstance(c.get("files_id"), ObjectId)]
        return ids, (ids[-1] if len(ids) == PAGE else None)

    @retrying
    def _documented(self, first: ObjectId, last: ObjectId) -> set[ObjectId]:
        found = self.db["fs.files"].find(
            {"_id": {"$gte": first, "$lte": last}}, projection={"_id": 1}
        )
        return {d["_id"] for d in found if isinstance(d["_id"], ObjectId)}

    @retrying
    def _chunk_counts(self, file_ids: list[ObjectId]) -> dict[ObjectId, int]:
        """How many chunks each of ``file_ids`` has now (0 for none)."""
        counted = self.db["fs.chunks"].aggregate(
            [
                {"$match": {"files_id": {"$in": file_ids}}},
                {"$group": {"_id": "$files_id", "chunks": {"$sum": 1}}},
            ]
        )
        counts = dict.fromkeys(file_ids, 0)
        counts.update({c["_id"]: int(c["chunks"]) for c in counted if c["_id"] in counts})
        return counts

    @retrying
    def _note(self, file_ids: list[ObjectId], counts: dict[ObjectId, int] | None = None) -> None:
        """Note ``file_ids`` as seen without a document with their chunk counts: ``changed``
        becomes the database's time wherever the count differs from the one noted (an upload
        still going), or the note is new or junk (not a date, or in the future). Idempotent:
        a retry or another sweeper that counts the same changes nothing. ``counts``: already
        counted (else counted here)."""
        if not file_ids:
            return
        if counts is None:
            counts = self._chunk_counts(file_ids)
        now = self.mongo.server_time()
        self.notes.bulk_write(
            [
                pymongo.UpdateOne({"_id": i}, _noted_with(counts[i], now), upsert=True)
                for i in file_ids
            ],
            ordered=False,
        )

    @retrying
    def _drop_due(self, age_s: float) -> int:
        """Delete the chunks of noted files whose chunk count has not changed for over
        ``age_s`` (database clock) and that still have no document; note again those that
        changed meanwhile; forget those that got a document or lost their chunks. How many
        went."""
        before = self.mongo.server_time() - dt.timedelta(seconds=age_s)
        query = {"_id": {"$type": "objectId"}, "changed": {"$lt": before}}
        due = {
            n["_id"]: n.get("chunks")
            for n in self.notes.find(query, projection={"chunks": 1}, limit=DUE_BATCH)
            if isinstance(n["_id"], ObjectId)
        }
        if not due:
            return 0
        ids = sorted(due)
        documented = {
            d["_id"] for d in self.db["fs.files"].find({"_id": {"$in": ids}}, projection={"_id": 1})
        }
        counts = self._chunk_counts(ids)
        moved = [i for i in ids if i not in documented and counts[i] and counts[i] != due[i]]
        gone = [i for i in ids if i not in documented and counts[i] and i not in moved]
        if moved:  # still being written: its clock starts again
            self._note(moved, counts)
        if gone:
            self.db["fs.chunks"].delete_many({"files_id": {"$in": gone}})
            late = self.db["fs.files"].find({"_id": {"$in": gone}}, projection={"_id": 1})
            for doc in late:  # its document arrived between the check and the delete
                logger.error(
                    "GridFS file %s got its document while its chunks were deleted as an "
                    "unfinished upload's: it is unreadable now; write it again",
                    doc["_id"],
                )
        forget = [i for i in ids if i not in moved]
        self.notes.delete_many({"_id": {"$in": forget}})  # the chunks first: a retry redoes both
        return len(gone)


def _noted_with(chunks: int, now: dt.datetime) -> list[dict[str, Any]]:
    """The note's update (a pipeline: the database's clock): ``first_seen`` once, ``changed``
    whenever the chunk count is not the one noted, or what is noted is junk (not a date, or
    later than ``now``, the database's time as read just before: SecantusDB 0.7.0b3 compares
    every date as less than ``$$NOW``)."""
    kept = {
        "$and": [
            {"$eq": [{"$type": "$changed"}, "date"]},
            {"$lte": ["$changed", {"$literal": now}]},
            {"$eq": ["$chunks", chunks]},
        ]
    }
    return [
        {
            "$set": {
                "first_seen": {"$ifNull": ["$first_seen", "$$NOW"]},
                "changed": {"$cond": [kept, "$changed", "$$NOW"]},
                "chunks": chunks,
            }
        }
    ]
