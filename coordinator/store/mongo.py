"""The MongoDB trial store: :class:`TrialStore` and :func:`connect`.

:class:`TrialStore` implements the contract of :class:`~coordinator.store.base.TrialStoreBase`,
one idea per part: new trials and ids (:mod:`~coordinator.store.inserts`), the lease protocol
(:mod:`~coordinator.store.leases`),
reaping (:mod:`~coordinator.store.reaping`), documents nobody can use
(:mod:`~coordinator.store.quarantine`), named reads (:mod:`~coordinator.store.reads`),
experiments (:mod:`~coordinator.store.experiments`), the worker registry
(:mod:`~coordinator.store.registry`) and attachments (:mod:`~coordinator.store.files`).
The parts are separate objects (:class:`StoreParts`), composed here: none inherits from
another, and each is given the parts it needs when it is built. The store is the only place in
hyperfleet that holds a pymongo client. No hyperopt class is among its ancestors: hyperopt's
``MongoJobs`` surface is an adapter over it (:class:`coordinator.hyperopt_jobs.HyperoptJobs`).
"""

from __future__ import annotations

import abc
import dataclasses
import datetime as dt
from typing import Any

import pymongo

from coordinator import defaults
from coordinator.store.base import TrialStoreBase
from coordinator.store.checkpoints import Checkpoints
from coordinator.store.connection import (
    check_names,
    check_reachable,
    open_client,
    outage_budget,
    redact_uri,
    wait_until_reachable,
)
from coordinator.store.experiments import AttemptLimits, Experiments
from coordinator.store.files import Attachments
from coordinator.store.handles import MongoHandles
from coordinator.store.inserts import TrialInserts
from coordinator.store.leases import LeaseWrites
from coordinator.store.quarantine import Quarantine
from coordinator.store.reads import TrialReads
from coordinator.store.reaping import Reaping
from coordinator.store.registry import WorkerRegistry
from coordinator.store.rungs import RungRecords
from coordinator.store.uploads import UnfinishedUploads
from coordinator.store.views import TrialViews


@dataclasses.dataclass(frozen=True)
class StoreParts:
    """The parts a :class:`TrialStore` is made of, one idea each."""

    inserts: TrialInserts
    limits: AttemptLimits
    quarantine: Quarantine
    leases: LeaseWrites
    reaping: Reaping
    reads: TrialReads
    views: TrialViews
    experiments: Experiments
    registry: WorkerRegistry
    files: Attachments
    rungs: RungRecords
    checkpoints: Checkpoints
    uploads: UnfinishedUploads


#: which part serves each method of the contract (:class:`TrialStoreBase`); the store's
#: methods are these parts' methods (``test_every_contract_method_is_served_by_one_part``)
CONTRACT_PARTS: dict[str, tuple[str, ...]] = {
    "inserts": ("allocate_tids", "insert_trials", "delete_all"),
    "limits": ("attempt_limit",),
    "quarantine": ("quarantine_trial",),
    "leases": (
        "reserve_trial",
        "reserve_trials",
        "end_trials",
        "release_held",
        "cancel_held",
        "heartbeat",
        "record_epoch",
        "finish",
        "fail",
        "release",
    ),
    "reaping": ("reap_expired",),
    "reads": (
        "trials",
        "changed_trials",
        "trial_outcomes",
        "get_trial",
        "count",
        "count_by_state",
        "queued_exp_keys",
        "trial_exp_keys",
    ),
    "views": ("view_trials",),
    "experiments": (
        "get_experiment",
        "list_experiments",
        "cancel_requested",
        "create_experiment",
        "replace_experiment",
        "finish_experiment",
        "cancel_queued",
        "cancel_experiment",
        "renew_coordinator",
        "release_coordinator",
        "annotate_experiment",
    ),
    "registry": ("worker_heartbeat", "worker_stopped", "list_workers", "live_workers"),
    "files": (
        "attach",
        "get_attachment",
        "best_trial",
        "drop_superseded_models",
        "get_domain_blob",
        "experiment_file_names",
        "has_experiment_file",
        "read_experiment_file",
        "write_experiment_file",
        "delete_experiment_file",
    ),
    "rungs": (
        "record_rung",
        "rung_values",
        "promote_paused",
        "settle_pause",
        "finished_curves",
    ),
    "checkpoints": ("save_checkpoint", "load_checkpoint", "resume_at", "drop_checkpoints"),
    "uploads": ("drop_orphan_chunks",),
}


def _served_by(part: str, name: str) -> Any:
    """The store's method ``name``: the same method of its part ``part``."""

    def method(self: TrialStore, *args: Any, **kwargs: Any) -> Any:
        return getattr(getattr(self.parts, part), name)(*args, **kwargs)

    method.__name__ = method.__qualname__ = name
    method.__doc__ = getattr(TrialStoreBase, name).__doc__
    return method


def _serve_contract(cls: type[TrialStore]) -> type[TrialStore]:
    for part, names in CONTRACT_PARTS.items():
        for name in names:
            setattr(cls, name, _served_by(part, name))
    abc.update_abstractmethods(cls)
    return cls


@_serve_contract
class TrialStore(TrialStoreBase):
    """The trial store on MongoDB (any server speaking its wire protocol, e.g. SecantusDB).

    Collections: ``jobs`` (trials, hyperopt's protocol), ``job_ids`` (the tid counter),
    ``experiments``, ``workers``, and GridFS ``fs`` (attachments); see ``docs/schema.md``.
    The store is composed of :class:`StoreParts` built on one :class:`MongoHandles`; each
    method of the contract is its part's (:data:`CONTRACT_PARTS`). The raw handles (``db``,
    ``jobs``, ...) stay reachable for adapters and tests.
    """

    def __init__(
        self,
        client: pymongo.MongoClient,
        db_name: str = defaults.DB_NAME,
        *,
        safe_uri: str = "",
        outage_s: float = defaults.OUTAGE_S,
    ) -> None:
        mongo = MongoHandles(client, db_name, safe_uri=safe_uri, outage_s=outage_s)
        self.mongo = mongo
        self.client, self.db_name, self.safe_uri = client, db_name, safe_uri
        self.db, self.jobs, self.gfs = mongo.db, mongo.jobs, mongo.gfs
        self.experiments, self.workers = mongo.experiments, mongo.workers
        experiments = Experiments(mongo)
        limits = AttemptLimits(mongo, experiments)
        quarantine = Quarantine(mongo, experiments)
        leases = LeaseWrites(mongo, limits, quarantine)
        self.parts = StoreParts(
            inserts=TrialInserts(mongo),
            limits=limits,
            quarantine=quarantine,
            leases=leases,
            reaping=Reaping(mongo, leases, limits, quarantine),
            reads=TrialReads(mongo),
            views=TrialViews(mongo),
            experiments=experiments,
            registry=WorkerRegistry(mongo),
            files=Attachments(mongo),
            rungs=RungRecords(mongo),
            checkpoints=Checkpoints(mongo),
            uploads=UnfinishedUploads(mongo),
        )

    @property
    def outage_s(self) -> float:
        return self.mongo.outage_s

    def server_time(self) -> dt.datetime:
        return self.mongo.server_time()

    def create_jobs_indexes(self) -> None:
        """The indexes every hot query needs (once per store object)."""
        self.parts.inserts.create_jobs_indexes()

    @property
    def rungs(self) -> Any:
        """The ``rungs`` collection (raw; rules use :meth:`record_rung` and friends)."""
        return self.parts.rungs.rungs

    def close(self) -> None:
        self.client.close()

    def drop_database(self) -> None:
        """Delete this store's whole database (tests and throwaway runs only)."""
        self.client.drop_database(self.db_name)
        self.parts.inserts.forget_indexes()
        self.parts.limits.forget()


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
