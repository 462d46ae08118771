"""Unfinished GridFS uploads: the chunks a writer killed in the middle of an upload leaves.

GridFS writes a file's chunks first and its ``fs.files`` document last, so a worker SIGKILLed
while it uploads a checkpoint or a model leaves chunks that no document owns. An upload still
going looks the same, so only time tells them apart, and no writer's clock is trusted for it
(a file id's timestamp is its writer's, and a writer may choose its id): a sweep notes each
file id it finds without a document in ``orphan_uploads`` with the **database's** time it was
first seen (``first_seen``), and a later sweep deletes its chunks once that is older than the
age (``$HYPERFLEET_ORPHAN_CHUNK_AGE_S``, 6 h by default) and the file still has no document.
Any process may sweep (the search's housekeeping, its end, ``hyperfleet reap``): the notes are
in the database, so the clock keeps running between them.

A sweep reads ``fs.chunks`` in pages of file ids (sorted on GridFS's own ``(files_id, n)``
index, chunks' data never read), for at most ``SWEEP_BUDGET_S`` per call, and goes on where the
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
        except pymongo.errors.PyMongoError as e:
            if isinstance(e, pymongo.errors.ConnectionFailure) or getattr(e, "timeout", False):
                raise
            logger.warning(
                "the sweep of unfinished GridFS uploads failed (%s); the next sweep tries again",
                shown(str(e)),
            )
            return 0

    def _note_unowned(self) -> None:
        """Note the file ids that have chunks and no document, page after page, for at most
        ``SWEEP_BUDGET_S``; the next call, of any process, goes on from there (from the start
        once every chunk was read): the place is kept in the notes (``_id: "sweep"``)."""
        started = time.monotonic()
        cursor = self._read_cursor()
        while True:  # one page at least
            ids, cursor = self._chunk_page(cursor)
            if ids:
                self._note(sorted(set(ids) - self._documented(min(ids), max(ids))))
            if cursor is None or time.monotonic() - started >= SWEEP_BUDGET_S:
                break  # (None: every chunk read, the next call starts over)
        self._write_cursor(cursor)

    @retrying
    def _read_cursor(self) -> ObjectId | None:
        place = self.notes.find_one({"_id": CURSOR})
        after = place.get("after") if place is not None else None
        return after if isinstance(after, ObjectId) else None  # junk: from the start

    @retrying
    def _write_cursor(self, after: ObjectId | None) -> None:
        self.notes.update_one({"_id": CURSOR}, {"$set": {"after": after}}, upsert=True)

    @retrying
    def _chunk_page(self, after: ObjectId | None) -> tuple[list[ObjectId], ObjectId | None]:
        """The ObjectId file ids of up to ``PAGE`` chunks after ``after`` (in id order), and
        the last of them (``None`` at the end). Another type of ``files_id`` (junk) is never
        an upload of ours."""
        window: dict[str, Any] = {"$type": "objectId"}
        if after is not None:
            window["$gt"] = after
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
    def _note(self, file_ids: list[ObjectId]) -> None:
        """Note ``file_ids`` as seen without a document, keeping the first sighting's database
        time (idempotent: a retry or another sweeper changes nothing)."""
        if not file_ids:
            return
        first_seen = [{"$set": {"first_seen": {"$ifNull": ["$first_seen", "$$NOW"]}}}]
        self.notes.bulk_write(
            [pymongo.UpdateOne({"_id": i}, first_seen, upsert=True) for i in file_ids],
            ordered=False,
        )

    @retrying
    def _drop_due(self, age_s: float) -> int:
        """Delete the chunks of noted files first seen over ``age_s`` ago (database clock) that
        still have no document; forget the notes of those that got one. How many went."""
        before = self.mongo.server_time() - dt.timedelta(seconds=age_s)
        due = [
            n["_id"]
            for n in self.notes.find(
                {"_id": {"$type": "objectId"}, "first_seen": {"$lt": before}}, limit=DUE_BATCH
            )
            if isinstance(n["_id"], ObjectId)
        ]
        if not due:
            return 0
        documented = {
            d["_id"] for d in self.db["fs.files"].find({"_id": {"$in": due}}, projection={"_id": 1})
        }
        gone = [i for i in due if i not in documented]
        if gone:
            self.db["fs.chunks"].delete_many({"files_id": {"$in": gone}})
        self.notes.delete_many({"_id": {"$in": due}})  # the chunks first: a retry redoes both
        return len(gone)
