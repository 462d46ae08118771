"""The Mongo trial store: the only module in hyperfleet that talks to pymongo.

Documents follow hyperopt's job protocol (``jobs`` collection, ``job_ids`` counter, GridFS
attachments in ``fs``, integer states, see :class:`~coordinator.states.TrialState`), so stock
hyperopt tools can still read them. :class:`TrialStore` subclasses hyperopt's ``MongoJobs`` and
replaces every pymongo-3 call it made, then adds the contract coordinator and workers rely on.

Contract
--------
* Every state change is one atomic ``update_one`` filtered on the state it expects to replace.
  Worker writes are also filtered on ``owner`` and ``attempt`` (the *fence*): a worker whose lease
  was reaped can no longer change the trial, and its write reports ``False``.
* ``reserve_trial``: NEW -> RUNNING; sets ``owner``, increments ``attempt`` and sets
  ``lease_expires`` from the server's clock (``$$NOW``).
* ``heartbeat``: renews the lease of a RUNNING trial the caller still owns.
* ``finish`` / ``fail``: RUNNING -> DONE / ERROR. Finished trials never change state again.
* ``release``: RUNNING -> NEW (requeue). Counted releases (lost, crashed) increment ``attempts``
  and append to ``attempt_history``; the one that reaches ``max_attempts`` makes the trial ERROR.
* ``reap_expired``: releases RUNNING trials whose lease expired (server time). Idempotent and safe
  to run from several processes at once, because each release is fenced and re-checks the expiry.
* Timestamps that matter for liveness come from the database clock, never the caller's.
* Connection failures are retried with backoff for ``outage_s`` seconds, then raise
  :class:`~coordinator.errors.StoreUnavailable`; nothing is lost because every write is either
  idempotent or fenced.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import logging
import math
import os
import random
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import gridfs
import pymongo
import pymongo.errors
from bson import ObjectId
from hyperopt.mongoexp import MongoJobs
from hyperopt.mongoexp import OperationFailure as HyperoptOperationFailure

from coordinator.errors import AuthError, ConfigError, StoreUnavailable
from coordinator.states import AttemptOutcome, ExperimentStatus, TrialState

logger = logging.getLogger(__name__)

DEFAULT_DB = "hyperfleet"
DEFAULT_OUTAGE_S = 60.0
AUTH_FAILED = 18

T = TypeVar("T")

_PASSWORD_RE = re.compile(r"(?P<head>mongodb(?:\+srv)?://[^:/@]+:)(?P<pw>[^@]*)(?P<at>@)")


def redact_uri(uri: str) -> str:
    """Return ``uri`` with its password replaced by ``***`` (for logs and messages)."""
    return _PASSWORD_RE.sub(r"\g<head>***\g<at>", uri)


def utcnow() -> dt.datetime:
    """Naive UTC now, the form pymongo returns dates in (for client-side bookkeeping only)."""
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def _outage_budget() -> float:
    raw = os.environ.get("HYPERFLEET_OUTAGE_S", "")
    try:
        return float(raw) if raw else DEFAULT_OUTAGE_S
    except ValueError:
        raise ConfigError(f"HYPERFLEET_OUTAGE_S={raw!r} is not a number of seconds") from None


def _retrying(method: Callable[..., T]) -> Callable[..., T]:
    """Retry ``method`` on connection failures for up to ``self.outage_s`` seconds."""

    @functools.wraps(method)
    def wrapper(self: TrialStore, *args: Any, **kwargs: Any) -> T:
        started = None
        delay = 0.2
        while True:
            try:
                result = method(self, *args, **kwargs)
            except pymongo.errors.OperationFailure as e:
                if e.code == AUTH_FAILED:
                    raise AuthError(
                        f"MongoDB at {self.safe_uri} refused the credentials; "
                        "check the user, password and authSource in the URI"
                    ) from e
                raise
            except pymongo.errors.ConnectionFailure as e:
                now = time.monotonic()
                if started is None:
                    started = now
                    logger.warning(
                        "lost contact with MongoDB at %s (%s); retrying for up to %.0f s",
                        self.safe_uri,
                        type(e).__name__,
                        self.outage_s,
                    )
                if now - started >= self.outage_s:
                    raise StoreUnavailable(
                        f"MongoDB at {self.safe_uri} unreachable for {now - started:.0f} s "
                        f"(last error: {type(e).__name__}); nothing was lost: start the server "
                        "again and rerun the same command to continue"
                    ) from e
                time.sleep(min(delay, self.outage_s - (now - started)))
                delay = min(delay * 2, 5.0)
                continue
            if started is not None:
                logger.warning(
                    "MongoDB at %s reachable again after %.1f s",
                    self.safe_uri,
                    time.monotonic() - started,
                )
            return result

    return wrapper


@dataclass(frozen=True)
class Lease:
    """A worker's claim on one RUNNING trial; its fields fence every write the worker makes."""

    id: ObjectId
    tid: int
    exp_key: str | None
    owner: str
    attempt: int
    doc: dict[str, Any]

    @property
    def fence(self) -> dict[str, Any]:
        return {
            "_id": self.id,
            "state": int(TrialState.RUNNING),
            "owner": self.owner,
            "attempt": self.attempt,
        }

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> Lease:
        return cls(
            id=doc["_id"],
            tid=doc["tid"],
            exp_key=doc.get("exp_key"),
            owner=doc["owner"],
            attempt=doc.get("attempt", 0),
            doc=doc,
        )


def connect(
    uri: str,
    db: str = DEFAULT_DB,
    *,
    timeout_s: float = 5.0,
    outage_s: float | None = None,
    check: bool = True,
) -> TrialStore:
    """Open a :class:`TrialStore` on ``uri`` (any standard ``mongodb://`` or ``mongodb+srv://``).

    With ``check`` the server must answer ``ping`` within ``timeout_s``; otherwise a clear
    :class:`StoreUnavailable`, :class:`AuthError` or :class:`ConfigError` is raised.
    ``outage_s`` (default: $HYPERFLEET_OUTAGE_S or 60) is how long operations retry while the
    server is unreachable before giving up.
    """
    safe = redact_uri(uri)
    if outage_s is None:
        outage_s = _outage_budget()
    if not uri.startswith(("mongodb://", "mongodb+srv://")):
        raise ConfigError(
            f"malformed MongoDB URI {safe!r}: it must start with mongodb:// or mongodb+srv://"
        )
    if not db or any(c in db for c in '/\\. "$'):
        raise ConfigError(f"invalid database name {db!r}: use letters, digits, '-' and '_'")
    try:
        client: pymongo.MongoClient = pymongo.MongoClient(
            uri,
            serverSelectionTimeoutMS=int(timeout_s * 1000),
            connectTimeoutMS=int(timeout_s * 1000),
            appname="hyperfleet",
        )
    except (pymongo.errors.ConfigurationError, pymongo.errors.InvalidURI, ValueError) as e:
        raise ConfigError(f"malformed MongoDB URI {safe!r}: {e}") from e
    store = TrialStore(client, db, safe_uri=safe, outage_s=outage_s)
    if check:
        try:
            client.admin.command("ping")
            store.db.command("ping")
        except pymongo.errors.OperationFailure as e:
            client.close()
            if e.code == AUTH_FAILED:
                raise AuthError(
                    f"MongoDB at {safe} refused the credentials; "
                    "check the user, password and authSource in the URI"
                ) from e
            raise StoreUnavailable(f"MongoDB at {safe} answered ping with an error: {e}") from e
        except pymongo.errors.ConnectionFailure as e:
            client.close()
            raise StoreUnavailable(
                f"cannot reach MongoDB at {safe} within {timeout_s:.0f} s; is the server "
                "running? (`hyperfleet server` starts an embedded one)"
            ) from e
    return store


class TrialStore(MongoJobs):
    """hyperopt's ``MongoJobs`` on pymongo 4 plus hyperfleet's trial contract (see module)."""

    def __init__(
        self,
        client: pymongo.MongoClient,
        db_name: str = DEFAULT_DB,
        *,
        safe_uri: str = "",
        outage_s: float = DEFAULT_OUTAGE_S,
    ) -> None:
        db = client[db_name]
        super().__init__(db, db["jobs"], gridfs.GridFS(db, collection="fs"), client, None, "spec")
        self.client = client
        self.db_name = db_name
        self.safe_uri = safe_uri
        self.outage_s = outage_s
        self.experiments = db["experiments"]
        self.workers = db["workers"]
        self._indexed = False

    def close(self) -> None:
        self.client.close()

    # -- hyperopt's MongoJobs API on pymongo 4 -------------------------------------------------

    def __len__(self) -> int:
        return self.jobs.count_documents({})

    @_retrying
    def create_jobs_indexes(self) -> None:
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

    @_retrying
    def insert(self, job: dict[str, Any]) -> dict[str, Any]:
        doc = dict(job)
        try:
            self.jobs.insert_one(doc)
        except pymongo.errors.OperationFailure as e:
            raise HyperoptOperationFailure(e) from e
        return doc

    @_retrying
    def insert_many(self, docs: list[dict[str, Any]]) -> list[ObjectId]:
        """Insert trial documents; a retry after a lost reply is harmless (ids are client-side)."""
        for doc in docs:
            doc.setdefault("_id", ObjectId())
        try:
            self.jobs.insert_many(docs, ordered=False)
        except pymongo.errors.BulkWriteError as e:
            if any(err.get("code") != 11000 for err in e.details.get("writeErrors", [])):
                raise
        return [d["_id"] for d in docs]

    @_retrying
    def delete(self, job: dict[str, Any]) -> None:
        self.jobs.delete_one({"_id": job["_id"]})

    @_retrying
    def delete_all(self, cond: dict[str, Any] | None = None) -> None:
        for doc in self.jobs.find(cond or {}, projection=["_id", "_attachments"]):
            for _name, file_id in doc.get("_attachments", []):
                try:
                    self.gfs.delete(file_id)
                except gridfs.errors.NoFile:
                    logger.warning("attachment %s of job %s was already gone", file_id, doc["_id"])
            self.jobs.delete_one({"_id": doc["_id"]})

    def reserve(
        self, host_id: str, cond: dict[str, Any] | None = None, exp_key: str | None = None
    ) -> dict[str, Any] | None:
        """hyperopt's reserve signature, for code that drives ``MongoJobs`` directly."""
        lease = self.reserve_trial(host_id, exp_key=exp_key, trusted=True, extra_filter=cond)
        return None if lease is None else lease.doc

    @_retrying
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

    # -- trial contract: workers ---------------------------------------------------------------

    @_retrying
    def reserve_trial(
        self,
        owner: str,
        *,
        exp_key: str | None = None,
        lease_s: float = 30.0,
        trusted: bool = False,
        worker: dict[str, Any] | None = None,
        extra_filter: dict[str, Any] | None = None,
    ) -> Lease | None:
        """Claim one NEW trial for ``owner``; ``None`` when none is queued.

        An indexed ``find`` picks candidates and a conditional ``update_one`` claims one (fast on
        both SecantusDB, whose findAndModify scans the collection, and MongoDB). Untrusted workers
        only see trials of named spaces (``space`` set), never pickled hyperopt Domains.
        """
        query: dict[str, Any] = dict(extra_filter or {})
        query["state"] = int(TrialState.NEW)
        if exp_key is not None:
            query["exp_key"] = exp_key
        claim = [
            {
                "$set": {
                    "state": int(TrialState.RUNNING),
                    "owner": owner,
                    "attempt": {"$add": [{"$ifNull": ["$attempt", 0]}, 1]},
                    "book_time": "$$NOW",
                    "refresh_time": "$$NOW",
                    "lease_expires": {"$add": ["$$NOW", int(lease_s * 1000)]},
                    "lease_s": lease_s,
                    "worker": {"$literal": worker or {"id": owner}},
                    "version": {"$add": [{"$ifNull": ["$version", 0]}, 1]},
                    "mtime": "$$NOW",
                }
            }
        ]
        for _ in range(8):
            candidates = self._reserve_candidates(query, trusted)
            if not candidates:
                return None
            random.shuffle(candidates)
            for cand in candidates:
                attempt = cand.get("attempt")
                claimed = self.jobs.update_one(
                    {
                        "_id": cand["_id"],
                        "state": int(TrialState.NEW),
                        "owner": None,
                        "attempt": attempt,  # unchanged since we read it (None: never reserved)
                    },
                    claim,
                )
                if claimed.modified_count == 1:
                    # what the claim wrote, applied locally: no third round trip (the server's
                    # timestamps stay unknown here, and nothing downstream needs them)
                    doc = {
                        **cand,
                        "state": int(TrialState.RUNNING),
                        "owner": owner,
                        "attempt": (attempt or 0) + 1,
                        "lease_s": lease_s,
                        "worker": worker or {"id": owner},
                        "version": cand.get("version", 0) + 1,
                        "book_time": utcnow(),  # approximately; the document has server time
                    }
                    return Lease.from_doc(doc)
        return None

    def _reserve_candidates(self, query: dict[str, Any], trusted: bool) -> list[dict[str, Any]]:
        """Up to 4 NEW trials, oldest first; untrusted workers only get named-space ones.

        ``space`` is checked here rather than with ``$exists`` in the query: SecantusDB then
        scans every trial of the experiment (230 ms at 5,000 trials instead of 2 ms).
        """
        found = list(self.jobs.find(query, sort=[("tid", 1)], limit=4))
        if trusted:
            return found
        named = [doc for doc in found if "space" in doc]
        if named or len(found) < 4:
            return named
        # the oldest queued trials are all pickled ones: look past them (rare, slow path)
        query = {**query, "space": {"$exists": True}}
        return list(self.jobs.find(query, sort=[("tid", 1)], limit=4))

    @_retrying
    def heartbeat(self, lease: Lease, lease_s: float) -> bool:
        """Renew ``lease`` for ``lease_s`` seconds of server time; ``False`` if it was lost."""
        renewed = self.jobs.update_one(
            lease.fence,
            [
                {
                    "$set": {
                        "refresh_time": "$$NOW",
                        "lease_expires": {"$add": ["$$NOW", int(lease_s * 1000)]},
                    }
                }
            ],
        )
        return renewed.matched_count == 1

    @_retrying
    def record_epoch(self, lease: Lease, metrics: dict[str, Any]) -> bool:
        """Append one epoch's metrics to the trial's ``epochs`` list; ``False`` if lease lost."""
        pushed = self.jobs.update_one(
            lease.fence,
            {"$push": {"epochs": metrics}, "$currentDate": {"refresh_time": True}},
        )
        return pushed.matched_count == 1

    @_retrying
    def finish(self, lease: Lease, result: dict[str, Any], fields: dict[str, Any]) -> bool:
        """RUNNING -> DONE with ``result`` (and extra ``fields``); ``False`` if lease lost."""
        done = self.jobs.update_one(
            lease.fence,
            {
                "$set": {
                    "state": int(TrialState.DONE),
                    "result": result,
                    "lease_expires": None,
                    **fields,
                },
                "$currentDate": {"ended": True, "refresh_time": True, "mtime": True},
                "$inc": {"version": 1},
            },
        )
        return done.matched_count == 1

    @_retrying
    def fail(self, lease: Lease, error: dict[str, Any], fields: dict[str, Any]) -> bool:
        """RUNNING -> ERROR, recording ``error`` (type, message, traceback); ``False`` if lost."""
        failed = self.jobs.update_one(
            lease.fence,
            {
                "$set": {
                    "state": int(TrialState.ERROR),
                    "result": {"status": "fail", "failure": error.get("message", "")},
                    "error": error,
                    "misc.error": [error.get("type", ""), error.get("message", "")],
                    "lease_expires": None,
                    **fields,
                },
                "$currentDate": {"ended": True, "refresh_time": True, "mtime": True},
                "$inc": {"version": 1},
            },
        )
        return failed.matched_count == 1

    @_retrying
    def release(
        self,
        lease: Lease,
        outcome: AttemptOutcome,
        reason: str,
        *,
        max_attempts: int = 3,
        extra_filter: dict[str, Any] | None = None,
    ) -> TrialState | None:
        """Hand a RUNNING trial back. Returns its new state, or ``None`` if the lease was lost.

        ``LOST`` and ``CRASHED`` count toward ``max_attempts``; the release that reaches it marks
        the trial ERROR ("worker lost 3 times"). ``REQUEUED`` does not count.
        """
        counted = outcome is not AttemptOutcome.REQUEUED
        attempts = lease.doc.get("attempts", 0) + (1 if counted else 0)
        entry = {
            "attempt": lease.attempt,
            "owner": lease.owner,
            "outcome": outcome.value,
            "reason": reason,
            "started": lease.doc.get("book_time"),
            "at": utcnow(),
        }
        update: dict[str, Any] = {
            "$push": {"attempt_history": entry},
            "$set": {"attempts": attempts, "lease_expires": None},
            "$currentDate": {"refresh_time": True, "mtime": True},
            "$inc": {"version": 1},
        }
        if counted and attempts >= max_attempts:
            verb = "lost" if outcome is AttemptOutcome.LOST else "crashed"
            message = f"worker {verb} {attempts} times (last: {reason})"
            new_state = TrialState.ERROR
            update["$set"].update(
                state=int(new_state),
                result={"status": "fail", "failure": message},
                error={"type": f"Worker{verb.capitalize()}", "message": message},
            )
        else:
            new_state = TrialState.NEW
            update["$set"].update(state=int(new_state), owner=None)
        fence = {**lease.fence, **(extra_filter or {})}
        released = self.jobs.update_one(fence, update)
        return new_state if released.matched_count == 1 else None

    @_retrying
    def attach(self, lease: Lease, name: str, data: bytes) -> bool:
        """Store ``data`` in GridFS as the trial's attachment ``name`` (hyperopt's
        ``_attachments`` list), replacing an older one; ``False`` if the lease was lost."""
        doc = self.jobs.find_one(lease.fence, projection={"_attachments": 1})
        if doc is None:
            return False
        file_id = self.gfs.put(data, filename=f"{lease.id}_{name}", tid=lease.tid, name=name)
        old = [a for a in doc.get("_attachments", []) if a[0] == name]
        new = [a for a in doc.get("_attachments", []) if a[0] != name] + [[name, file_id]]
        updated = self.jobs.update_one(lease.fence, {"$set": {"_attachments": new}})
        stale = old if updated.matched_count == 1 else [[name, file_id]]
        for _name, stale_id in stale:
            self.delete_file(stale_id)
        return updated.matched_count == 1

    # -- trial contract: coordinator and tools --------------------------------------------------

    @_retrying
    def server_time(self) -> dt.datetime:
        """The database server's clock (naive UTC), as used for leases."""
        reply = self.client.admin.command("hello")
        now = reply.get("localTime")
        return now.replace(tzinfo=None) if now is not None else utcnow()

    def reap_expired(self, exp_key: str | None = None, *, max_attempts: int = 3) -> list[int]:
        """Release every RUNNING trial whose lease expired; returns the tids released."""
        now = self.server_time()
        query: dict[str, Any] = {"state": int(TrialState.RUNNING), "lease_expires": {"$lt": now}}
        if exp_key is not None:
            query["exp_key"] = exp_key
        reaped = []
        for doc in self._find(query):
            lease = Lease.from_doc(doc)
            reason = (
                f"lease expired at {doc['lease_expires']:%H:%M:%S} UTC: worker {lease.owner} "
                "stopped heartbeating"
            )
            limit = self._max_attempts(doc.get("exp_key"), max_attempts)
            state = self.release(
                lease,
                AttemptOutcome.LOST,
                reason,
                max_attempts=limit,
                extra_filter={"lease_expires": {"$lt": now}},
            )
            if state is not None:
                logger.warning(
                    "trial %s of %s: %s; now %s", lease.tid, lease.exp_key, reason, state.name
                )
                reaped.append(lease.tid)
        return reaped

    def _max_attempts(self, exp_key: str | None, default: int) -> int:
        exp = self.get_experiment(exp_key) if exp_key is not None else None
        return int(exp.get("max_attempts", default)) if exp else default

    @_retrying
    def _find(self, query: dict[str, Any], **kwargs: Any) -> list[dict[str, Any]]:
        return list(self.jobs.find(query, **kwargs))

    def find_trials(self, query: dict[str, Any], **kwargs: Any) -> list[dict[str, Any]]:
        """Read trial documents (a retried ``find``); readers never write."""
        return self._find(query, **kwargs)

    @_retrying
    def count(self, exp_key: str | None, states: Iterable[int]) -> int:
        query: dict[str, Any] = {"state": {"$in": [int(s) for s in states]}}
        if exp_key is not None:
            query["exp_key"] = exp_key
        return self.jobs.count_documents(query)

    @_retrying
    def count_by_state(self, exp_key: str | None) -> dict[TrialState, int]:
        match = {} if exp_key is None else {"exp_key": exp_key}
        rows = self.jobs.aggregate(
            [{"$match": match}, {"$group": {"_id": "$state", "n": {"$sum": 1}}}]
        )
        counts = dict.fromkeys(TrialState, 0)
        for row in rows:
            if row["_id"] in TrialState._value2member_map_:
                counts[TrialState(row["_id"])] = row["n"]
        return counts

    @_retrying
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

    # -- experiments ----------------------------------------------------------------------------

    @_retrying
    def get_experiment(self, exp_key: str) -> dict[str, Any] | None:
        return self.experiments.find_one({"_id": exp_key})

    @_retrying
    def list_experiments(self) -> list[dict[str, Any]]:
        return list(self.experiments.find({}, sort=[("created", 1)]))

    @_retrying
    def put_experiment(self, doc: dict[str, Any]) -> None:
        """Create or replace the experiment document ``doc`` (``_id`` is the exp key)."""
        self.experiments.replace_one({"_id": doc["_id"]}, doc, upsert=True)

    @_retrying
    def update_experiment(self, exp_key: str, fields: dict[str, Any]) -> None:
        self.experiments.update_one(
            {"_id": exp_key}, {"$set": fields, "$currentDate": {"updated": True}}
        )

    def cancel_experiment(self, exp_key: str, settle_s: float = 1.0) -> int:
        """Mark ``exp_key`` cancelled and its queued trials CANCEL; returns how many were queued.

        The queue is swept twice, ``settle_s`` apart: a coordinator checks the cancel flag only
        every quarter second, so it may still queue a trial just after the first sweep.
        """
        self.update_experiment(
            exp_key, {"status": ExperimentStatus.CANCELLED.value, "cancel_requested": True}
        )
        n = self._cancel_queued(exp_key)
        time.sleep(settle_s)
        return n + self._cancel_queued(exp_key)

    @_retrying
    def _cancel_queued(self, exp_key: str) -> int:
        cancelled = self.jobs.update_many(
            {"exp_key": exp_key, "state": int(TrialState.NEW)},
            {
                "$set": {"state": int(TrialState.CANCEL), "result": {"status": "new"}},
                "$currentDate": {"mtime": True, "refresh_time": True},
                "$inc": {"version": 1},
            },
        )
        return cancelled.modified_count

    # -- workers registry -----------------------------------------------------------------------

    @_retrying
    def worker_heartbeat(self, info: dict[str, Any], current_tid: int | None) -> None:
        """Upsert this worker's row in ``workers`` with ``last_seen`` in server time."""
        self.workers.update_one(
            {"_id": info["id"]},
            {
                "$set": {**info, "current_tid": current_tid, "state": "alive"},
                "$currentDate": {"last_seen": True},
                "$setOnInsert": {"started": utcnow()},
            },
            upsert=True,
        )

    @_retrying
    def worker_stopped(self, worker_id: str, reason: str) -> None:
        self.workers.update_one(
            {"_id": worker_id},
            {
                "$set": {"state": "stopped", "current_tid": None, "stop_reason": reason},
                "$currentDate": {"last_seen": True},
            },
        )

    @_retrying
    def list_workers(self, *, alive_only: bool = True) -> list[dict[str, Any]]:
        """Rows of the ``workers`` registry (all, or only those not marked stopped), newest
        ``last_seen`` first; staleness is the caller's call (compare with :meth:`server_time`)."""
        query = {"state": "alive"} if alive_only else {}
        return list(self.workers.find(query, sort=[("last_seen", -1)]))

    @_retrying
    def get_trial(self, exp_key: str, tid: int) -> dict[str, Any] | None:
        """One trial document of ``exp_key`` by ``tid``; ``None`` if there is none."""
        return self.jobs.find_one({"exp_key": exp_key, "tid": tid})

    @_retrying
    def live_workers(self, max_age_s: float, exp_key: str | None = None) -> list[dict[str, Any]]:
        """Workers that heartbeated in the last ``max_age_s`` seconds (server time); with
        ``exp_key``, only those serving that experiment or any experiment."""
        since = self.server_time() - dt.timedelta(seconds=max_age_s)
        query: dict[str, Any] = {"state": "alive", "last_seen": {"$gte": since}}
        if exp_key is not None:
            query["exp_key"] = {"$in": [None, exp_key]}
        return list(self.workers.find(query))

    # -- attachments ----------------------------------------------------------------------------

    @_retrying
    def put_file(self, data: bytes, filename: str, **metadata: Any) -> ObjectId:
        return self.gfs.put(data, filename=filename, **metadata)

    @_retrying
    def get_file(self, file_id: ObjectId) -> bytes:
        return self.gfs.get(file_id).read()

    @_retrying
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

    @_retrying
    def best_trial(
        self, exp_key: str | None, *, with_attachment: str | None = None
    ) -> dict[str, Any] | None:
        """The DONE trial of ``exp_key`` with the lowest finite ``ok`` loss (optionally only
        among trials that hold attachment ``with_attachment``); None if there is none."""
        query = {"exp_key": exp_key, "state": int(TrialState.DONE), "result.status": "ok"}
        rows = self.jobs.find(query, projection={"result.loss": 1, "_attachments": 1, "tid": 1})
        best: dict[str, Any] | None = None
        for row in rows:
            loss = row.get("result", {}).get("loss")
            if not isinstance(loss, (int, float)) or not math.isfinite(loss):
                continue
            names = {a[0] for a in row.get("_attachments", [])}
            if with_attachment is not None and with_attachment not in names:
                continue
            if best is None or (loss, row["tid"]) < (best["result"]["loss"], best["tid"]):
                best = row
        return None if best is None else self.jobs.find_one({"_id": best["_id"]})

    @_retrying
    def prune_attachments(
        self, exp_key: str | None, name: str, worse_than: float, *, keep_tid: int
    ) -> int:
        """Delete attachment ``name`` (and its GridFS file) from the DONE trials of ``exp_key``
        whose loss is above ``worse_than``, except ``keep_tid``; returns how many went.

        The one write to finished trials: it removes a superseded model, never a result. Each
        update is conditional on the attachment list it read, so concurrent prunes are safe."""
        query = {
            "exp_key": exp_key,
            "state": int(TrialState.DONE),
            "tid": {"$ne": keep_tid},
            "_attachments": {"$exists": True},
        }
        pruned = 0
        for row in self.jobs.find(query, projection={"result": 1, "_attachments": 1}):
            loss = row.get("result", {}).get("loss")
            if isinstance(loss, (int, float)) and math.isfinite(loss) and loss <= worse_than:
                continue
            old = row.get("_attachments", [])
            gone = [a for a in old if a[0] == name]
            if not gone:
                continue
            kept = [a for a in old if a[0] != name]
            updated = self.jobs.update_one(
                {"_id": row["_id"], "_attachments": old}, {"$set": {"_attachments": kept}}
            )
            if updated.matched_count == 1:
                for _name, file_id in gone:
                    self.delete_file(file_id)
                pruned += 1
        return pruned

    @_retrying
    def get_domain_blob(self, exp_key: str | None) -> bytes | None:
        """hyperopt's pickled ``FMinIter_Domain`` attachment for ``exp_key`` (trusted workers)."""
        query = {} if exp_key is None else {"exp_key": exp_key}
        try:
            return self.gfs.get_last_version(filename="FMinIter_Domain", **query).read()
        except gridfs.errors.NoFile:
            return None


def to_bson(value: Any) -> Any:
    """``value`` made storable and readable in the mongo shell: numpy scalars and arrays become
    Python numbers and lists, tuples become lists, keys become strings; anything else unknown
    becomes its ``repr``."""
    if value is None or isinstance(value, (bool, int, float, str, bytes, dt.datetime, ObjectId)):
        return value
    if isinstance(value, dict):
        return {str(k): to_bson(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_bson(v) for v in value]
    item = getattr(value, "item", None)  # numpy scalar
    if callable(item) and getattr(value, "shape", None) == ():
        return to_bson(item())
    tolist = getattr(value, "tolist", None)  # numpy array
    if callable(tolist):
        return to_bson(tolist())
    return repr(value)
