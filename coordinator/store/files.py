"""Attachments in GridFS (hyperopt's ``_attachments``) and keeping only the best trial's model.

A trial's attachments are ``[name, file_id]`` pairs on its document. Writing one is fenced on
the lease like any other worker write; dropping superseded models is the one write to finished
trials, conditional on the attachment list it read.
"""

from __future__ import annotations

import logging
from typing import Any

import gridfs
from bson import ObjectId

from coordinator import rules
from coordinator.states import TrialState
from coordinator.store.base import Lease
from coordinator.store.connection import retrying
from coordinator.store.handles import StorePart

logger = logging.getLogger(__name__)


def _names(doc: dict[str, Any]) -> set[str]:
    return {a[0] for a in doc.get("_attachments", [])}


class Attachments(StorePart):
    """Part of :class:`~coordinator.store.mongo.TrialStore`; see :mod:`coordinator.store.base`."""

    def attach(self, lease: Lease, name: str, data: bytes) -> bool:
        """Store ``data`` in GridFS as the trial's attachment ``name``, replacing an older one;
        ``False`` (and the new file deleted) if the lease was lost.

        The files it replaced are deleted after the fenced link is written (each deletion
        retried on its own): a retry of the link after an outage must not lose track of them.
        """
        seen: dict[str, list[ObjectId]] = {"old": [], "unlinked": [], "put": []}
        ok = self._link_attachment(lease, name, data, seen)
        # lost lease: only files known unlinked go (one whose link may have been written stays)
        replaced = {*seen["old"], *seen["put"]} - set(seen["put"][-1:])
        stale = replaced if ok else set(seen["unlinked"])
        for file_id in stale:
            self.delete_file(file_id)
        return ok

    @retrying
    def _link_attachment(
        self, lease: Lease, name: str, data: bytes, seen: dict[str, list[ObjectId]]
    ) -> bool:
        doc = self.jobs.find_one(lease.fence, projection={"_attachments": 1})
        if doc is None:
            return False
        file_id = self.gfs.put(data, filename=f"{lease.id}_{name}", tid=lease.tid, name=name)
        seen["put"].append(file_id)
        seen["old"] += [a[1] for a in doc.get("_attachments", []) if a[0] == name]
        new = [a for a in doc.get("_attachments", []) if a[0] != name] + [[name, file_id]]
        updated = self.jobs.update_one(
            lease.fence, {"$set": {"_attachments": new}, "$currentDate": {"mtime": True}}
        )
        if updated.matched_count != 1:
            seen["unlinked"].append(file_id)
        return updated.matched_count == 1

    @retrying
    def get_file(self, file_id: ObjectId) -> bytes:
        return self.gfs.get(file_id).read()

    @retrying
    def delete_file(self, file_id: ObjectId) -> None:
        try:
            self.gfs.delete(file_id)
        except gridfs.errors.NoFile:
            logger.debug("file %s already deleted", file_id)

    def get_attachment(self, doc: dict[str, Any], name: str) -> bytes | None:
        """The bytes of attachment ``name`` of trial ``doc`` (None if it has none)."""
        for att_name, file_id in doc.get("_attachments", []):
            if att_name == name:
                return self.get_file(file_id)
        return None

    @retrying
    def best_trial(
        self, exp_key: str | None, *, with_attachment: str | None = None
    ) -> dict[str, Any] | None:
        """The best successful trial of ``exp_key`` (:func:`rules.best_trial`), optionally only
        among trials that hold attachment ``with_attachment``; None if there is none.

        Only the fields the rules need are read for every candidate; the winner is read whole.
        A document :func:`rules.trial_problem` refuses (of another space than the experiment's
        included, as the coordinator's view refuses it) is never the best: ``best``, ``status``
        and ``search`` name the same trial.
        """
        query = {"exp_key": exp_key, "state": int(TrialState.DONE), "result.status": "ok"}
        exp = self.experiments.find_one({"_id": exp_key}, projection={"space": 1})
        space = exp.get("space") if exp is not None else None
        space = space if isinstance(space, str) else None
        # what rules.trial_problem reads (a malformed document is never the best) and
        # rules.best_trial (result.pruned among them: a pruned trial never is either)
        fields = dict.fromkeys((*rules.TRIAL_FIELDS, "_attachments"), 1)
        found = self.jobs.find(query, projection=fields)
        rows = (r for r in found if not rules.trial_problem(r, space=space))
        if with_attachment is not None:
            rows = (row for row in rows if with_attachment in _names(row))
        best = rules.best_trial(rows)
        return None if best is None else self.jobs.find_one({"_id": best["_id"]})

    def drop_superseded_models(
        self, exp_key: str | None, name: str, worse_than: float, *, keep_tid: int
    ) -> int:
        """Delete attachment ``name`` (and its GridFS file) from the DONE trials of ``exp_key``
        that are not successful with a loss at or below ``worse_than`` (:func:`rules.ok_loss`),
        except ``keep_tid``; returns how many went.

        The one write to finished trials: it removes a superseded model, never a result. Each
        update is conditional on the attachment list it read, so concurrent calls are safe.
        The files go after the links (each deletion retried on its own), so a retry of the
        unlinking after an outage does not lose track of the files already unlinked."""
        unlinked: dict[Any, list[ObjectId]] = {}
        self._unlink_superseded(exp_key, name, worse_than, keep_tid, unlinked)
        for files in unlinked.values():
            for file_id in files:
                self.delete_file(file_id)
        return len(unlinked)

    @retrying
    def _unlink_superseded(
        self,
        exp_key: str | None,
        name: str,
        worse_than: float,
        keep_tid: int,
        unlinked: dict[Any, list[ObjectId]],
    ) -> None:
        query = {
            "exp_key": exp_key,
            "state": int(TrialState.DONE),
            "tid": {"$ne": keep_tid},
            "_attachments": {"$exists": True},
        }
        for row in self.jobs.find(query, projection={"state": 1, "result": 1, "_attachments": 1}):
            loss = rules.ok_loss(row)
            if loss is not None and loss <= worse_than:
                continue
            old = row.get("_attachments", [])
            gone = [a for a in old if a[0] == name]
            if not gone:
                continue
            kept = [a for a in old if a[0] != name]
            updated = self.jobs.update_one(
                {"_id": row["_id"], "_attachments": old},
                {"$set": {"_attachments": kept}, "$currentDate": {"mtime": True}},
            )
            if updated.matched_count == 1:
                unlinked[row["_id"]] = [file_id for _name, file_id in gone]

    def get_domain_blob(self, exp_key: str | None) -> bytes | None:
        """hyperopt's pickled ``FMinIter_Domain`` attachment for ``exp_key`` (trusted workers)."""
        return self.read_experiment_file(exp_key, "FMinIter_Domain")

    # -- an experiment's own files (``MongoTrials.attachments``: hyperopt's FMinIter_Domain) --

    @retrying
    def experiment_file_names(self, exp_key: str | None) -> list[str]:
        """The names of the experiment's own GridFS files (every experiment's: ``None``)."""
        found = self.gfs.find(_file_query(exp_key))
        return sorted({f.filename for f in found if isinstance(f.filename, str)})

    @retrying
    def has_experiment_file(self, exp_key: str | None, name: str) -> bool:
        return self.gfs.exists(filename=name, **_file_query(exp_key))

    @retrying
    def read_experiment_file(self, exp_key: str | None, name: str) -> bytes | None:
        """The newest version of the experiment's file ``name``; ``None`` if there is none. A
        version deleted while it was read (a writer replacing it) is read again."""
        for _ in range(CORRUPT_RETRIES):
            try:
                return self.gfs.get_last_version(filename=name, **_file_query(exp_key)).read()
            except gridfs.errors.NoFile:
                return None
            except gridfs.errors.CorruptGridFile:
                logger.debug("file %r changed while it was read; reading it again", name)
        return None

    @retrying
    def write_experiment_file(self, exp_key: str | None, name: str, data: bytes) -> None:
        """Replace the experiment's file ``name``: the new version is written first, then every
        version but the newest goes, so a reader (a worker unpickling the domain) always finds
        one whole version, even with two writers at once. hyperopt deletes first, leaving a
        window (or, if killed there, nothing). ``exp_key=None`` replaces the file written
        without an experiment, never other experiments' files."""
        query = {"filename": name, "exp_key": exp_key}
        self.gfs.put(data, filename=name, encoding="utf-8", **_file_query(exp_key))
        versions = self.gfs.find(query, sort=[("uploadDate", -1), ("_id", -1)])
        for old in list(versions)[1:]:
            self.delete_file(old._id)

    @retrying
    def delete_experiment_file(self, exp_key: str | None, name: str) -> bool:
        """Delete every version of the experiment's file ``name`` (``exp_key=None``: the file
        written without an experiment); ``False`` if there was none."""
        found = list(self.gfs.find({"filename": name, "exp_key": exp_key}))
        for old in found:
            self.delete_file(old._id)
        return bool(found)


#: how often a GridFS file deleted while it was being read is read again
CORRUPT_RETRIES = 5


def _file_query(exp_key: str | None) -> dict[str, Any]:
    return {} if exp_key is None else {"exp_key": exp_key}
