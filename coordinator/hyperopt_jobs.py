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
from typing import Any

import pymongo
from hyperopt.mongoexp import MongoJobs, OperationFailure, parse_url

from coordinator import defaults
from coordinator.errors import TrialWriteRefused
from coordinator.states import TrialState
from coordinator.store import TrialStore, connect
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
        _protocol, user, password, host, port, db_name, _collection = parse_url(arg)
        auth = f"{user}:{password}@" if user else ""
        return connect(f"mongodb://{auth}{host}:{port or 27017}/", db_name, wait=True)
    if isinstance(arg, str):
        return connect(arg, db, wait=True)
    raise TypeError(f"expected a TrialStore, HyperoptJobs or connection string, got {arg!r}")


class HyperoptJobs(MongoJobs):
    """hyperopt's ``MongoJobs`` over ``store`` (see the module docstring)."""

    def __init__(self, store: TrialStore) -> None:
        super().__init__(store.db, store.jobs, store.gfs, store.client, None, "spec")
        self.store = store

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
        queued. Unlike stock's, the claim also stamps ``mtime`` and takes the oldest trial."""
        query = dict(cond or {})
        if exp_key is not None:
            query["exp_key"] = exp_key
        if query.get("owner") is not None:
            raise ValueError("refusing to reserve owned job")
        query.update(owner=None, state=int(TrialState.NEW))
        return _claim(self.store, query, host_id)

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
def _claim(store: TrialStore, query: dict[str, Any], host_id: Any) -> dict[str, Any] | None:
    return store.jobs.find_one_and_update(
        query,
        {
            "$set": {"owner": host_id, "state": int(TrialState.RUNNING)},
            "$currentDate": {"book_time": True, "refresh_time": True, "mtime": True},
        },
        sort=[("tid", 1)],
        return_document=pymongo.ReturnDocument.AFTER,
    )


@retrying
def _set(store: TrialStore, collection: Any, query: dict[str, Any], dct: dict[str, Any]) -> bool:
    result = collection.update_one(query, {"$set": dct, "$currentDate": {"mtime": True}})
    return result.matched_count == 1
