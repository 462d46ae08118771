"""Contract: named reads and counts return what was written, in the order promised."""

from __future__ import annotations

from coordinator.states import TrialState
from coordinator.store import TrialStore
from tests.conftest import queue_trials


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
    assert {d["tid"] for d in store.unfinished_trials("exp")} == {
        d["tid"] for d in every if d["tid"] != done.tid
    }
    by_id = store.trials_by_ids([done.id, running.id])
    assert {d["tid"] for d in by_id} == {done.tid, running.tid}
    assert [d["tid"] for d in store.trials_by_ids([done.id, running.id], [TrialState.DONE])] == [
        done.tid
    ]
    assert store.trials_by_ids([]) == []
    outcomes = store.trial_outcomes("exp")
    assert [d["tid"] for d in outcomes] == [d["tid"] for d in every]
    assert "spec" not in outcomes[0] and "misc" not in outcomes[0]
    assert store.get_trial("exp", done.tid)["result"]["loss"] == 1.0
    assert store.get_trial("exp", 10_000) is None


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
