"""Checkpoints: a trial's saved state, so that an attempt after a loss resumes, not restarts.

One checkpoint per trial: a GridFS file whose metadata names its trial, and a ``checkpoint``
field on the trial document that links it (``{file_id, epoch, attempt, bytes, sha256, at}``,
readable from the mongo shell). Writing one is fenced like every worker write: the file is put
first, then linked with one update filtered on the lease; a lost lease deletes the new file and
answers ``False``. The checkpoint it replaced is deleted once the new link is written.

Reading one back checks it: a missing or partial file, a size or digest that does not match the
link, or a file written for another trial is refused (:class:`CheckpointRefused`, one line), and
the caller starts the trial fresh — never a crash, never another trial's model.

When an attempt starts from a checkpoint of epoch *k* (or from scratch, *k* = 0), the per-epoch
records of the epochs it will train again are dropped (:meth:`Checkpoints.resume_at`), so the
learning curve continues without duplicates. Ended trials keep no checkpoint
(:meth:`Checkpoints.drop_checkpoints`).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from typing import Any

import gridfs
import gridfs.errors
import pymongo.errors
from bson import ObjectId

from coordinator.errors import CheckpointRefused
from coordinator.states import TrialState
from coordinator.store.base import Checkpoint, DocId, Lease
from coordinator.store.connection import retrying
from coordinator.store.encoding import utcnow
from coordinator.store.handles import StorePart

logger = logging.getLogger(__name__)

#: the largest checkpoint read back (a hostile link must not make a worker read gigabytes)
MAX_CHECKPOINT_BYTES = 2 * 2**30
#: states in which a trial keeps no checkpoint
ENDED = (int(TrialState.DONE), int(TrialState.ERROR), int(TrialState.CANCEL))


class Checkpoints(StorePart):
    """Part of :class:`~coordinator.store.mongo.TrialStore`; see :mod:`coordinator.store.base`."""

    def save_checkpoint(self, lease: Lease, epoch: int, data: bytes) -> bool:
        if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
            raise ValueError(f"a checkpoint's epoch must be a whole number >= 0, got {epoch!r}")
        digest = hashlib.sha256(data).hexdigest()
        file_id = self._put(lease, epoch, data, digest)
        seen: dict[str, Any] = {}
        try:
            old = self._link(lease, epoch, file_id, len(data), digest, seen)
        except BaseException:
            self._delete_file(file_id)  # an outage past the budget: the new file is unlinked
            raise
        if old is None:  # the lease is lost: the new file is nobody's
            self._delete_file(file_id)
            return False
        if old != file_id:
            self._delete_file(old)
        return True

    @retrying
    def _put(self, lease: Lease, epoch: int, data: bytes, digest: str) -> ObjectId:
        return self.gfs.put(
            data,
            filename=f"{lease.id}_checkpoint",
            kind="checkpoint",
            trial=lease.id,
            tid=lease.tid,
            exp_key=lease.exp_key,
            attempt=lease.attempt,
            epoch=epoch,
            sha256=digest,
        )

    @retrying
    def _link(
        self,
        lease: Lease,
        epoch: int,
        file_id: ObjectId,
        size: int,
        digest: str,
        seen: dict[str, Any],
    ) -> Any | None:
        """Link ``file_id`` as the checkpoint; the file it replaced (``file_id`` itself when
        there was none), ``None`` if the lease is lost. ``seen`` keeps the first link read,
        so a retry after a lost reply (which reads its own link) still knows the old file."""
        before = self.jobs.find_one(lease.fence, projection={"checkpoint": 1})
        if before is None:
            return None
        seen.setdefault("old", before.get("checkpoint"))
        link = {
            "file_id": file_id,
            "epoch": epoch,
            "attempt": lease.attempt,
            "bytes": size,
            "sha256": digest,
            "at": utcnow(),
        }
        updated = self.jobs.update_one(
            lease.fence, {"$set": {"checkpoint": link}, "$currentDate": {"mtime": True}}
        )
        if updated.matched_count != 1:
            return None
        old = seen["old"]
        return old.get("file_id", file_id) if isinstance(old, dict) else file_id

    def load_checkpoint(self, lease: Lease) -> Checkpoint | None:
        link = self._read_link(lease)
        if link is None:
            return None
        if not isinstance(link, dict):
            raise CheckpointRefused(f"its link is {type(link).__name__}, not a document")
        file_id, epoch, size = link.get("file_id"), link.get("epoch"), link.get("bytes")
        if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
            raise CheckpointRefused(f"its epoch {epoch!r:.40} is not a whole number >= 0")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise CheckpointRefused(f"its size {size!r:.40} is not a whole number")
        if size > MAX_CHECKPOINT_BYTES:
            raise CheckpointRefused(f"it is {size} bytes, over the {MAX_CHECKPOINT_BYTES} limit")
        if not isinstance(file_id, ObjectId):
            raise CheckpointRefused(f"its file id {file_id!r:.40} is not an ObjectId")
        data, meta = self._read_file(file_id)
        if meta.get("trial") != lease.id:
            raise CheckpointRefused(f"its file was written for trial {meta.get('tid')!r:.40}")
        if len(data) != size or hashlib.sha256(data).hexdigest() != link.get("sha256"):
            raise CheckpointRefused(
                f"its file holds {len(data)} bytes that do not match the {size} bytes and "
                "digest it was saved with (corrupt or partial)"
            )
        attempt = link.get("attempt")
        return Checkpoint(epoch, data, attempt if isinstance(attempt, int) else 0)

    @retrying
    def _read_link(self, lease: Lease) -> Any:
        doc = self.jobs.find_one(lease.fence, projection={"checkpoint": 1})
        return None if doc is None else doc.get("checkpoint")

    @retrying
    def _read_file(self, file_id: ObjectId) -> tuple[bytes, dict[str, Any]]:
        try:
            out = self.gfs.get(file_id)
            meta = {"trial": getattr(out, "trial", None), "tid": out.tid}
            length = out.length
            if not isinstance(length, int) or length > MAX_CHECKPOINT_BYTES:
                raise CheckpointRefused(f"its file's length {length!s:.40} is not one to read")
            return out.read(), meta
        except CheckpointRefused:
            raise
        except AttributeError as e:  # no ``tid`` in the file's metadata: not a checkpoint
            raise CheckpointRefused(f"file {file_id!s:.40} is not a checkpoint") from e
        except pymongo.errors.PyMongoError as e:
            if isinstance(e, pymongo.errors.ConnectionFailure) or getattr(e, "timeout", False):
                raise  # an outage: retried
            raise CheckpointRefused(f"its file {file_id!s:.40} cannot be read ({e})") from e
        except Exception as e:  # noqa: BLE001 - damaged file documents: chunkSize 0, data 5, ...
            raise CheckpointRefused(
                f"its file {file_id!s:.40} cannot be read ({type(e).__name__}: {e!s:.80})"
            ) from e

    @retrying
    def resume_at(self, lease: Lease, epoch: int) -> bool:
        updated = self.jobs.update_one(
            lease.fence,
            {
                "$push": {"epochs": {"$each": [], "$slice": epoch}},
                "$set": {"resumed_from_epoch": epoch, "resumed_in_attempt": lease.attempt},
                "$currentDate": {"mtime": True},
            },
        )
        return updated.matched_count == 1

    def drop_checkpoints(
        self, *, trial_ids: Iterable[DocId] = (), exp_key: str | None = None
    ) -> int:
        files = self._unlink_ended(list(trial_ids), exp_key)
        for file_id in files:
            self._delete_file(file_id)
        return len(files)

    @retrying
    def _unlink_ended(self, trial_ids: list[DocId], exp_key: str | None) -> list[Any]:
        query: dict[str, Any] = {"state": {"$in": list(ENDED)}, "checkpoint": {"$ne": None}}
        if trial_ids:  # a worker's ended trials: one paused at a rung keeps it for promotion
            query["_id"] = {"$in": trial_ids}
            query["result.pruned.paused"] = {"$ne": True}
        elif exp_key is not None:
            query["exp_key"] = exp_key
        else:
            return []
        files = []
        for doc in self.jobs.find(query, projection={"checkpoint": 1}):
            link = doc.get("checkpoint")
            unlinked = self.jobs.update_one(
                {"_id": doc["_id"], "state": {"$in": list(ENDED)}, "checkpoint": link},
                {"$set": {"checkpoint": None}, "$currentDate": {"mtime": True}},
            )
            if unlinked.matched_count == 1 and isinstance(link, dict) and "file_id" in link:
                files.append(link["file_id"])
        return files

    @retrying
    def _delete_file(self, file_id: Any) -> None:
        try:
            self.gfs.delete(file_id)
        except gridfs.errors.NoFile:
            logger.debug("checkpoint file %s already deleted", file_id)
