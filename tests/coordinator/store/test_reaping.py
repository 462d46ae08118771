"""Contract: reaping expired leases (idempotent, concurrent-safe), RUNNING trials a writer left
without a usable lease, and unique trial ids."""

from __future__ import annotations

import contextlib
import datetime as dt
import multiprocessing as mp
import threading
import time
from typing import Any

import pytest

from coordinator.states import AttemptOutcome, TrialState
from coordinator.store import TrialStore, connect
from tests.conftest import DROP, queue_trials, queued_doc
from tests.raw_store import insert_raw_documents


def test_reap_is_idempotent_and_spares_live_leases(
    store: TrialStore, caplog: pytest.LogCaptureFixture
) -> None:
    queue_trials(store, 2)
    dead = store.reserve_trial("dead", exp_key="exp", lease_s=0.2)
    alive = store.reserve_trial("alive", exp_key="exp", lease_s=30)
    time.sleep(0.4)
    assert store.reap_expired("exp") == [dead.tid]
    # the log names the trial by its tid, never as "trial N" (issue 23: numbers are per experiment)
    assert f"tid {dead.tid} of exp: " in caplog.text and "trial " not in caplog.text, caplog.text
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


def test_an_attempt_handed_back_says_how_long_it_ran_at_least(store: TrialStore) -> None:
    """``ran_s``: from the claim to the last heartbeat, on the database's clock, for an attempt
    the reaper takes back and for one its worker hands back; none for a held trial that never
    started, nor where the times are junk."""
    queue_trials(store, 5)
    start = time.perf_counter()
    lost = store.reserve_trial("dead", exp_key="exp", lease_s=1.0)
    time.sleep(0.6)
    assert store.heartbeat(lost, 0.5)  # its last sign of life, >= 0.6 s after the claim
    alive = time.perf_counter() - start
    time.sleep(1.0)
    assert store.reap_expired("exp") == [lost.tid]
    entry = store.get_trial("exp", lost.tid)["attempt_history"][-1]
    # not the 1.6 s until the reap: up to the heartbeat (dates on the server have ms)
    assert entry["outcome"] == "lost" and 0.59 <= entry["ran_s"] <= alive + 0.01, (entry, alive)

    start = time.perf_counter()
    handed = store.reserve_trial("w", exp_key="exp")
    time.sleep(0.3)
    assert store.heartbeat(handed, 30)
    alive = time.perf_counter() - start
    assert store.release(handed, AttemptOutcome.REQUEUED, "SIGTERM") is TrialState.NEW
    entry = store.get_trial("exp", handed.tid)["attempt_history"][-1]
    assert 0.29 <= entry["ran_s"] <= alive + 0.01, (entry, alive)

    # a new queue from here on: a claim of several takes trials of one attempt number only, so
    # with the lost and handed-back trials among the candidates it could take 1 (CI of fb314a8)
    store.drop_database()
    queue_trials(store, 4)
    reserved = store.reserve_trials("w", 2, exp_key="exp")
    assert len(reserved.leases) == 2
    assert store.release_held(reserved.leases[1:], "never started") == 1
    held = reserved.leases[1]
    assert "ran_s" not in store.get_trial("exp", held.tid)["attempt_history"][-1]

    junk = store.reserve_trial("w", exp_key="exp")
    store.jobs.update_one({"_id": junk.id}, {"$set": {"refresh_time": "yesterday"}})
    # which trial comes back is the store's choice: the same one may be lost twice here, and
    # the limit is lifted so that no ordering can reach it (CI of stop 31 reached it: ERROR)
    assert store.release(junk, AttemptOutcome.LOST, "killed", max_attempts=100) is TrialState.NEW
    assert "ran_s" not in store.get_trial("exp", junk.tid)["attempt_history"][-1]

    absurd = store.reserve_trial("w", exp_key="exp")  # a book_time of 1970: no run that long
    store.jobs.update_one({"_id": absurd.id}, {"$set": {"book_time": dt.datetime(1970, 1, 1)}})
    assert store.release(absurd, AttemptOutcome.LOST, "killed", max_attempts=100) is TrialState.NEW
    assert "ran_s" not in store.get_trial("exp", absurd.tid)["attempt_history"][-1]

    # review: a held trial the reaper takes back (its worker died) never started either
    store.drop_database()
    queue_trials(store, 4)
    dead = store.reserve_trials("dead", 3, exp_key="exp", lease_s=0.5)
    assert len(dead.leases) >= 2
    time.sleep(0.8)
    assert len(store.reap_expired("exp")) == len(dead.leases)
    for lease in dead.leases:
        entry = store.get_trial("exp", lease.tid)["attempt_history"][-1]
        assert ("ran_s" in entry) is (lease is dead.leases[0]), entry


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


# -- issue 22, item 1: a RUNNING trial without a usable lease (a writer that renews none) -------


def _stock_claimed(n: int, exp_key: str, booked: dt.datetime | None, lease: Any = DROP) -> dict:
    """A trial as stock hyperopt's ``MongoJobs.reserve`` leaves it (owner, ``book_time``,
    ``refresh_time`` on the writer's clock; no ``lease_expires``, no ``attempt``), ``lease``
    as given."""
    times = {} if booked is None else {"book_time": booked, "refresh_time": booked}
    return queued_doc(
        n, exp_key, state=1, owner="stock-host:4242", lease_expires=lease, **times, version=DROP
    )


def test_a_running_trial_without_a_usable_lease_is_reaped_after_its_grace(
    store: TrialStore, backend_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Missing, null or junk ``lease_expires``: counted from ``book_time``/``refresh_time`` plus
    the grace ($HYPERFLEET_UNLEASED_GRACE_S); the old reaper never saw them ("reaped 0"), and a
    search waited on them for ever."""
    monkeypatch.setenv("HYPERFLEET_UNLEASED_GRACE_S", "60")
    reaper = connect(backend_uri, store.db_name)
    store.create_experiment({"_id": "exp", "space": "quadratic", "status": "running"})
    now = store.server_time()
    old = now - dt.timedelta(seconds=61)
    insert_raw_documents(
        store,
        [
            _stock_claimed(1, "exp", old),  # no lease_expires at all
            _stock_claimed(2, "exp", old, lease=None),
            _stock_claimed(3, "exp", old, lease="tomorrow"),
            _stock_claimed(4, "exp", now - dt.timedelta(seconds=30)),  # within its grace
            _stock_claimed(5, "exp", old + dt.timedelta(hours=2), lease=None),  # clock ahead
        ],
    )
    try:
        assert sorted(reaper.reap_expired("exp")) == [1, 2, 3]
        assert reaper.reap_expired("exp") == []
    finally:
        reaper.close()
    for tid in (1, 2, 3):
        doc = store.get_trial("exp", tid)
        assert doc["state"] == TrialState.NEW and doc["owner"] is None
        assert doc["attempts"] == 1 and doc["attempt_history"][0]["outcome"] == "lost"
        assert "without a lease" in doc["attempt_history"][0]["reason"]
    assert [store.get_trial("exp", t)["state"] for t in (4, 5)] == [TrialState.RUNNING] * 2


def test_a_running_trial_without_lease_or_dates_is_given_a_lease(
    store: TrialStore, backend_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing to count from (a hand edit): the reaper gives it one grace from now, on the
    server's clock, and reaps it once that runs out."""
    monkeypatch.setenv("HYPERFLEET_UNLEASED_GRACE_S", "0.5")
    reaper = connect(backend_uri, store.db_name)
    store.create_experiment({"_id": "exp", "space": "quadratic", "status": "running"})
    insert_raw_documents(store, [_stock_claimed(1, "exp", None)])
    try:
        assert reaper.reap_expired("exp") == []
        assert isinstance(store.get_trial("exp", 1)["lease_expires"], dt.datetime)
        time.sleep(0.8)
        assert reaper.reap_expired("exp") == [1]
    finally:
        reaper.close()
    assert store.get_trial("exp", 1)["state"] == TrialState.NEW


def test_lease_less_trials_of_another_team_are_left_to_whoever_names_them(
    store: TrialStore, backend_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reaper that names no experiment (an unpinned worker, ``reap`` without --exp-key)
    recovers lease-less trials only in experiments hyperfleet created; another team's stock
    hyperopt trials are theirs, until their search (or ``reap --exp-key``) names them."""
    monkeypatch.setenv("HYPERFLEET_UNLEASED_GRACE_S", "1")
    reaper = connect(backend_uri, store.db_name)
    old = store.server_time() - dt.timedelta(seconds=5)
    store.create_experiment({"_id": "ours", "space": "quadratic", "status": "running"})
    insert_raw_documents(store, [_stock_claimed(1, "ours", old), _stock_claimed(2, "theirs", old)])
    try:
        assert reaper.reap_expired() == [1]
        assert store.get_trial("theirs", 2)["state"] == TrialState.RUNNING
        assert reaper.reap_expired("theirs") == [2]
    finally:
        reaper.close()


def test_a_writer_that_refreshes_keeps_its_lease_less_trial(
    store: TrialStore, backend_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``refresh_time`` counts: hyperopt's ``ctrl.checkpoint()`` refreshes it."""
    monkeypatch.setenv("HYPERFLEET_UNLEASED_GRACE_S", "10")
    reaper = connect(backend_uri, store.db_name)
    store.create_experiment({"_id": "exp", "space": "quadratic", "status": "running"})
    now = store.server_time()
    doc = _stock_claimed(1, "exp", now - dt.timedelta(seconds=30))
    doc["refresh_time"] = now
    insert_raw_documents(store, [doc])
    try:
        assert reaper.reap_expired("exp") == []
    finally:
        reaper.close()


_PAST = dt.datetime(2026, 1, 1)


@pytest.mark.parametrize(
    ("fields", "outage"),
    [
        ({"lease_expires": dt.datetime(1, 1, 1)}, None),
        ({"lease_expires": [_PAST]}, None),
        ({"lease_expires": _PAST, "lease_s": 1e300}, None),
        ({"lease_expires": None, "book_time": dt.datetime(9999, 12, 31, 23, 59)}, None),
        ({"lease_expires": None, "refresh_time": dt.datetime(9999, 12, 31, 23, 59)}, None),
        ({"lease_expires": _PAST, "attempt_history": "x"}, None),
        ({"lease_expires": _PAST}, {"from": dt.datetime(1, 1, 1), "to": _PAST}),
    ],
)
def test_a_hostile_running_trial_never_breaks_the_reaper(
    store: TrialStore, fields: dict[str, Any], outage: dict[str, Any] | None
) -> None:
    """Attacker review of this round: each of these shapes raised out of reap_expired
    (OverflowError, TypeError, a WriteError from the release), so every unpinned worker and the
    search died with a traceback, again at each restart. Now the trial is quarantined in one
    line (or reaped where it can be) and the reaper goes on with the others."""
    queue_trials(store, 2)
    hostile = store.reserve_trial("w1", exp_key="exp")
    dead = store.reserve_trial("w2", exp_key="exp", lease_s=0.1)
    store.jobs.update_one({"_id": hostile.id}, {"$set": fields})
    if outage is not None:
        store.db["outages"].insert_one(outage)
    time.sleep(0.3)
    assert dead.tid in store.reap_expired("exp")
    assert store.reap_expired() == [] and store.reap_expired("exp") == []
    assert store.get_trial("exp", dead.tid)["state"] == TrialState.NEW
    assert store.get_trial("exp", hostile.tid)["state"] in (TrialState.ERROR, TrialState.NEW)


def test_a_tampered_trial_id_counter_is_one_clear_refusal(store: TrialStore) -> None:
    from coordinator.errors import TrialWriteRefused

    store.allocate_tids(1)
    for junk in ("x", -10, 1e300, 2**63 - 1):
        store.db.job_ids.update_one({"a": 0}, {"$set": {"last_id": junk}})
        with pytest.raises(TrialWriteRefused, match="trial id counter"):
            store.allocate_tids(3)
