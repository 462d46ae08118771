"""Checkpoints: a trial's saved state, so that an attempt after a loss resumes, not restarts.

One checkpoint per trial: a GridFS file whose metadata names its trial, and a ``checkpoint``
field on the trial document that links it (``{file_id, epoch, attempt, bytes, sha256, at}``,
readable from the mongo shell). Writing one is fenced like every worker write: the file is put
first, then linked with one update filtered on the lease; a lost lease deletes the new file and
answers ``False``. The checkpoint it replaced is deleted once the new link is written.

With ``$HYPERFLEET_CHECKPOINT_DIR`` set (``hyperfleet worker --checkpoint-dir DIR``: a directory
every worker mounts at the same path, e.g. a cluster's shared file system) the file is written
there instead, ``<trial key>-<attempt>-<epoch>-<digest>.ckpt`` (written to a temporary name,
then renamed: never a partial file under its name), and the link names it (``file`` instead of
``file_id``). A link's name is only ever joined to this process's own directory, and only when
it is such a name (no path, no ``..``): a hostile document cannot make a worker read or delete
anything else. A process without the directory refuses a checkpoint that lives there (one line:
start it with ``--checkpoint-dir``); the trial then starts fresh.

Reading one back checks it: a missing or partial file, a size or digest that does not match the
link, or a file written for another trial is refused (:class:`CheckpointRefused`, one line), and
the caller starts the trial fresh — never a crash, never another trial's model.

When an attempt starts from a checkpoint of epoch *k* (or from scratch, *k* = 0), the per-epoch
records of the epochs it will train again are dropped (:meth:`Checkpoints.resume_at`), so the
learning curve continues without duplicates. Ended trials keep no checkpoint
(:meth:`Checkpoints.drop_checkpoints`: the worker, and the search's sweeps of what killed workers
left). A link only ever deletes a checkpoint file of its own trial (a GridFS file's ``trial``, a
shared file's trial key): a copied or hostile document's link is removed, the file it names kept.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import stat
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import gridfs
import gridfs.errors
import pymongo.errors
from bson import ObjectId

from coordinator import rules
from coordinator.errors import CheckpointNotSaved, CheckpointRefused
from coordinator.pruning.base import rung_key
from coordinator.shown import shown
from coordinator.states import TrialState
from coordinator.store.base import Checkpoint, DocId, Lease
from coordinator.store.connection import retrying
from coordinator.store.encoding import utcnow
from coordinator.store.handles import StorePart

logger = logging.getLogger(__name__)

#: the largest checkpoint read back (a hostile link must not make a worker read gigabytes)
MAX_CHECKPOINT_BYTES = 2 * 2**30
#: a shared directory for checkpoint files instead of GridFS (``worker --checkpoint-dir``)
CHECKPOINT_DIR_ENV = "HYPERFLEET_CHECKPOINT_DIR"
#: the largest epoch (and attempt) a checkpoint may have: its file name holds at most 9 digits
MAX_EPOCH = 999_999_999
#: the only names a link may give a checkpoint file in that directory
_FILE_NAME = re.compile(r"[0-9a-f]{16}-[0-9]{1,9}-[0-9]{1,9}-[0-9a-f]{16}\.ckpt")


def checkpoint_dir() -> Path | None:
    """The shared checkpoint directory this process writes to (``None``: GridFS), ``~`` and
    relative paths resolved as the worker's ``--checkpoint-dir`` resolves them."""
    value = os.environ.get(CHECKPOINT_DIR_ENV, "").strip()
    return Path(os.path.abspath(os.path.expanduser(value))) if value else None


def _trial_key(trial_id: Any) -> str:
    """The prefix of a trial's checkpoint files: names no database, safe in any file name."""
    return hashlib.sha256(str(trial_id).encode()).hexdigest()[:16]


#: states in which a trial keeps no checkpoint
ENDED = (int(TrialState.DONE), int(TrialState.ERROR), int(TrialState.CANCEL))


class Checkpoints(StorePart):
    """Part of :class:`~coordinator.store.mongo.TrialStore`; see :mod:`coordinator.store.base`."""

    def save_checkpoint(self, lease: Lease, epoch: int, data: bytes) -> bool:
        if not rules.is_int(epoch) or not 0 <= epoch <= MAX_EPOCH:
            raise ValueError(
                f"a checkpoint's epoch must be a whole number from 0 to {MAX_EPOCH}, got "
                f"{epoch!r:.40}"
            )
        if not rules.is_int(lease.attempt) or not 0 <= lease.attempt <= MAX_EPOCH:
            # only a junk document gets such an attempt number; a file name cannot hold it
            logger.warning(
                "tid %s: checkpoint of epoch %s not saved: attempt %s is out of range",
                lease.tid,
                epoch,
                shown(lease.attempt),
            )
            raise CheckpointNotSaved(f"attempt {shown(lease.attempt)} is out of range")
        digest = hashlib.sha256(data).hexdigest()
        directory = checkpoint_dir()
        if directory is None:
            file_id: Any = self._put(lease, epoch, data, digest)
        else:  # CheckpointNotSaved when it cannot be written: the last one stays linked
            file_id = _put_file(directory, lease, epoch, data, digest)
        seen: dict[str, Any] = {}
        try:
            old = self._link(lease, epoch, file_id, len(data), digest, seen)
        except BaseException:
            self._delete_file(file_id, lease.id)  # an outage past the budget: it is unlinked
            raise
        if old is None:  # the lease is lost: the new file is nobody's
            self._delete_file(file_id, lease.id)
            return False
        if old != file_id:
            self._delete_file(old, lease.id)
            if isinstance(old, str) and checkpoint_dir() is None:
                logger.warning(
                    "tid %s: its previous checkpoint file %s stays in a shared directory this "
                    "worker does not have (give every worker the same --checkpoint-dir)",
                    lease.tid,
                    old,
                )
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
            ("file" if isinstance(file_id, str) else "file_id"): file_id,
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
        old = _file_of(seen["old"], lease.id)
        return file_id if old is None else old

    def load_checkpoint(self, lease: Lease) -> Checkpoint | None:
        link = self._read_link(lease)
        if link is None:
            return None
        if not isinstance(link, dict):
            raise CheckpointRefused(f"its link is {type(link).__name__}, not a document")
        epoch, size = link.get("epoch"), link.get("bytes")
        if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
            raise CheckpointRefused(f"its epoch {epoch!r:.40} is not a whole number >= 0")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise CheckpointRefused(f"its size {size!r:.40} is not a whole number")
        if size > MAX_CHECKPOINT_BYTES:
            raise CheckpointRefused(f"it is {size} bytes, over the {MAX_CHECKPOINT_BYTES} limit")
        if "file" in link:
            data = _read_shared(link.get("file"), lease, size)
        else:
            file_id = link.get("file_id")
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
        except gridfs.errors.NoFile as e:
            raise CheckpointRefused(f"its file {file_id!s:.40} cannot be read (missing)") from e
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
        self,
        *,
        trial_ids: Iterable[DocId] = (),
        exp_key: str | None = None,
        search_ended: bool = True,
    ) -> int:
        ids = list(trial_ids)
        sweep = exp_key is not None and not ids
        gridfs_files: list[dict[str, Any]] = []
        shared = sweep and _has_shared_files()  # the directory is listed once per sweep here
        if sweep:
            gridfs_files = self._gridfs_checkpoints(exp_key)
            if not search_ended and not gridfs_files and not shared:
                return 0  # while it runs, an experiment without checkpoints costs one query
        files, kept = self._unlink_ended(ids, exp_key, keep_paused=bool(ids) or not search_ended)
        if sweep and search_ended:
            self._stop_paused(exp_key)
        directory = checkpoint_dir()
        deleted = missing = 0
        for file_id, trial_id in files:
            went = self._delete_file(file_id, trial_id)
            deleted += went
            missing += not went and isinstance(file_id, str) and directory is not None
        if missing:
            logger.warning(
                "%d linked checkpoint files were not in %s ($%s): if that is not the workers' "
                "--checkpoint-dir, their files stay there; delete them by hand",
                missing,
                directory,
                CHECKPOINT_DIR_ENV,
            )
        done = {file_id for file_id, _ in files}  # listed, and deleted through their link
        left = [
            f for f in gridfs_files if not (isinstance(f["_id"], ObjectId) and f["_id"] in done)
        ]
        orphans = self._sweep_orphans(exp_key, left, directory if shared else None) if sweep else 0
        if kept and search_ended:
            logger.info(
                "%d checkpoints stay linked, their files in the workers' shared directory: this "
                "process has no $%s; set it to the workers' --checkpoint-dir to delete them",
                kept,
                CHECKPOINT_DIR_ENV,
            )
        return deleted + orphans

    def _sweep_orphans(
        self, exp_key: str, files: list[dict[str, Any]], directory: Path | None
    ) -> int:
        """Delete the checkpoint files of ``exp_key``'s ended trials that no link names: written
        by a worker killed between the write and its link (the link comes second, so that no
        link ever names a missing file). Only files of the attempts a trial had had when it was
        seen ended: a later attempt's (a trial retried meanwhile) is never touched. ``files``:
        the experiment's GridFS checkpoint files, listed before its trials were read;
        ``directory``: this process's shared directory if it holds checkpoint files. How many
        went."""
        if not files and directory is None:
            return 0  # nothing to sweep: no read of the experiment's trials
        # with GridFS only, just the trials those files name are read
        named = None
        if directory is None:
            named = list({f["trial"] for f in files if isinstance(f.get("trial"), ObjectId)})
            if not named:
                return 0
        ended = self._ended_attempts(exp_key, named)
        if not ended:
            return 0
        swept = 0
        for file_id, trial_id in _orphans(files, ended):
            swept += self._delete_gridfs(file_id, trial_id)
        if directory is not None:
            keys = {_trial_key(trial_id): attempt for trial_id, attempt in ended.items()}
            swept += _sweep_shared_orphans(directory, keys)
        return swept

    @retrying
    def _ended_attempts(self, exp_key: str, among: list[Any] | None) -> dict[Any, int]:
        """``exp_key``'s ended trials without a checkpoint link (only those ``among`` names,
        unless ``None``): id -> attempt. Trials have ObjectId ids; a junk document with another
        id (a string spelling some other trial's ObjectId would share its files' names) is
        left out."""
        query: dict[str, Any] = {
            "exp_key": exp_key,
            "state": {"$in": list(ENDED)},
            "checkpoint": None,
        }
        if among is not None:
            query["_id"] = {"$in": among}
        cursor = self.jobs.find(query, projection={"attempt": 1})
        return {
            doc["_id"]: doc.get("attempt", 0) for doc in cursor if isinstance(doc["_id"], ObjectId)
        }

    @retrying
    def _gridfs_checkpoints(self, exp_key: str) -> list[dict[str, Any]]:
        """``exp_key``'s checkpoint files in GridFS: their ids, trials and attempts."""
        found = self.db["fs.files"].find(
            {"kind": "checkpoint", "exp_key": exp_key}, projection={"trial": 1, "attempt": 1}
        )
        return list(found)

    @retrying
    def _stop_paused(self, exp_key: str) -> None:
        """The search's end: trials still paused at a rung (``--promote``), their checkpoints
        gone, are stopped for good (``result.pruned.paused`` false): never promoted later. The
        rung record that paused each (the one at its ``result.pruned`` bracket and rung) says
        ``prune`` from then on, with why: also one a promotion cut short left ``promoted``."""
        paused = {
            "exp_key": exp_key,
            "state": int(TrialState.DONE),
            "result.pruned.paused": True,
            "checkpoint": None,
        }
        projection = {"tid": 1, "result.pruned.bracket": 1, "result.pruned.rung": 1}
        found = self.jobs.find(paused, projection=projection)
        keys = [key for doc in found if (key := _pausing_record(exp_key, doc)) is not None]
        if keys:  # the records first: a retry after a lost reply finds the trials again
            self.db["rungs"].update_many(
                {"_id": {"$in": keys}, "decision": {"$in": ["pause", "promoted"]}},
                {"$set": {"decision": "prune", "why": "still paused when the search ended"}},
            )
        self.jobs.update_many(
            paused, {"$set": {"result.pruned.paused": False}, "$currentDate": {"mtime": True}}
        )

    @retrying
    def _unlink_ended(
        self, trial_ids: list[DocId], exp_key: str | None, *, keep_paused: bool
    ) -> tuple[list[Any], int]:
        """Unlink the checkpoints of ended trials (but those paused at a rung where
        ``keep_paused``: a promotion resumes from it); the files to delete, and how many links
        were left because their file is in a shared directory this process does not have."""
        query: dict[str, Any] = {"state": {"$in": list(ENDED)}, "checkpoint": {"$ne": None}}
        if trial_ids:
            query["_id"] = {"$in": trial_ids}
        elif exp_key is not None:
            query["exp_key"] = exp_key
        else:
            return [], 0
        if keep_paused:
            query["result.pruned.paused"] = {"$ne": True}
        files: list[tuple[Any, Any]] = []
        kept = 0
        here = checkpoint_dir() is not None
        for doc in self.jobs.find(query, projection={"checkpoint": 1}):
            link = doc.get("checkpoint")
            if isinstance(link, dict) and "file" in link and not here:
                kept += 1  # deletable only where the directory is: the link stays
                continue
            # $eq: a link stored as {"$op": ...} is a value here, never an operator
            # ($eq on _id too: an embedded server may take a stored regex _id as a pattern)
            still = {
                "_id": {"$eq": doc["_id"]},
                "state": {"$in": list(ENDED)},
                "checkpoint": {"$eq": link},
            }
            if keep_paused:
                still["result.pruned.paused"] = {"$ne": True}
            try:
                unlinked = self.jobs.update_one(
                    still, {"$set": {"checkpoint": None}, "$currentDate": {"mtime": True}}
                )
            except pymongo.errors.WriteError as e:  # a junk document: the others go on
                logger.warning(
                    "trial %s: its checkpoint link cannot be removed (%s); left as it is",
                    shown(doc["_id"]),
                    shown(str(e)),
                )
                continue
            file_id = _file_of(link, doc["_id"])
            if unlinked.matched_count == 1 and file_id is not None:
                files.append((file_id, doc["_id"]))
        return files, kept

    def _delete_file(self, file_id: Any, trial_id: Any) -> bool:
        """Delete trial ``trial_id``'s checkpoint file ``file_id``; whether it went (``False``
        also for one in a shared directory this process does not have)."""
        if isinstance(file_id, str):
            return _delete_shared(file_id)
        return self._delete_gridfs(file_id, trial_id)

    @retrying
    def _delete_gridfs(self, file_id: Any, trial_id: Any) -> bool:
        """Delete GridFS file ``file_id`` if it is a checkpoint of trial ``trial_id`` (a copied
        or hostile link naming another trial's file, or a model, only loses its link); whether
        it was there to delete. GridFS's own delete checks no owner and does not say."""
        files = self.db["fs.files"]
        # $eq: ids are values, never patterns, whatever a junk document stored
        owned = {"_id": {"$eq": file_id}, "kind": "checkpoint", "trial": {"$eq": trial_id}}
        gone = files.delete_one(owned).deleted_count == 1
        if gone or files.count_documents({"_id": {"$eq": file_id}}, limit=1) == 0:
            self.db["fs.chunks"].delete_many({"files_id": {"$eq": file_id}})  # a retry's too
        return gone


def _pausing_record(exp_key: str, doc: dict[str, Any]) -> str | None:
    """The key of the rung record that paused trial ``doc`` (its ``result.pruned`` bracket and
    rung); ``None`` for a junk one."""
    result = doc.get("result")
    pruned = result.get("pruned") if isinstance(result, dict) else None
    if not isinstance(pruned, dict):
        return None
    tid, bracket, rung = doc.get("tid"), pruned.get("bracket"), pruned.get("rung")
    if not all(rules.is_int(v) for v in (tid, bracket, rung)):
        return None
    return rung_key(exp_key, bracket, rung, tid)


# -- the shared directory (``--checkpoint-dir``) ------------------------------------------------


def _file_of(link: Any, trial_id: Any) -> Any | None:
    """The file trial ``trial_id``'s checkpoint link names: a GridFS id, or a file name in the
    shared directory (only a well-formed one of this trial: a hostile link naming another
    trial's file must not get it deleted); ``None`` for none."""
    if not isinstance(link, dict):
        return None
    if "file_id" in link:  # an ObjectId only: a name would reach the shared directory
        return link["file_id"] if isinstance(link["file_id"], ObjectId) else None
    name = link.get("file")
    if isinstance(name, str) and _FILE_NAME.fullmatch(name):
        return name if name.startswith(_trial_key(trial_id) + "-") else None
    return None


def _put_file(directory: Path, lease: Lease, epoch: int, data: bytes, digest: str) -> str:
    """Write ``data`` into ``directory`` under its checkpoint name (atomically: a temporary
    name, flushed, then renamed); the name. :class:`CheckpointNotSaved` after one warning if it
    cannot be written (a full or read-only file system, a share that is not mounted: never
    created here, so a missing mount is not silently replaced by a local directory)."""
    name = f"{_trial_key(lease.id)}-{lease.attempt}-{epoch}-{digest[:16]}.ckpt"
    tmp = directory / f".{name}.{os.getpid()}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, directory / name)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        logger.warning(
            "tid %s: checkpoint of epoch %s not written to %s (%s); the trial goes on from "
            "its last checkpoint if it is lost: free space or fix --checkpoint-dir",
            lease.tid,
            epoch,
            directory,
            e.strerror or e,
        )
        raise CheckpointNotSaved(f"checkpoint of epoch {epoch} not written: {e}") from e
    return name


def _delete_entries(directory: Path, doomed: Callable[[os.DirEntry[str]], bool]) -> int:
    """Delete the entries of ``directory`` that ``doomed`` picks (a link is deleted, never
    followed); how many went. An unreadable directory deletes nothing."""
    swept = 0
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return 0
    for entry in entries:
        try:
            if doomed(entry):
                os.unlink(entry.path)
                swept += 1
        except OSError:
            continue  # gone already, or not ours to delete
    return swept


def _orphans(files: list[dict[str, Any]], ended: dict[Any, int]) -> list[tuple[Any, Any]]:
    """The GridFS checkpoint ``files`` (id, trial) of the trials ``ended`` names (trial id ->
    its last attempt), of that attempt or earlier."""
    out = []
    for file in files:
        trial, attempt = file.get("trial"), file.get("attempt")
        last = ended.get(trial) if isinstance(trial, ObjectId) else None
        if rules.is_int(attempt) and rules.is_int(last) and attempt <= last:
            out.append((file["_id"], trial))
    return out


def _has_shared_files() -> bool:
    """Whether this process has the shared directory and any checkpoint-named entry is in it
    (a temporary file is not)."""
    directory = checkpoint_dir()
    if directory is None:
        return False
    try:
        with os.scandir(directory) as entries:
            return any(_FILE_NAME.fullmatch(entry.name) for entry in entries)
    except OSError:
        return False


def _sweep_shared_orphans(directory: Path, ended: dict[str, Any]) -> int:
    """Delete the checkpoint files in ``directory`` of the trials ``ended`` names (trial key ->
    its last attempt), of that attempt or earlier: only names :func:`_put_file` makes. How
    many went."""

    def orphan(entry: os.DirEntry[str]) -> bool:
        if not _FILE_NAME.fullmatch(entry.name):
            return False
        key, attempt = entry.name.split("-")[:2]
        last = ended.get(key)
        return rules.is_int(last) and int(attempt) <= last

    return _delete_entries(directory, orphan)


#: a temporary checkpoint file (``_put_file``) older than this lost its writer: swept
STALE_TEMPORARY_S = 3600.0
_TEMPORARY = re.compile(r"\.(" + _FILE_NAME.pattern + r")\.[0-9]{1,10}\.tmp")


def sweep_stale_temporaries(directory: Path, older_than_s: float = STALE_TEMPORARY_S) -> int:
    """Delete the temporary checkpoint files in ``directory`` that a worker killed while writing
    left behind: only names :func:`_put_file` makes, only regular files (never a link's
    target), only those unchanged for ``older_than_s`` (a write still going is never
    touched). How many went; an unreadable directory sweeps nothing."""
    import time

    limit = time.time() - older_than_s

    def stale(entry: os.DirEntry[str]) -> bool:
        if not _TEMPORARY.fullmatch(entry.name):
            return False
        info = entry.stat(follow_symlinks=False)
        return stat.S_ISREG(info.st_mode) and info.st_mtime < limit

    return _delete_entries(directory, stale)


def _read_shared(name: Any, lease: Lease, size: int) -> bytes:
    """The ``size`` bytes of checkpoint file ``name`` of ``lease``'s trial in this process's
    shared directory; :class:`CheckpointRefused` for a name that is not one, another trial's
    file, no directory here, or anything but a regular file of that size (a symlink, a FIFO, a
    device: opened without following links and without blocking, checked before one byte is
    read, so nobody who can write to the directory makes a worker hang or read gigabytes)."""
    if not isinstance(name, str) or not _FILE_NAME.fullmatch(name):
        raise CheckpointRefused(f"its file name {name!r:.60} is not a checkpoint's")
    if not name.startswith(_trial_key(lease.id) + "-"):
        raise CheckpointRefused(f"its file {name} was written for another trial")
    directory = checkpoint_dir()
    if directory is None:
        raise CheckpointRefused(
            f"it is in a shared checkpoint directory (file {name}) and this worker has none: "
            "start workers with --checkpoint-dir"
        )
    path = directory / name
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as e:
        raise CheckpointRefused(
            f"its file {path} cannot be read ({e.strerror or e}; do all workers have the same "
            "--checkpoint-dir?)"
        ) from e
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise CheckpointRefused(f"its file {path} is not a regular file")
    with os.fdopen(fd, "rb") as file:
        if info.st_size != size:
            raise CheckpointRefused(
                f"its file {path} holds {info.st_size} bytes, not the {size} bytes it was saved "
                "with (corrupt or partial)"
            )
        try:
            return file.read(size + 1)
        except OSError as e:
            raise CheckpointRefused(f"its file {path} cannot be read ({e.strerror or e})") from e


def _delete_shared(name: str) -> bool:
    """Delete checkpoint file ``name`` (a well-formed name only) from this process's shared
    directory; whether it went (``False`` when this process has none: the file stays)."""
    directory = checkpoint_dir()
    if directory is None or not _FILE_NAME.fullmatch(name):
        return False
    try:
        (directory / name).unlink()
    except FileNotFoundError:
        return False
    except OSError as e:
        logger.warning("checkpoint file %s not deleted: %s", directory / name, e.strerror or e)
        return False
    return True
