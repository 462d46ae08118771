"""EXPERIMENT (issue 19 diagnosis; not for production): ``secantusd-py`` with SecantusDB's
index catalog cached in memory.

SecantusDB 0.7.0b3 re-reads a collection's index catalog from WiredTiger (cursor scan + BSON
decode of every index entry) many times per operation: ``Storage._iter_indexes`` is called
~19 times for one fenced ``update_one`` and ~100 times for a batch of 8 upserts, under
``_all_indexes``, ``_partial_filters``, ``_index_options_map`` and the planner. This wrapper
memoizes ``_iter_indexes`` per (db, coll) and drops the whole memo on every catalog change
the Storage class exposes (create/drop/rename/collMod/index options). It ignores transaction
snapshots (a catalog change inside a multi-document transaction would be seen early), so it
only prices the upper bound of caching the catalog, e.g. as an upstream fix.

    .venv/bin/python bench/secantusd_catalog_cache.py <secantusd-py arguments>
"""

from __future__ import annotations

import functools
import sys
from typing import Any

from secantus import storage

_MUTATORS = (
    "create_index",
    "drop_index",
    "drop_all_indexes",
    "drop_collection",
    "drop_database",
    "rename_collection",
    "record_collmod",
    "set_index_expiry",
    "set_index_options",
    "_recover_pending_drops_locked",
)


def install() -> None:
    cls = storage.Storage
    orig_iter = cls._iter_indexes
    cache: dict[tuple[str, str], list[tuple[str, dict[str, Any], dict[str, Any]]]] = {}

    def _iter_indexes(self: Any, db: str, coll: str):  # type: ignore[no-untyped-def]
        key = (db, coll)
        rows = cache.get(key)
        if rows is None:
            rows = list(orig_iter(self, db, coll))
            cache[key] = rows
        # callers may mutate what they get: hand out copies of the option dicts
        return [(n, dict(k), dict(o)) for n, k, o in rows]

    cls._iter_indexes = _iter_indexes  # type: ignore[method-assign]

    for name in _MUTATORS:
        orig = getattr(cls, name, None)
        if orig is None:
            continue

        def make(orig: Any) -> Any:
            @functools.wraps(orig)
            def wrapper(self: Any, *a: Any, **kw: Any) -> Any:
                cache.clear()
                try:
                    return orig(self, *a, **kw)
                finally:
                    cache.clear()

            return wrapper

        setattr(cls, name, make(orig))


if __name__ == "__main__":
    install()
    from secantus.cli import main

    sys.argv[0] = "secantusd-py"
    sys.exit(main())
