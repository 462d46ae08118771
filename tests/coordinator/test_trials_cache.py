"""HyperfleetTrials' incremental cache (issue 7's fixes) agrees with the database."""

from __future__ import annotations

import copy

import numpy as np

from coordinator.states import AttemptOutcome, TrialState
from coordinator.store import TrialStore
from coordinator.trials import HyperfleetTrials
from tests.conftest import queue_trials


def connect_like(store: TrialStore) -> TrialStore:
    """A second store on the same database over its own connection (another process's view)."""
    from coordinator.store import connect

    host, port = store.client.address
    return connect(f"mongodb://{host}:{port}", store.db_name)


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


def test_an_insert_is_seen_at_once_and_its_later_changes_too(store) -> None:
    """Inserted trials join the view without a read back (the loop saves that round trip), and
    a worker's later writes to them are still read."""
    from hyperopt import hp, rand
    from hyperopt.base import Domain

    trials = queue_trials(store, 1, exp_key="ins")
    more = queue_trials(store, 1, exp_key="ins")  # another object inserts: read, not applied
    assert len(more.trials) == 2
    domain = Domain(lambda p: 0.0, {"x": hp.uniform("x", -1, 1)})
    trials.insert_trial_docs(rand.suggest(trials.new_trial_ids(1), domain, trials, 7))
    assert trials.cache.count(TrialState.NEW) == 2  # ours at once, unread: the other one's
    assert len(trials.trials) == 1  # hyperopt's lists change at a refresh, as stock's
    trials.refresh()
    assert len(trials.trials) == 3 and trials.count_by_state_unsynced(TrialState.NEW) == 3
    lease = store.reserve_trial("w", exp_key="ins")
    while lease is not None:
        store.finish(lease, {"loss": 2.0, "status": "ok"}, {})
        lease = store.reserve_trial("w", exp_key="ins")
    trials.refresh()
    assert sorted(trials.losses()) == [2.0, 2.0, 2.0]


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


# -- issue 16: a refresh sees every change, whoever made it ------------------------------------


def _finished_docs(exp_key: str, n: int) -> list[dict]:
    """Finished trial documents as an in-memory hyperopt run leaves them (a warm start)."""
    from hyperopt import Trials, fmin, hp, rand

    memory = Trials()
    fmin(
        lambda x: x**2,
        hp.uniform("x", -1, 1),
        algo=rand.suggest,
        max_evals=n,
        trials=memory,
        rstate=np.random.default_rng(0),
        show_progressbar=False,
    )
    docs = [copy.deepcopy(t) for t in memory.trials]
    for doc in docs:
        doc["exp_key"] = exp_key
    return docs


def test_refresh_sees_finished_docs_inserted_by_this_object(store: TrialStore) -> None:
    trials = HyperfleetTrials(store, exp_key="warm")
    assert len(trials) == 0
    docs = _finished_docs("warm", 5)
    trials.insert_trial_docs(docs)
    trials.refresh()
    assert len(trials) == 5
    assert trials.losses() == [d["result"]["loss"] for d in docs]
    assert trials.best_trial["result"]["loss"] == min(d["result"]["loss"] for d in docs)


def test_refresh_sees_changes_made_by_another_process(store: TrialStore) -> None:
    trials = queue_trials(store, 2, exp_key="other")
    assert len(trials) == 2
    # another writer (here another Trials object on its own connection) adds finished trials
    other = HyperfleetTrials(connect_like(store), exp_key="other")
    other.insert_trial_docs(_finished_docs("other", 3))
    # and changes a trial through hyperopt's MongoJobs.update, as stock tools do
    doc = other.store.trials("other", [TrialState.DONE])[0]
    other.handle.update(doc, {"result": {**doc["result"], "note": "edited"}})
    trials.refresh()
    assert len(trials) == 5
    assert sorted(r.get("note", "") for r in trials.results) == ["", "", "", "", "edited"]


def test_string_tids_never_break_refresh_or_order(store: TrialStore) -> None:
    from hyperopt.tests.test_base import ok_trial

    trials = HyperfleetTrials(store, exp_key=None)
    trials.insert_trial_doc(ok_trial("a", 8))
    trials.insert_trial_doc(ok_trial(5, a=1, b=3))
    trials.insert_trial_docs([ok_trial(tid=4, a=2, b=3), ok_trial(tid=9, a=4, b=3)])
    trials.refresh()
    assert len(trials) == 4
    trials.insert_trial_docs(
        trials.new_trial_docs(
            ["id0", "id1"],
            [{"a": 1}, {"a": 2}],
            [{"status": "new"}, {"status": "new"}],
            [{"tid": t, "idxs": {}, "vals": {}, "cmd": None} for t in ("id0", "id1")],
        )
    )
    trials.refresh()
    assert trials.tids == [4, 5, 9, "a", "id0", "id1"]  # numbers first, then the others
    assert len(trials.specs) == len(trials.results) == len(trials.miscs) == 6
    assert [d["tid"] for d in store.trials(None)] == [4, 5, 9, "a", "id0", "id1"]


def test_delete_all_removes_experiment_attachments(store: TrialStore) -> None:
    trials = queue_trials(store, 2, exp_key="att")
    trials.attachments["aname"] = b"payload"
    keep = HyperfleetTrials(store, exp_key="kept")
    keep.attachments["aname"] = b"other experiment"
    assert trials.attachments["aname"] == b"payload"
    trials.delete_all()
    assert len(trials) == 0
    assert "aname" not in trials.attachments
    assert keep.attachments["aname"] == b"other experiment"
