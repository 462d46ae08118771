"""The MongoDB trial store: :class:`TrialStore` and :func:`connect`.

:class:`TrialStore` implements the contract of :class:`~coordinator.store.base.TrialStoreBase`,
one idea per part: new trials and ids (:mod:`~coordinator.store.inserts`), the lease protocol
(:mod:`~coordinator.store.leases`),
reaping (:mod:`~coordinator.store.reaping`), documents nobody can use
(:mod:`~coordinator.store.quarantine`), named reads (:mod:`~coordinator.store.reads`),
experiments (:mod:`~coordinator.store.experiments`), the worker registry
(:mod:`~coordinator.store.registry`) and attachments (:mod:`~coordinator.store.files`).
It is the only place in hyperfleet that holds a pymongo client. No hyperopt class is among its
ancestors: hyperopt's ``MongoJobs`` surface is an adapter over it
(:class:`coordinator.hyperopt_jobs.HyperoptJobs`).
"""

from __future__ import annotations

from typing import Any

import gridfs
import pymongo

from coordinator import defaults
from coordinator.store.base import TrialStoreBase
from coordinator.store.connection import (
    check_names,
    check_reachable,
    open_client,
    outage_budget,
    redact_uri,
    wait_until_reachable,
)
from coordinator.store.experiments import Experiments
from coordinator.store.files import Attachments
from coordinator.store.inserts import TrialInserts
from coordinator.store.leases import LeaseWrites
from coordinator.store.quarantine import Quarantine
from coordinator.store.reads import TrialReads
from coordinator.store.reaping import Reaping
from coordinator.store.registry import WorkerRegistry
from coordinator.store.rungs import RungRecords
from coordinator.store.views import TrialViews


class TrialStore(
    TrialInserts,
    LeaseWrites,
    Quarantine,
    Reaping,
    TrialReads,
    TrialViews,
    Experiments,
    WorkerRegistry,
    Attachments,
    RungRecords,
    TrialStoreBase,
):
    """The trial store on MongoDB (any server speaking its wire protocol, e.g. SecantusDB).

    Collections: ``jobs`` (trials, hyperopt's protocol), ``job_ids`` (the tid counter),
    ``experiments``, ``workers``, and GridFS ``fs`` (attachments); see ``docs/schema.md``.
    """

    def __init__(
        self,
        client: pymongo.MongoClient,
        db_name: str = defaults.DB_NAME,
        *,
        safe_uri: str = "",
        outage_s: float = defaults.OUTAGE_S,
    ) -> None:
        db = client[db_name]
        self.db = db
        self.jobs = db["jobs"]
        self.gfs = gridfs.GridFS(db, collection="fs")
        self.client = client
        self.db_name = db_name
        self.safe_uri = safe_uri
        self.outage_s = outage_s
        self.experiments = db["experiments"]
        self.workers = db["workers"]
        self._indexed = False
        self._limits: dict[str, tuple[float, dict[str, Any]]] = {}
        self._unusable: set[Any] = set()  #: ``_id``s of documents nobody can use (Quarantine)

    def close(self) -> None:
        self.client.close()

    def drop_database(self) -> None:
        """Delete this store's whole database (tests and throwaway runs only)."""
        self.client.drop_database(self.db_name)
        self._indexed = False
        self._limits.clear()


def connect(
    uri: str,
    db: str = defaults.DB_NAME,
    *,
    timeout_s: float = 5.0,
    outage_s: float | None = None,
    check: bool = True,
    wait: bool = False,
) -> TrialStore:
    """Open a :class:`TrialStore` on ``uri`` (any standard ``mongodb://`` or ``mongodb+srv://``).

    With ``check`` the server must answer ``ping`` within ``timeout_s``; otherwise a clear
    :class:`~coordinator.errors.StoreUnavailable`, :class:`~coordinator.errors.AuthError` or
    :class:`~coordinator.errors.ConfigError` is raised. ``outage_s`` (default:
    $HYPERFLEET_OUTAGE_S or ``defaults.OUTAGE_S``) is how long operations retry while the server
    is unreachable before giving up. With ``wait`` (long-running processes: workers,
    coordinators) the check itself waits up to ``outage_s`` for a server that does not answer
    yet, saying so at once; inspection commands fail fast instead.
    """
    safe = redact_uri(uri)
    if outage_s is None:
        outage_s = outage_budget()
    check_names(uri, db)
    client = open_client(uri, timeout_s)
    store = TrialStore(client, db, safe_uri=safe, outage_s=outage_s)
    if check:
        try:
            if wait:
                wait_until_reachable(client, db, safe, timeout_s, outage_s)
            else:
                check_reachable(client, db, safe, timeout_s)
        except BaseException:
            client.close()
            raise
    return store
