"""Contract: the lease protocol (reserve, heartbeat, epochs, finish, fail, release, attach)."""

from __future__ import annotations

import multiprocessing as mp
import time

from coordinator.states import AttemptOutcome, TrialState
from coordinator.store import Lease, TrialStore, connect
from tests.conftest import queue_trials


def _doc(store: TrialStore, lease: Lease) -> dict:
    doc = store.get_trial(lease.exp_key, lease.tid)
    assert doc is not None
    return doc


def test_reserve_finish_roundtrip(store: TrialStore) -> None:
    trials = queue_trials(store, 3)
    assert trials.count_by_state_unsynced(TrialState.NEW) == 3

    lease = store.reserve_trial("w1", exp_key="exp", lease_s=30)
    assert lease is not None and lease.attempt == 1 and lease.owner == "w1"
    doc = _doc(store, lease)
    assert doc["state"] == TrialState.RUNNING and doc["lease_expires"] > doc["book_time"]

    assert store.heartbeat(lease, 30)
    assert store.record_epoch(lease, {"epoch": 1, "loss": 0.5})
    assert store.finish(lease, {"loss": 0.25, "status": "ok"}, {"params": {"x": 0.5}})
    doc = _doc(store, lease)
    assert doc["state"] == TrialState.DONE
    assert doc["result"]["loss"] == 0.25 and doc["params"] == {"x": 0.5}
    assert doc["epochs"] == [{"epoch": 1, "loss": 0.5}]

    trials.refresh()
    assert trials.losses().count(0.25) == 1
    assert trials.best_trial["tid"] == lease.tid
    assert sorted(trials.statuses()) == ["new", "new", "ok"]


def test_finished_trials_never_change(store: TrialStore) -> None:
    queue_trials(store, 2)
    done = store.reserve_trial("w", exp_key="exp")
    failed = store.reserve_trial("w", exp_key="exp")
    assert store.finish(done, {"loss": 1.0, "status": "ok"}, {})
    assert store.fail(failed, {"type": "E", "message": "m"}, {})
    for lease in (done, failed):
        before = _doc(store, lease)
        assert not store.finish(lease, {"loss": 9.0, "status": "ok"}, {})
        assert not store.fail(lease, {"type": "E", "message": "again"}, {})
        assert not store.heartbeat(lease, 30)
        assert not store.record_epoch(lease, {"epoch": 1})
        assert store.release(lease, AttemptOutcome.CRASHED, "late") is None
        assert not store.attach(lease, "model.keras", b"late")
        assert _doc(store, lease) == before


def test_fail_records_error_and_hides_trial_like_hyperopt(store: TrialStore) -> None:
    trials = queue_trials(store, 1)
    lease = store.reserve_trial("w1", exp_key="exp")
    error = {"type": "ValueError", "message": "bad", "traceback": "Traceback ..."}
    assert store.fail(lease, error, {})
    doc = _doc(store, lease)
    assert doc["state"] == TrialState.ERROR and doc["error"]["message"] == "bad"
    trials.refresh()
    assert len(trials) == 0  # hyperopt leaves ERROR trials out of Trials


def test_untrusted_reserve_skips_pickled_trials(store: TrialStore) -> None:
    queue_trials(store, 2, space=None)
    assert store.reserve_trial("w1", trusted=False) is None
    assert store.reserve_trial("w1", trusted=True) is not None


def test_untrusted_reserve_looks_past_pickled_trials(store: TrialStore) -> None:
    queue_trials(store, 5, exp_key="pickled", space=None)
    queue_trials(store, 1, exp_key="named")
    lease = store.reserve_trial("w", trusted=False)
    assert lease is not None and lease.exp_key == "named"


def test_the_fence_refuses_a_stale_owner(store: TrialStore) -> None:
    queue_trials(store, 1)
    stale = store.reserve_trial("w1", exp_key="exp", lease_s=0.2)
    time.sleep(0.4)
    assert store.reap_expired("exp") == [stale.tid]
    fresh = store.reserve_trial("w2", exp_key="exp", lease_s=30)
    assert fresh.tid == stale.tid and fresh.attempt == 2
    # every write under the lost lease changes nothing and says so
    assert not store.heartbeat(stale, 30)
    assert not store.record_epoch(stale, {"epoch": 1})
    assert not store.attach(stale, "model.keras", b"stale")
    assert store.release(stale, AttemptOutcome.CRASHED, "stale") is None
    assert not store.fail(stale, {"type": "E", "message": "stale"}, {})
    assert not store.finish(stale, {"loss": 1.0, "status": "ok"}, {})
    assert store.finish(fresh, {"loss": 2.0, "status": "ok"}, {})
    doc = _doc(store, fresh)
    assert doc["result"]["loss"] == 2.0 and doc["owner"] == "w2"
    assert doc["attempts"] == 1 and "epochs" not in doc and "_attachments" not in doc
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
    doc = _doc(store, lease)
    assert doc["attempts"] == 3
    assert doc["error"]["message"].startswith("worker crashed 3 times")
    assert [h["outcome"] for h in doc["attempt_history"]] == [
        "crashed",
        "crashed",
        "requeued",
        "crashed",
    ]


def test_release_uses_the_experiments_attempt_limit(store: TrialStore) -> None:
    queue_trials(store, 1, max_attempts=2)
    assert store.attempt_limit("exp") == 2
    assert store.attempt_limit("no-such-experiment") == 3
    assert store.attempt_limit("no-such-experiment", default=5) == 5
    lease = store.reserve_trial("w", exp_key="exp")
    assert store.release(lease, AttemptOutcome.CRASHED, "one") is TrialState.NEW
    lease = store.reserve_trial("w", exp_key="exp")
    assert store.release(lease, AttemptOutcome.CRASHED, "two") is TrialState.ERROR


def test_attach_replaces_an_older_attachment(store: TrialStore) -> None:
    queue_trials(store, 1)
    lease = store.reserve_trial("w", exp_key="exp")
    assert store.attach(lease, "model.keras", b"first")
    assert store.attach(lease, "model.keras", b"second")
    assert store.attach(lease, "notes.txt", b"n")
    doc = _doc(store, lease)
    assert [a[0] for a in doc["_attachments"]] == ["model.keras", "notes.txt"]
    assert store.get_attachment(doc, "model.keras") == b"second"
    assert store.get_attachment(doc, "missing") is None


def _race(uri: str, db: str, owner: str) -> list[int]:
    s = connect(uri, db)
    got = []
    while (lease := s.reserve_trial(owner, exp_key="exp")) is not None:
        got.append(lease.tid)
        s.finish(lease, {"loss": 0.0, "status": "ok"}, {})
    return got


def test_two_processes_race_for_200_trials(store: TrialStore, backend_uri: str) -> None:
    queue_trials(store, 200)
    with mp.get_context("spawn").Pool(2) as pool:
        a, b = pool.starmap(
            _race, [(backend_uri, store.db_name, "a"), (backend_uri, store.db_name, "b")]
        )
    assert len(a) + len(b) == 200
    assert len(set(a) | set(b)) == 200  # each reserved exactly once
    assert a and b  # both really competed
    assert store.count("exp", [TrialState.DONE]) == 200
