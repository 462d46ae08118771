"""Contract: named reads and counts return what was written, in the order promised."""

from __future__ import annotations

import time

import pytest

from coordinator.errors import TrialWriteRefused
from coordinator.states import TrialState
from coordinator.store import TrialStore
from tests.conftest import queue_trials
from tests.raw_store import trials_by_ids, unfinished_trials


def test_named_reads(store: TrialStore) -> None:
    queue_trials(store, 4)
    queue_trials(store, 1, exp_key="other")
    done = store.reserve_trial("w", exp_key="exp")
    running = store.reserve_trial("w", exp_key="exp")
    store.finish(done, {"loss": 1.0, "status": "ok"}, {})

    every = store.trials("exp")
    assert [d["tid"] for d in every] == sorted(d["tid"] for d in every) and len(every) == 4
    assert "spec" in every[0] and "spec" not in store.trials("exp", with_spec=False)[0]
    assert len(store.trials(None)) == 5
    assert [d["tid"] for d in store.trials("exp", [TrialState.DONE])] == [done.tid]
    assert {d["tid"] for d in unfinished_trials(store, "exp")} == {
        d["tid"] for d in every if d["tid"] != done.tid
    }
    by_id = trials_by_ids(store, [done.id, running.id])
    assert {d["tid"] for d in by_id} == {done.tid, running.tid}
    assert [d["tid"] for d in trials_by_ids(store, [done.id, running.id], [TrialState.DONE])] == [
        done.tid
    ]
    assert trials_by_ids(store, []) == []
    outcomes = store.trial_outcomes("exp")
    assert [d["tid"] for d in outcomes] == [d["tid"] for d in every]
    assert "spec" not in outcomes[0] and "misc" not in outcomes[0]
    assert store.get_trial("exp", done.tid)["result"]["loss"] == 1.0
    assert store.get_trial("exp", 10_000) is None
    assert store.queued_exp_keys() == {"exp", "other"}  # "exp" still has 2 NEW trials
    assert store.trial_exp_keys() == {"exp", "other"}
    assert store.trial_exp_keys([TrialState.DONE]) == {"exp"}
    assert store.trial_exp_keys([TrialState.ERROR]) == set()


def test_counts(store: TrialStore) -> None:
    queue_trials(store, 3)
    lease = store.reserve_trial("w", exp_key="exp")
    store.finish(lease, {"loss": 1.0, "status": "ok"}, {})
    assert store.count("exp", [TrialState.NEW]) == 2
    assert store.count("exp", [TrialState.NEW, TrialState.DONE]) == 3
    assert store.count(None, list(TrialState)) == 3
    counts = store.count_by_state("exp")
    assert counts[TrialState.NEW] == 2 and counts[TrialState.DONE] == 1
    assert counts[TrialState.ERROR] == 0 and set(counts) == set(TrialState)


def test_every_write_stamps_mtime_and_changed_trials_finds_it(store: TrialStore) -> None:
    """Contract: inserts, reserve, heartbeat, epochs, finish, attachments all stamp ``mtime``
    with the server clock; ``changed_trials`` returns what was written since (any state)."""
    queue_trials(store, 2)
    docs = store.trials("exp")
    assert all(d.get("mtime") is not None for d in docs)
    since = max(d["mtime"] for d in docs)
    later = [d for d in store.changed_trials("exp", since) if d["mtime"] > since]
    assert later == []
    lease = store.reserve_trial("w", exp_key="exp")
    stamps = [store.get_trial("exp", lease.tid)["mtime"]]
    for write in (
        lambda: store.heartbeat(lease, 30),
        lambda: store.record_epoch(lease, {"epoch": 0, "loss": 1.0}),
        lambda: store.attach(lease, "model", b"w"),
        lambda: store.fail(lease, {"type": "E", "message": "m"}, {}),
    ):
        time.sleep(0.002)  # BSON dates have millisecond resolution
        assert write()
        stamps.append(store.get_trial("exp", lease.tid)["mtime"])
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)
    assert stamps[0] >= since
    changed = store.changed_trials("exp", stamps[0])
    assert [d["tid"] for d in changed] == [lease.tid] and changed[0]["state"] == TrialState.ERROR
    assert store.changed_trials("other", since) == []


def test_insert_retry_is_harmless_and_a_foreign_id_is_refused(store: TrialStore) -> None:
    doc = {"tid": "x", "exp_key": "exp", "state": 0, "misc": {"tid": "x"}, "result": {}}
    [doc_id] = store.insert_trials([doc])
    assert store.insert_trials([dict(doc)]) == [doc_id]  # the same document again: a retry
    assert len(store.trials("exp")) == 1
    with pytest.raises(TrialWriteRefused):
        store.insert_trials([{**doc, "exp_key": "other"}])  # another trial's _id
    assert [d["tid"] for d in store.trials(None)] == ["x"]


def test_allocate_tids_above(store: TrialStore) -> None:
    assert store.allocate_tids(2) == [0, 1]
    assert store.allocate_tids(2, above=9) == [10, 11]
    assert store.allocate_tids(1, above=3) == [12]
