"""Test-only access to the store's collections: writes and reads that hyperfleet itself never
makes, so they stay out of the store contract (a future backend need not carry them).

The writes put documents in exactly as given (no checks, no ``mtime``), as another program
sharing the database might, so tests can prove that readers survive junk; the reads look at
what the store wrote without going through the contract's named reads.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from coordinator.states import TrialState
from coordinator.store import TrialStore

_COLLECTIONS = ("jobs", "workers", "experiments")


def insert_raw_rows(store: TrialStore, collection: str, docs: list[dict[str, Any]]) -> list[Any]:
    """Insert ``docs`` into ``collection`` (``jobs``, ``workers`` or ``experiments``) unchanged;
    a row without ``_id`` gets the driver's ObjectId. Returns the ``_id``s."""
    if collection not in _COLLECTIONS:
        raise ValueError(f"unknown collection {collection!r}: one of {', '.join(_COLLECTIONS)}")
    if not docs:
        return []
    return list(getattr(store, collection).insert_many(docs, ordered=False).inserted_ids)


def insert_raw_documents(store: TrialStore, docs: list[dict[str, Any]]) -> list[Any]:
    """Insert trial documents into ``jobs`` exactly as given; returns their ``_id``s."""
    return insert_raw_rows(store, "jobs", docs)


def _states(states: Iterable[TrialState | int]) -> dict[str, Any]:
    return {"$in": [int(s) for s in states]}


def unfinished_trials(store: TrialStore, exp_key: str | None) -> list[dict[str, Any]]:
    """The NEW and RUNNING trials of ``exp_key`` (every experiment if ``None``), any order."""
    query: dict[str, Any] = {"state": _states([TrialState.NEW, TrialState.RUNNING])}
    if exp_key is not None:
        query["exp_key"] = exp_key
    return list(store.jobs.find(query))


def trials_by_ids(
    store: TrialStore, ids: Iterable[Any], states: Iterable[TrialState | int] | None = None
) -> list[dict[str, Any]]:
    """The trials with these ``_id``s (only those in ``states``, if given), any order."""
    query: dict[str, Any] = {"_id": {"$in": list(ids)}}
    if states is not None:
        query["state"] = _states(states)
    return list(store.jobs.find(query))


def rung_records(store: TrialStore, exp_key: str) -> list[dict[str, Any]]:
    """Every early-stopping rung record of ``exp_key``, by bracket, rung, then tid."""
    rows = list(store.rungs.find({"exp_key": exp_key}))
    return sorted(rows, key=lambda r: (r.get("bracket", 0), r.get("rung", 0), r.get("tid")))
