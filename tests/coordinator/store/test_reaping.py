"""Contract: reaping expired leases (idempotent, concurrent-safe) and unique trial ids."""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import threading
import time

from coordinator.states import TrialState
from coordinator.store import TrialStore, connect
from tests.conftest import queue_trials


def test_reap_is_idempotent_and_spares_live_leases(store: TrialStore) -> None:
    queue_trials(store, 2)
    dead = store.reserve_trial("dead", exp_key="exp", lease_s=0.2)
    alive = store.reserve_trial("alive", exp_key="exp", lease_s=30)
    time.sleep(0.4)
    assert store.reap_expired("exp") == [dead.tid]
    assert store.reap_expired("exp") == []
    assert store.reap_expired() == []
    assert store.heartbeat(alive, 30)
    assert store.get_trial("exp", dead.tid)["state"] == TrialState.NEW


def test_reap_counts_lost_attempts_to_error(store: TrialStore) -> None:
    queue_trials(store, 1, max_attempts=2)
    for expected in (TrialState.NEW, TrialState.ERROR):
        lease = store.reserve_trial("dead", exp_key="exp", lease_s=0.1)
        time.sleep(0.3)
        assert store.reap_expired("exp") == [lease.tid]
        assert store.get_trial("exp", lease.tid)["state"] == expected
    doc = store.get_trial("exp", lease.tid)
    assert doc["error"]["message"].startswith("worker lost 2 times")
    assert store.reserve_trial("w", exp_key="exp") is None


def test_reap_from_many_threads_releases_each_trial_once(store: TrialStore) -> None:
    queue_trials(store, 10)
    for _ in range(10):
        store.reserve_trial("dead", exp_key="exp", lease_s=0.1)
    time.sleep(0.3)
    results: list[list[int]] = []
    threads = [
        threading.Thread(target=lambda: results.append(store.reap_expired("exp"))) for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    reaped = [tid for batch in results for tid in batch]
    assert len(reaped) == 10 and len(set(reaped)) == 10
    assert all(len(d["attempt_history"]) == 1 for d in store.trials("exp"))


def _reap(uri: str, db: str) -> list[int]:
    with contextlib.closing(connect(uri, db)) as store:
        return store.reap_expired("exp")


def test_reaper_is_safe_from_two_processes(store: TrialStore, backend_uri: str) -> None:
    queue_trials(store, 6)
    for _ in range(6):
        store.reserve_trial("dead", exp_key="exp", lease_s=0.1)
    time.sleep(0.3)
    with mp.get_context("spawn").Pool(2) as pool:
        results = pool.starmap(_reap, [(backend_uri, store.db_name)] * 2)
    reaped = sorted(results[0] + results[1])
    assert len(reaped) == 6 and len(set(reaped)) == 6  # each trial reaped exactly once
    assert store.count("exp", [TrialState.NEW]) == 6
    assert all(d["attempts"] == 1 for d in store.trials(None))


def test_concurrent_tid_allocation_on_fresh_db(backend_uri: str, store: TrialStore) -> None:
    """Regression: an upserting findAndModify answered None under concurrency (SecantusDB)."""
    got: list[list[int]] = []
    errors: list[BaseException] = []

    def allocate() -> None:
        try:
            with contextlib.closing(connect(backend_uri, store.db_name)) as mine:
                got.append(mine.allocate_tids(3))
        except BaseException as e:  # noqa: BLE001 - collected and asserted below
            errors.append(e)

    threads = [threading.Thread(target=allocate) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    flat = [tid for batch in got for tid in batch]
    assert sorted(flat) == list(range(18))
