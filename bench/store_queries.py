"""What the store's hot-path queries cost on SecantusDB at 500 and 5,000 trials.

    .venv/bin/python bench/store_queries.py

The "before" rows are the query shapes hyperfleet used before the issue-7 fixes; the "after" rows
are the ones it uses now. Median of 15 calls, in ms, against an in-memory embedded server.
"""

from __future__ import annotations

import datetime as dt
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

from bson import ObjectId

from coordinator.server import EmbeddedServer
from coordinator.store import connect, utcnow


def _trials(n: int, queued: int) -> list[dict[str, Any]]:
    now = utcnow()
    done = [
        {
            "_id": ObjectId(),
            "exp_key": "e",
            "tid": i,
            "state": 2,
            "space": "quadratic",
            "owner": "w",
            "mtime": now - dt.timedelta(seconds=(n - i) * 0.01),
            "result": {"loss": float(i), "status": "ok"},
            "misc": {"tid": i, "vals": {"x": [0.1]}, "idxs": {"x": [i]}},
            "spec": None,
        }
        for i in range(n - queued)
    ]
    new = [
        {
            "_id": ObjectId(),
            "exp_key": "e",
            "tid": n - queued + i,
            "state": 0,
            "space": "quadratic",
            "owner": None,
            "misc": {},
            "result": {"status": "new"},
        }
        for i in range(queued)
    ]
    return done + new


def _median_ms(fn: Callable[[], Any], k: int = 15) -> float:
    times = []
    for _ in range(k):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return round(statistics.median(times) * 1000, 2)


def _cases(jobs: Any, n: int) -> list[tuple[str, Callable[[], Any]]]:
    jobs.delete_many({})
    docs = _trials(n, 8)
    jobs.insert_many(docs)
    recent = [d["_id"] for d in docs[n - 208 : n - 8]]
    watched = [d["_id"] for d in docs[n - 12 : n - 8]]
    since = utcnow() - dt.timedelta(seconds=2)
    new = {"exp_key": "e", "state": 0}
    cases: list[tuple[str, Callable[[], Any]]] = [
        (
            "before: reserve candidates (space $exists, sort tid, limit 4)",
            lambda: list(
                jobs.find(
                    {**new, "space": {"$exists": True}},
                    {"_id": 1},
                    limit=4,
                    sort=[("tid", 1)],
                )
            ),
        ),
        (
            "after:  reserve candidates (space checked client-side)",
            lambda: list(jobs.find(new, {"_id": 1, "space": 1}, limit=4, sort=[("tid", 1)])),
        ),
        (
            "before: refresh, finished by mtime window with $nin of 200 recent ids",
            lambda: list(
                jobs.find(
                    {
                        "exp_key": "e",
                        "state": {"$in": [2, 4]},
                        "mtime": {"$gte": since},
                        "_id": {"$nin": recent},
                    }
                )
            ),
        ),
        (
            "after:  refresh, newly finished by _id (4 watched ids)",
            lambda: list(jobs.find({"_id": {"$in": watched}, "state": {"$in": [2, 4]}})),
        ),
        (
            "both:   refresh, unfinished trials",
            lambda: list(jobs.find({"exp_key": "e", "state": {"$in": [0, 1]}})),
        ),
        (
            "before: count DONE in the database (fmin asks every poll)",
            lambda: jobs.count_documents({"exp_key": "e", "state": {"$in": [2]}}),
        ),
        (
            "before: count_by_state aggregate (coordinator tick, progress line)",
            lambda: list(
                jobs.aggregate(
                    [
                        {"$match": {"exp_key": "e"}},
                        {"$group": {"_id": "$state", "n": {"$sum": 1}}},
                    ]
                )
            ),
        ),
    ]
    return cases


def main() -> None:
    print(f"load {os.getloadavg()}")
    with EmbeddedServer(":memory:") as server:
        store = connect(server.uri)
        store.create_jobs_indexes()
        jobs = store.jobs
        for n in (500, 5000):
            for name, fn in _cases(jobs, n):
                print(f"{n:>5} trials  {_median_ms(fn):>8.2f} ms  {name}")
    print(f"load {os.getloadavg()}")


if __name__ == "__main__":
    main()
