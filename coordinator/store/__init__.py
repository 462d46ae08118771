"""The trial store: the one part of hyperfleet that talks to the database.

* :mod:`~coordinator.store.base` — the contract (:class:`TrialStoreBase`, :class:`Lease`) and
  its invariants; read it first.
* :mod:`~coordinator.store.mongo` — :class:`TrialStore` on MongoDB and :func:`connect`: the
  parts below, composed (``CONTRACT_PARTS`` says which part serves each contract method).
* :mod:`~coordinator.store.handles` — what the parts share: the client, its collections, the
  outage state and the server's clock.
* :mod:`~coordinator.store.connection` — client options, retries through outages, error
  translation, :func:`redact_uri`, :func:`ping`, :func:`create_user`.
* :mod:`~coordinator.store.inserts` — trial ids, batched inserts, deletion, the hot indexes.
* :mod:`~coordinator.store.leases`, :mod:`~coordinator.store.reaping`,
  :mod:`~coordinator.store.reads`, :mod:`~coordinator.store.experiments`,
  :mod:`~coordinator.store.registry`, :mod:`~coordinator.store.files`,
  :mod:`~coordinator.store.rungs`, :mod:`~coordinator.store.quarantine`,
  :mod:`~coordinator.store.views` — the contract's parts (objects, not mixins).
* :mod:`~coordinator.store.encoding` — :func:`to_bson`, :func:`utcnow`.

Names are imported lazily, so ``from coordinator.store import redact_uri`` (or ``ping``) does
not import hyperopt and pymongo's GridFS until a store is opened.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from coordinator.defaults import DB_NAME as DEFAULT_DB

if TYPE_CHECKING:
    from coordinator.store.base import Doc, DocId, Lease, TrialStoreBase
    from coordinator.store.connection import create_user, ping, redact_uri
    from coordinator.store.encoding import to_bson, utcnow
    from coordinator.store.mongo import TrialStore, connect

_LAZY = {
    "Doc": "base",
    "DocId": "base",
    "Lease": "base",
    "TrialStoreBase": "base",
    "create_user": "connection",
    "ping": "connection",
    "redact_uri": "connection",
    "to_bson": "encoding",
    "utcnow": "encoding",
    "TrialStore": "mongo",
    "connect": "mongo",
}

__all__ = [
    "DEFAULT_DB",
    "Doc",
    "DocId",
    "Lease",
    "TrialStore",
    "TrialStoreBase",
    "connect",
    "create_user",
    "ping",
    "redact_uri",
    "to_bson",
    "utcnow",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
