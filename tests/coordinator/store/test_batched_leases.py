"""Contract: several claims and endings in one round trip (``reserve_trials``, ``end_trials``,
``release_held``): each write is still its own fenced write, and racing workers never share a
trial."""

from __future__ import annotations

import threading
import time

from coordinator.states import TrialState
from coordinator.store import TrialStore, connect
from coordinator.store.base import Ending
from tests.conftest import queued_doc

OK = {"status": "ok", "loss": 0.25}


def queue(store: TrialStore, n: int, exp_key: str = "exp") -> None:
    store.create_experiment({"_id": exp_key, "space": "quadratic", "status": "running"})
    store.insert_trials([queued_doc(tid, exp_key) for tid in range(n)])


def test_claims_several_and_writes_endings_in_the_same_round_trip(store: TrialStore) -> None:
    queue(store, 6)
    first = store.reserve_trials("w1", 3, exp_key="exp", lease_s=30)
    assert len(first.leases) == 3 and first.ended == []
    assert {lease.attempt for lease in first.leases} == {1}
    for lease in first.leases:
        doc = store.get_trial("exp", lease.tid)
        assert doc["state"] == TrialState.RUNNING and doc["owner"] == "w1"
        assert doc["attempt"] == 1 and doc["lease_expires"] > doc["book_time"]

    endings = [Ending(lease, OK, {"params": {"x": 0.5}}) for lease in first.leases]
    second = store.reserve_trials("w1", 3, exp_key="exp", lease_s=30, endings=endings)
    assert second.ended == [True, True, True] and len(second.leases) == 3
    assert not {lease.tid for lease in second.leases} & {lease.tid for lease in first.leases}
    done = store.trials("exp", [TrialState.DONE])
    assert len(done) == 3 and all(d["params"] == {"x": 0.5} and d["mtime"] for d in done)

    # nothing queued: the endings are written all the same
    error = {"type": "ValueError", "message": "boom", "traceback": ""}
    last = store.reserve_trials(
        "w1",
        3,
        exp_key="exp",
        endings=[Ending(second.leases[0], {}, {}, error)]
        + [Ending(lease, OK, {}) for lease in second.leases[1:]],
    )
    assert last.leases == [] and last.ended == [True, True, True]
    assert store.count("exp", [TrialState.DONE]) == 5
    assert store.count("exp", [TrialState.ERROR]) == 1


def test_a_lost_lease_refuses_its_ending_and_the_claim_still_counts(store: TrialStore) -> None:
    """The server answers a bulk with totals only: a shortfall is resolved by reading back."""
    queue(store, 4)
    (a, b) = store.reserve_trials("w1", 2, exp_key="exp", lease_s=0.2).leases
    time.sleep(0.5)
    assert sorted(store.reap_expired("exp")) == sorted([a.tid, b.tid])  # the fence moves on
    got = store.reserve_trials("w1", 1, exp_key="exp", endings=[Ending(a, OK, {})])
    assert got.ended == [False] and len(got.leases) == 1
    doc = store.get_trial("exp", a.tid)  # unchanged by the ending (the new claim may take it)
    retaken = got.leases[0].tid == a.tid
    assert doc["state"] == (TrialState.RUNNING if retaken else TrialState.NEW)
    assert doc["attempt"] == (2 if retaken else 1) and "ended" not in doc
    assert store.end_trials([Ending(b, OK, {}), Ending(got.leases[0], OK, {})]) == [False, True]
    assert store.release_held([a, b], "late") == 0  # reaped: nothing of theirs to hand back


def test_release_held_hands_back_without_counting_an_attempt(store: TrialStore) -> None:
    queue(store, 3)
    leases = store.reserve_trials("w1", 3, exp_key="exp", lease_s=30).leases
    assert store.release_held(leases[1:], "held, never started") == 2
    for lease in leases[1:]:
        doc = store.get_trial("exp", lease.tid)
        assert doc["state"] == TrialState.NEW and doc["owner"] is None
        assert doc["attempts"] == 0 and doc["attempt"] == 1
        assert doc["attempt_history"][-1]["outcome"] == "requeued"
        assert not store.finish(lease, OK, {})  # fenced: the hand-back ended that lease
    again = store.reserve_trials("w2", 3, exp_key="exp").leases
    assert sorted(lease.attempt for lease in again) == [2, 2]


def test_mixed_attempts_are_claimed_with_the_attempt_each_had(store: TrialStore) -> None:
    """One claim is filtered on one ``attempt``: candidates that differ go in another claim."""
    queue(store, 4)
    (lease,) = store.reserve_trials("w1", 1, exp_key="exp").leases
    assert store.release_held([lease], "back") == 1  # now NEW at attempt 1; the others at none
    seen = {}
    while got := store.reserve_trials("w2", 4, exp_key="exp").leases:
        seen.update({g.tid: g.attempt for g in got})
    assert seen == {t: (2 if t == lease.tid else 1) for t in range(4)}
    for tid, attempt in seen.items():
        assert store.get_trial("exp", tid)["attempt"] == attempt


def test_racing_batched_workers_never_share_a_trial(backend_uri: str, db_name: str) -> None:
    n = 120
    stores = [connect(backend_uri, db_name) for _ in range(3)]
    queue(stores[0], n)
    claimed: dict[str, list[tuple[int, int]]] = {}

    def work(i: int) -> None:
        store, owner, endings = stores[i], f"w{i}", []
        mine = claimed.setdefault(owner, [])
        while True:
            got = store.reserve_trials(owner, 3, exp_key="exp", endings=endings)
            assert all(got.ended)
            if not got.leases:
                return
            mine.extend((lease.tid, lease.attempt) for lease in got.leases)
            endings = [Ending(lease, OK, {}) for lease in got.leases]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    try:
        every = [c for mine in claimed.values() for c in mine]
        assert sorted(every) == [(tid, 1) for tid in range(n)]  # each trial once, attempt 1
        assert stores[0].count("exp", [TrialState.DONE]) == n
    finally:
        for s in stores:
            s.close()


def test_a_lost_worker_s_held_trials_are_requeued_without_counting(store: TrialStore) -> None:
    """Only the trial a claim hands out first is running; the others are held behind it. A
    worker lost while holding them costs an attempt for that one only."""
    queue(store, 3)
    leases = store.reserve_trials("w1", 3, exp_key="exp", lease_s=0.2).leases
    assert len(leases) == 3
    held = {lease.tid: store.get_trial("exp", lease.tid)["held"] for lease in leases}
    assert held[leases[0].tid] is False and sorted(held.values()) == [False, True, True]
    time.sleep(0.5)
    assert len(store.reap_expired("exp")) == 3
    attempts = {d["tid"]: d["attempts"] for d in store.trials("exp", [TrialState.NEW])}
    assert attempts == {t: (0 if h else 1) for t, h in held.items()}
    outcomes = {d["tid"]: d["attempt_history"][-1]["outcome"] for d in store.trials("exp")}
    assert sorted(outcomes.values()) == ["lost", "requeued", "requeued"]


def test_held_trials_of_a_cancelled_experiment_become_cancel(store: TrialStore) -> None:
    queue(store, 3)
    leases = store.reserve_trials("w1", 3, exp_key="exp", lease_s=30).leases
    assert store.cancel_held(leases[1:]) == 2
    states = sorted(d["state"] for d in store.trials("exp"))
    assert states == [TrialState.RUNNING, TrialState.CANCEL, TrialState.CANCEL]
    assert store.cancel_held(leases[1:]) == 0  # fenced: once only
