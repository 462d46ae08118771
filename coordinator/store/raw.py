"""Test and fuzz helper: raw rows in any of hyperfleet's collections.

:func:`insert_raw_rows` writes documents exactly as given (no checks, no ``mtime``), as another
program sharing the database might, so that tests can prove readers survive junk in the
``workers`` and ``experiments`` collections (jobs have ``TrialStore.insert_raw_documents``).
Never used by hyperfleet itself.
"""

from __future__ import annotations

from typing import Any

_COLLECTIONS = ("jobs", "workers", "experiments")


def insert_raw_rows(store: Any, collection: str, docs: list[dict[str, Any]]) -> list[Any]:
    """Insert ``docs`` into ``collection`` (``jobs``, ``workers`` or ``experiments``) of
    ``store`` unchanged; a row without ``_id`` gets the driver's ObjectId. Returns the ``_id``s.
    For tests and fuzzing only."""
    if collection not in _COLLECTIONS:
        raise ValueError(f"unknown collection {collection!r}: one of {', '.join(_COLLECTIONS)}")
    if not docs:
        return []
    return list(getattr(store, collection).insert_many(docs, ordered=False).inserted_ids)
