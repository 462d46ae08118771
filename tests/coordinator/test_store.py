"""The trial store's contract, against a real SecantusDB server over TCP."""

from __future__ import annotations

import multiprocessing as mp
import time

import pytest

from coordinator.states import AttemptOutcome, TrialState
from coordinator.store import TrialStore, connect, redact_uri
from coordinator.trials import HyperfleetTrials
from tests.conftest import queue_trials


def test_reserve_finish_roundtrip(store: TrialStore) -> None:
    trials = queue_trials(store, 3)
    assert trials.count_by_state_unsynced(TrialState.NEW) == 3

    lease = store.reserve_trial("w1", exp_key="exp", lease_s=30)
    assert lease is not None and lease.attempt == 1 and lease.owner == "w1"
    doc = store.jobs.find_one({"_id": lease.id})
    assert doc["state"] == TrialState.RUNNING and doc["lease_expires"] > doc["book_time"]

    assert store.heartbeat(lease, 30)
    assert store.record_epoch(lease, {"epoch": 1, "loss": 0.5})
    assert store.finish(lease, {"loss": 0.25, "status": "ok"}, {"params": {"x": 0.5}})
    doc = store.jobs.find_one({"_id": lease.id})
    assert doc["state"] == TrialState.DONE
    assert doc["result"]["loss"] == 0.25 and doc["params"] == {"x": 0.5}
    assert doc["epochs"] == [{"epoch": 1, "loss": 0.5}]
    # finished trials never change again: the same lease cannot write twice
    assert not store.finish(lease, {"loss": 9.0, "status": "ok"}, {})
    assert not store.heartbeat(lease, 30)

    trials.refresh()
    assert trials.losses().count(0.25) == 1
    assert trials.best_trial["tid"] == lease.tid
    assert sorted(trials.statuses()) == ["new", "new", "ok"]


def test_fail_records_error_and_hides_trial_like_hyperopt(store: TrialStore) -> None:
    trials = queue_trials(store, 1)
    lease = store.reserve_trial("w1", exp_key="exp")
    error = {"type": "ValueError", "message": "bad", "traceback": "Traceback ..."}
    assert store.fail(lease, error, {})
    doc = store.jobs.find_one({"_id": lease.id})
    assert doc["state"] == TrialState.ERROR and doc["error"]["message"] == "bad"
    trials.refresh()
    assert len(trials) == 0  # hyperopt leaves ERROR trials out of Trials


def test_untrusted_reserve_skips_pickled_trials(store: TrialStore) -> None:
    queue_trials(store, 2, space=None)
    assert store.reserve_trial("w1", trusted=False) is None
    assert store.reserve_trial("w1", trusted=True) is not None


def test_fencing_refuses_stale_owner(store: TrialStore) -> None:
    queue_trials(store, 1)
    stale = store.reserve_trial("w1", exp_key="exp", lease_s=0.2)
    time.sleep(0.4)
    assert store.reap_expired("exp") == [stale.tid]
    assert store.reap_expired("exp") == []  # idempotent
    fresh = store.reserve_trial("w2", exp_key="exp", lease_s=30)
    assert fresh.tid == stale.tid and fresh.attempt == 2
    assert not store.finish(stale, {"loss": 1.0, "status": "ok"}, {})
    assert not store.record_epoch(stale, {"epoch": 1})
    assert store.finish(fresh, {"loss": 2.0, "status": "ok"}, {})
    doc = store.jobs.find_one({"_id": fresh.id})
    assert doc["result"]["loss"] == 2.0 and doc["owner"] == "w2"
    assert doc["attempts"] == 1
    assert doc["attempt_history"][0]["outcome"] == "lost"
    assert doc["attempt_history"][0]["owner"] == "w1"


def test_release_counts_attempts_until_error(store: TrialStore) -> None:
    queue_trials(store, 1)
    for attempt in (1, 2):
        lease = store.reserve_trial("w", exp_key="exp")
        state = store.release(lease, AttemptOutcome.CRASHED, "killed by SIGKILL", max_attempts=3)
        assert lease.attempt == attempt and state is TrialState.NEW
    lease = store.reserve_trial("w", exp_key="exp")
    assert (
        store.release(lease, AttemptOutcome.REQUEUED, "shutdown", max_attempts=3) is TrialState.NEW
    )
    lease = store.reserve_trial("w", exp_key="exp")
    assert (
        store.release(lease, AttemptOutcome.CRASHED, "segfault", max_attempts=3) is TrialState.ERROR
    )
    doc = store.jobs.find_one({"_id": lease.id})
    assert doc["attempts"] == 3
    assert doc["error"]["message"].startswith("worker crashed 3 times")
    assert [h["outcome"] for h in doc["attempt_history"]] == [
        "crashed",
        "crashed",
        "requeued",
        "crashed",
    ]


def test_reaper_is_safe_from_two_processes(store: TrialStore, server) -> None:
    queue_trials(store, 6)
    for _ in range(6):
        store.reserve_trial("dead", exp_key="exp", lease_s=0.1)
    time.sleep(0.3)
    with mp.get_context("spawn").Pool(2) as pool:
        results = pool.starmap(_reap, [(server.uri, store.db_name)] * 2)
    reaped = sorted(results[0] + results[1])
    assert len(reaped) == 6 and len(set(reaped)) == 6  # each trial reaped exactly once
    assert store.count("exp", [TrialState.NEW]) == 6
    assert all(d["attempts"] == 1 for d in store.jobs.find({}))


def _reap(uri: str, db: str) -> list[int]:
    return connect(uri, db).reap_expired("exp")


def _race(uri: str, db: str, owner: str) -> list[int]:
    s = connect(uri, db)
    got = []
    while (lease := s.reserve_trial(owner, exp_key="exp")) is not None:
        got.append(lease.tid)
        s.finish(lease, {"loss": 0.0, "status": "ok"}, {})
    return got


def test_two_processes_race_for_200_trials(store: TrialStore, server) -> None:
    queue_trials(store, 200)
    with mp.get_context("spawn").Pool(2) as pool:
        a, b = pool.starmap(
            _race, [(server.uri, store.db_name, "a"), (server.uri, store.db_name, "b")]
        )
    assert len(a) + len(b) == 200
    assert len(set(a) | set(b)) == 200  # each reserved exactly once
    assert a and b  # both really competed
    assert store.count("exp", [TrialState.DONE]) == 200


def test_incremental_refresh_sees_every_change(store: TrialStore) -> None:
    trials = queue_trials(store, 30)
    for i in range(30):
        lease = store.reserve_trial("w", exp_key="exp")
        store.finish(lease, {"loss": float(i), "status": "ok"}, {})
        if i % 7 == 0:
            trials.refresh()
    trials.refresh()
    assert sorted(trials.losses()) == [float(i) for i in range(30)]
    full = HyperfleetTrials(store, exp_key="exp")
    assert [t["tid"] for t in full.trials] == [t["tid"] for t in trials.trials]


def test_redact_uri_hides_password() -> None:
    uri = "mongodb://user:s3cret@db.example:27017/?authSource=admin"
    assert "s3cret" not in redact_uri(uri) and "user:***@" in redact_uri(uri)
    assert redact_uri("mongodb+srv://u:p@h/x") == "mongodb+srv://u:***@h/x"


@pytest.mark.parametrize("uri", ["http://localhost", "mongodb://host:notaport"])
def test_connect_rejects_malformed_uri(uri: str) -> None:
    from coordinator.errors import ConfigError

    with pytest.raises(ConfigError, match="malformed MongoDB URI"):
        connect(uri)


def test_concurrent_tid_allocation_on_fresh_db(server, db_name: str) -> None:
    """Regression: an upserting findAndModify answered None under concurrency (SecantusDB)."""
    import threading

    got: list[list[int]] = []
    errors: list[BaseException] = []

    def allocate() -> None:
        try:
            got.append(connect(server.uri, db_name).allocate_tids(3))
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
