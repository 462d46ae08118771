"""HyperfleetTrials' incremental cache (issue 7's fixes) agrees with the database."""

from __future__ import annotations

from coordinator.states import AttemptOutcome, TrialState
from coordinator.store import TrialStore
from coordinator.trials import HyperfleetTrials
from tests.conftest import queue_trials


def test_cache_counts_and_order_match_a_fresh_read(store: TrialStore) -> None:
    trials = queue_trials(store, 8)
    leases = [store.reserve_trial("w", exp_key="exp") for _ in range(6)]
    # finish out of tid order, fail one, hand one back, with refreshes in between
    for i in (3, 0, 5):
        store.finish(leases[i], {"loss": float(i), "status": "ok"}, {})
        trials.refresh()
    store.fail(leases[1], {"type": "E", "message": "m"}, {})
    store.release(leases[2], AttemptOutcome.REQUEUED, "test")
    trials.refresh()
    store.finish(leases[4], {"loss": 4.0, "status": "ok"}, {})
    trials.refresh()

    fresh = HyperfleetTrials(store, exp_key="exp")
    assert [t["tid"] for t in trials.trials] == [t["tid"] for t in fresh.trials]
    assert [t["state"] for t in trials.trials] == [t["state"] for t in fresh.trials]
    assert trials.state_counts() == store.count_by_state("exp")
    for state in TrialState:
        assert trials.count_by_state_unsynced(int(state)) == store.count("exp", [int(state)])
    assert sorted(x for x in trials.losses() if x is not None) == [0.0, 3.0, 4.0, 5.0]
    assert [t["tid"] for t in trials.trials] == sorted(t["tid"] for t in trials.trials)


def test_refresh_reuse_never_hides_a_fresh_insert(store) -> None:
    """Regression: with refresh reuse on (as in the coordinator), a trial inserted right after a
    refresh must still be seen once a worker finishes it."""
    from tests.conftest import queue_trials

    trials = queue_trials(store, 1, exp_key="reuse")
    trials.refresh_reuse_s = 10.0  # reuse everything, except across an insert
    lease = store.reserve_trial("w", exp_key="reuse")
    store.finish(lease, {"loss": 1.0, "status": "ok"}, {})
    trials.refresh()  # reused: the finish is not seen yet, as designed
    more = queue_trials(store, 1, exp_key="reuse")  # another object inserts: not ours
    assert len(more.trials) == 2
    from hyperopt import hp, rand
    from hyperopt.base import Domain

    domain = Domain(lambda p: 0.0, {"x": hp.uniform("x", -1, 1)})
    trials.insert_trial_docs(rand.suggest(trials.new_trial_ids(1), domain, trials, 7))
    trials.refresh()  # not reused: it follows our insert
    lease = store.reserve_trial("w", exp_key="reuse")
    while lease is not None:
        store.finish(lease, {"loss": 2.0, "status": "ok"}, {})
        lease = store.reserve_trial("w", exp_key="reuse")
    trials.refresh_reuse_s = 0.0
    trials.refresh()
    assert sorted(trials.losses()) == [1.0, 2.0, 2.0]


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
