"""hyperopt's ``MongoJobs`` surface over a :class:`~coordinator.store.TrialStore`, on pymongo 4.

hyperopt 0.3.0's ``MongoJobs`` still calls pymongo-3 APIs that pymongo 4 removed (``insert``,
``update``, ``remove``, ``find_and_modify``, ``Cursor.count``). :class:`HyperoptJobs` is an
adapter: it keeps hyperopt's document protocol and method names, so hyperopt's own
``MongoTrials``, ``MongoWorker``, ``MongoCtrl`` and ``main_worker_helper`` run against a
hyperfleet database, and sends every write through the store (each stamps ``mtime`` with the
server's clock, as :mod:`coordinator.store.base` requires). The store itself has no hyperopt
class among its ancestors; only this module and :mod:`coordinator.trials` import
``hyperopt.mongoexp``.
"""

from __future__ import annotations

import copy
import logging
import threading
from typing import Any
from urllib.parse import quote_plus

import pymongo
from bson import ObjectId
from hyperopt.mongoexp import MongoJobs, OperationFailure, parse_url

from coordinator import defaults
from coordinator.errors import HyperfleetError, TrialWriteRefused
from coordinator.states import TrialState
from coordinator.store import Lease, TrialStore, connect
from coordinator.store.connection import retrying

logger = logging.getLogger(__name__)


def store_from(arg: TrialStore | MongoJobs | str, db: str = defaults.DB_NAME) -> TrialStore:
    """The store behind ``arg``: a store, a :class:`HyperoptJobs`, a ``mongodb://`` URI, or
    hyperopt's own ``mongo://host:port/db/jobs`` connection string (its database wins)."""
    if isinstance(arg, TrialStore):
        return arg
    if isinstance(arg, HyperoptJobs):
        return arg.store
    if isinstance(arg, str) and arg.startswith("mongo://"):
        return connect(*_mongodb_uri(arg), wait=True)
    if isinstance(arg, str):
        return connect(arg, db, wait=True)
    raise TypeError(f"expected a TrialStore, HyperoptJobs or connection string, got {arg!r}")


def _mongodb_uri(conn_str: str) -> tuple[str, str]:
    """hyperopt's ``mongo://[user[:pw]@]host:port/db/jobs[?authSource=adb]`` as a
    ``mongodb://`` URI and the database name."""
    # hyperopt 0.3.0's parse_url gives 8 fields (0.2.x gave 7): take them by position
    _protocol, user, password, host, port, db_name, collection, *rest = parse_url(conn_str)
    if collection != "jobs":
        raise ValueError(
            f"{conn_str!r}: hyperfleet keeps trials in the 'jobs' collection, not {collection!r}"
        )
    auth = ""
    if user:
        auth = quote_plus(user) + (f":{quote_plus(password)}" if password else "") + "@"
    auth_source = rest[0] if rest else None
    query = f"?authSource={quote_plus(auth_source)}" if auth_source else ""
    return f"mongodb://{auth}{host}:{port}/{query}", db_name


def owner_id(host_id: Any) -> str:
    """``host_id`` as the string ``owner`` hyperfleet's schema requires. hyperopt's workers pass
    tuples (``MongoWorker.run_one``'s default is ``("host:pid",)``, its tests pass
    ``("hostname", 0)``): stored as they are, they become BSON arrays, which every hyperfleet
    reader refuses (:func:`coordinator.rules.trial_problem`), so a search would never see
    those trials finish. Parts are joined with ``:`` (``"host:pid"``, ``"hostname:0"``)."""
    if isinstance(host_id, (tuple, list)):
        owner = ":".join(str(part) for part in host_id)
    else:
        owner = "" if host_id is None else str(host_id)
    if not owner:
        raise ValueError(f"reserve needs a non-empty host id, got {host_id!r}")
    return owner


class HyperoptJobs(MongoJobs):
    """hyperopt's ``MongoJobs`` over ``store`` (see the module docstring).

    hyperopt's worker renews no lease, and a trial whose writer renews none hangs the search
    when that writer dies (the reaper gives such trials a long grace only: it cannot tell a
    dead writer from a slow trial). So :meth:`reserve` gives the trial a real lease of
    ``lease_s`` and renews it from a daemon thread every ``heartbeat_s`` while the trial is
    RUNNING under this claim: a live hyperopt worker keeps its trial however long it runs; a
    dead one (the thread dies with its process) loses it once the lease runs out, as a
    hyperfleet worker does.
    """

    def __init__(
        self,
        store: TrialStore,
        *,
        lease_s: float = defaults.LEASE_S,
        heartbeat_s: float = defaults.HEARTBEAT_S,
    ) -> None:
        super().__init__(store.db, store.jobs, store.gfs, store.client, None, "spec")
        self.store = store
        self.lease_s = lease_s
        self.heartbeat_s = heartbeat_s
        self._keepers: dict[Any, LeaseKeeper] = {}  #: by ``_id``: the claims this object renews

    @classmethod
    def new_from_connection_str(
        cls, conn_str: str, gfs_coll: str = "fs", config_name: str = "spec"
    ) -> HyperoptJobs:
        return cls(store_from(conn_str))

    def __len__(self) -> int:
        return self.store.jobs.count_documents({})

    def create_jobs_indexes(self) -> None:
        self.store.create_jobs_indexes()

    def create_drivers_indexes(self) -> None:
        """hyperopt's unused ``drivers`` collection is not created."""

    def insert(self, job: dict[str, Any]) -> dict[str, Any]:
        """hyperopt's single insert: a copy of ``job`` with its ``_id``."""
        doc = copy.deepcopy(job)
        try:
            self.store.insert_trials([doc])
        except TrialWriteRefused as e:
            raise OperationFailure(str(e)) from e
        return doc

    def delete(self, job: dict[str, Any]) -> None:
        _delete_one(self.store, job["_id"])

    def delete_all(self, cond: dict[str, Any] | None = None, *, exp_key: str | None = None) -> None:
        self.store.delete_all(cond, exp_key=exp_key)

    def reserve(
        self, host_id: Any, cond: dict[str, Any] | None = None, exp_key: str | None = None
    ) -> dict[str, Any] | None:
        """Claim one NEW trial for ``host_id`` as stock ``reserve`` does (owner, ``book_time``,
        ``refresh_time``, RUNNING), in one ``find_one_and_update``; ``None`` when none is
        queued. Unlike stock's, the claim also stamps ``mtime``, takes the oldest trial,
        records the owner as a string (:func:`owner_id`), counts the ``attempt`` and takes a
        lease that a thread renews while the trial runs (see the class docstring)."""
        query = dict(cond or {})
        if exp_key is not None:
            query["exp_key"] = exp_key
        if query.get("owner") is not None:
            raise ValueError("refusing to reserve owned job")
        query.update(owner=None, state=int(TrialState.NEW))
        # a token that finds the claim again if its reply is lost: a retry must not claim a
        # second trial and orphan the first (which has no lease: nobody would reap it)
        claimed = _claim(self.store, query, owner_id(host_id), ObjectId(), self.lease_s, [])
        if claimed is not None:
            keeper = LeaseKeeper(self.store, claimed, self.lease_s, self.heartbeat_s)
            self._keepers[claimed["_id"]] = keeper
            keeper.start()
        return claimed

    def update(
        self,
        doc: dict[str, Any],
        dct: dict[str, Any],
        collection: Any = None,
        do_sanity_checks: bool = True,
    ) -> dict[str, Any]:
        """Set ``dct`` on ``doc`` if its ``version`` did not move (hyperopt's optimistic update);
        ``doc`` is updated in place and returned. A document that moved raises hyperopt's
        ``OperationFailure`` (with ``do_sanity_checks``), as stock does."""
        dct = {k: v for k, v in copy.deepcopy(dct).items() if k not in ("_id", "version")}
        if dct.get("state", TrialState.RUNNING) != TrialState.RUNNING:  # the trial ended
            dct["lease_expires"] = None
            keeper = self._keepers.pop(doc["_id"], None)
            if keeper is not None:
                keeper.stop()
        query: dict[str, Any] = {"_id": doc["_id"]}
        if "version" in doc:
            query["version"] = doc["version"]
        dct["version"] = doc.get("version", 0) + 1
        matched = _set(
            self.store, self.store.jobs if collection is None else collection, query, dct
        )
        if do_sanity_checks and not matched:
            raise OperationFailure(f"updated doc not found (concurrent change?): {query}")
        doc.update(dct)
        return doc


# the store's retries through outages (they share its outage budget), for the adapter's writes


@retrying
def _delete_one(store: TrialStore, _id: Any) -> None:
    store.jobs.delete_one({"_id": _id})


@retrying
def _claim(
    store: TrialStore,
    query: dict[str, Any],
    owner: str,
    token: ObjectId,
    lease_s: float,
    tries: list[int],
) -> dict[str, Any] | None:
    tries.append(1)
    if len(tries) > 1:  # a retry: did an earlier try take effect, its reply lost?
        claimed = store.jobs.find_one({"claim_token": token, "owner": owner})
        if claimed is not None:
            return claimed
    return store.jobs.find_one_and_update(
        query,
        [
            {
                "$set": {
                    "owner": {"$literal": owner},
                    "state": int(TrialState.RUNNING),
                    "attempt": {"$add": [{"$ifNull": ["$attempt", 0]}, 1]},
                    "lease_expires": {"$add": ["$$NOW", int(lease_s * 1000)]},
                    "lease_s": lease_s,
                    "claim_token": {"$literal": token},
                    "book_time": "$$NOW",
                    "refresh_time": "$$NOW",
                    "mtime": "$$NOW",
                }
            }
        ],
        sort=[("tid", 1)],
        return_document=pymongo.ReturnDocument.AFTER,
    )


class LeaseKeeper:
    """Renews the lease of one trial claimed through :meth:`HyperoptJobs.reserve` every
    ``interval_s`` (on the server's clock, fenced on the claim's owner and attempt) until the
    trial leaves RUNNING or this claim, or :meth:`stop`. A daemon thread: it dies with the
    worker's process, and then the lease runs out."""

    def __init__(self, store: TrialStore, doc: dict[str, Any], lease_s: float, interval_s: float):
        self.store = store
        self.lease = Lease.from_doc({**doc, "tid": doc.get("tid")})
        self.lease_s = lease_s
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"hyperopt-lease-{self.lease.tid}", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                if not self.store.heartbeat(self.lease, self.lease_s):
                    return  # ended, or reaped: nothing of ours to renew
            except (HyperfleetError, pymongo.errors.PyMongoError) as e:
                logger.warning(
                    "tid %s: could not renew its lease (%s); it runs out in %g s",
                    self.lease.tid,
                    e,
                    self.lease_s,
                )
                return


@retrying
def _set(store: TrialStore, collection: Any, query: dict[str, Any], dct: dict[str, Any]) -> bool:
    result = collection.update_one(query, {"$set": dct, "$currentDate": {"mtime": True}})
    return result.matched_count == 1
