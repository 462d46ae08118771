"""What the store's hot-path operations cost on SecantusDB at 500 and 5,000 trials.

    .venv/bin/python bench/store_queries.py
    .venv/bin/python bench/store_queries.py --sizes 20 --calls 3    # a smoke run

Each row is one named store operation (:mod:`coordinator.store.base`) as the coordinator or a
worker calls it, against an experiment of ``n`` finished trials plus 8 queued ones. Median of 15
calls, in ms, against an in-memory embedded server. A row whose store method is gone prints
``n/a`` and the missing name. (Until issue 14 this script timed raw query
shapes, old against new; docs/benchmarks.md keeps those numbers.)
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.raw_store: old reads

from coordinator.server import EmbeddedServer  # noqa: E402
from coordinator.states import AttemptOutcome, TrialState  # noqa: E402
from coordinator.store import TrialStore, connect, utcnow  # noqa: E402
from tests import raw_store  # noqa: E402

_QUEUED = 8


def _trials(n: int, queued: int) -> list[dict[str, Any]]:
    now = utcnow()
    done = [
        {
            "exp_key": "e",
            "tid": i,
            "state": int(TrialState.DONE),
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
            "exp_key": "e",
            "tid": n - queued + i,
            "state": int(TrialState.NEW),
            "space": "quadratic",
            "owner": None,
            # a usable trial: the reserve refuses documents whose misc.tid is not their tid
            "misc": {"tid": n - queued + i, "vals": {"x": [0.1]}, "idxs": {"x": [n - queued + i]}},
            "result": {"status": "new"},
            "spec": None,
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


def _reserve_and_requeue(store: TrialStore) -> None:
    lease = store.reserve_trial("bench", exp_key="e")
    assert lease is not None
    store.release(lease, AttemptOutcome.REQUEUED, "bench")


def _cases(store: TrialStore, n: int) -> list[tuple[str, Callable[[], Any]]]:
    store.delete_all(exp_key="e")
    store.insert_trials(_trials(n, _QUEUED))
    watched = [d["_id"] for d in store.trials("e", [TrialState.DONE])[-4:]]
    time.sleep(0.005)
    since = store.server_time()  # the queue's trials are written again below (reserve rows)
    for _ in range(4):
        _reserve_and_requeue(store)
    finished = [TrialState.DONE, TrialState.CANCEL]
    return [
        ("worker: reserve_trial + release (requeue)", lambda: _reserve_and_requeue(store)),
        (
            "coordinator: changed_trials, the queue's recent writes (every refresh, issue 16)",
            lambda: store.changed_trials("e", since),
        ),
        (
            "before issue 16: unfinished_trials (refresh)",
            lambda: raw_store.unfinished_trials(store, "e"),
        ),
        (
            "before issue 16: trials_by_ids, 4 newly finished",
            lambda: raw_store.trials_by_ids(store, watched),
        ),
        ("coordinator: count NEW", lambda: store.count("e", [TrialState.NEW])),
        ("coordinator: reap_expired (nothing expired)", lambda: store.reap_expired("e")),
        ("full refresh: trials DONE/CANCEL", lambda: store.trials("e", finished)),
        ("status: count_by_state", lambda: store.count_by_state("e")),
        ("status: trial_outcomes", lambda: store.trial_outcomes("e")),
        ("worker: best_trial", lambda: store.best_trial("e")),
    ]


def _timed(fn: Callable[[], Any], calls: int) -> str:
    try:
        return f"{_median_ms(fn, calls):>8.2f} ms"
    except AttributeError as e:  # a method the store no longer has (old rows for comparison)
        if "TrialStore" not in str(e):
            raise
        return f"     n/a     ({e})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--sizes", default="500,5000", type=lambda s: [int(x) for x in s.split(",")]
    )
    parser.add_argument("--calls", type=int, default=15, help="calls per row (median)")
    args = parser.parse_args()
    print(f"load {os.getloadavg()}")
    with EmbeddedServer(":memory:") as server:
        store = connect(server.uri)
        store.create_jobs_indexes()
        for n in args.sizes:
            for name, fn in _cases(store, n):
                print(f"{n:>5} trials  {_timed(fn, args.calls)}  {name}")
    print(f"load {os.getloadavg()}")


if __name__ == "__main__":
    main()
