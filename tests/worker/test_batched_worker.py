"""A worker of short trials claims several at once and writes their outcomes with its next
claim (worker/worker.py, ``Batch``): fewer server operations per trial, and nothing it holds is
lost or miscounted when it stops, meets a slow trial or is killed."""

from __future__ import annotations

import signal
import time

import pymongo
import pytest

from coordinator.server import EmbeddedServer
from coordinator.states import TrialState
from coordinator.store import TrialStore, connect
from tests.conftest import TEST_SPACES, queued_doc, start_worker, stop_all, wait_for
from worker import worker as worker_module
from worker.worker import Worker, WorkerConfig

pytestmark = pytest.mark.usefixtures("keep_signal_handlers")

OPCOUNTERS = ("insert", "query", "update", "delete", "getmore", "command")
#: measured 0.55-0.7 per trivial trial with batched claims (2.7 before); bench/worker_ops.py
OPS_PER_TRIAL_BOUND = 1.0


def queue(store: TrialStore, n: int, exp_key: str, space: str = "quadratic", **settings) -> None:
    store.create_experiment(
        {"_id": exp_key, "space": space, "settings": settings, "status": "running"}
    )
    store.insert_trials([queued_doc(tid, exp_key, space=space) for tid in range(n)])


def make_worker(server: EmbeddedServer, db_name: str, store: TrialStore, **kw) -> Worker:
    config = WorkerConfig(server.uri, db_name, isolate=False, spaces=(TEST_SPACES,), **kw)
    return Worker(store, config)


def held_start(worker: Worker) -> None:
    """As if the worker's recent trials were short: its next claim takes several."""
    worker._recent.extend([0.01] * worker_module.HOLD_RECENT)


def opcounters(uri: str) -> dict[str, int]:
    with pymongo.MongoClient(uri) as client:
        counters = client.admin.command("serverStatus")["opcounters"]
    return {k: int(counters.get(k, 0)) for k in OPCOUNTERS}


def test_server_operations_per_trivial_trial_stay_low(server, db_name, store) -> None:
    """The whole run of one worker over 60 queued trivial trials, start-up and exit included,
    counted by the server (whose other clients here are idle)."""
    n = 60
    queue(store, n, "ops")
    store.jobs.database.experiments.update_one({"_id": "ops"}, {"$set": {"status": "done"}})
    worker = make_worker(server, db_name, store, exp_key="ops")
    before = opcounters(server.uri)
    assert worker.work() == 0  # the search is over and its queue empty: the worker stops
    after = opcounters(server.uri)
    assert store.count("ops", [TrialState.DONE]) == n
    spent = sum(after[k] - before[k] for k in OPCOUNTERS) - 1  # one serverStatus of ours
    assert spent / n <= OPS_PER_TRIAL_BOUND, (spent, after, before)


def test_held_trials_go_back_uncounted_when_the_worker_stops(server, db_name, store) -> None:
    queue(store, 4, "stop", space="whoami", sleep=0.0)
    worker = make_worker(server, db_name, store, exp_key="stop")
    held_start(worker)
    lease = worker._next_trial()  # claims 4: runs one, holds three
    assert lease is not None and len(worker._batch.held) == 3
    assert store.count("stop", [TrialState.RUNNING]) == 4
    worker._report(lease, worker._run(lease))  # its outcome waits for the next round trip
    worker.signals = 1  # a first SIGTERM: the loop stops before its next trial
    assert worker.work() == 0
    docs = {d["tid"]: d for d in store.trials("stop")}
    assert docs[lease.tid]["state"] == TrialState.DONE
    back = [d for tid, d in docs.items() if tid != lease.tid]
    assert all(d["state"] == TrialState.NEW and d["attempts"] == 0 for d in back)
    assert all(d["attempt_history"][-1]["outcome"] == "requeued" for d in back)
    worker = make_worker(server, db_name, store, exp_key="stop", max_trials=3)
    assert worker.work() == 0
    assert store.count("stop", [TrialState.DONE]) == 4


def test_a_slow_trial_hands_back_the_trials_held_behind_it(server, db_name, store) -> None:
    queue(store, 3, "slow", space="whoami", sleep=worker_module.HOLD_SLOW_S + 0.5)
    worker = make_worker(server, db_name, store, exp_key="slow")
    held_start(worker)
    lease = worker._next_trial()
    assert lease is not None and len(worker._batch.held) == 2
    worker._report(lease, worker._run(lease))
    assert not worker._batch.held  # handed back while the slow one ran
    docs = {d["tid"]: d for d in store.trials("slow")}
    back = [d for tid, d in docs.items() if tid != lease.tid]
    assert all(d["state"] == TrialState.NEW and d["attempts"] == 0 for d in back)
    assert docs[lease.tid]["state"] == TrialState.RUNNING  # its outcome is not written yet...
    worker._settle()
    assert store.get_trial("slow", lease.tid)["state"] == TrialState.DONE  # ...now it is


def test_a_killed_worker_s_held_trials_are_reaped_and_rerun(server, db_name, tmp_path) -> None:
    """A real worker process of short trials is SIGKILLed while it holds several: every trial
    it held (and every outcome it had not written) is reaped once its lease runs out, and
    another worker runs them; each trial ends DONE exactly once, and of the trials of one claim
    only the one it ran first costs an attempt."""
    n = 40
    store = connect(server.uri, db_name)
    queue(store, n, "kill", space="whoami", sleep=0.03)
    lease = ("--heartbeat", "0.5", "--lease", "6")  # long enough to hold 3 (2 x HOLD_SLOW_S)
    args = ("--exp-key", "kill", "--spaces", TEST_SPACES, *lease)
    victim = start_worker(server.uri, db_name, *args, log=tmp_path / "victim.log")
    procs = [victim]
    try:

        def holds_several() -> bool:
            running = store.trials("kill", [TrialState.RUNNING], with_spec=False)
            return sum(d["worker"].get("pid") == victim.pid for d in running) >= 2

        wait_for(holds_several, 90, interval=0.005, what="the worker to hold several trials")
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        held = [
            d["tid"]
            for d in store.trials("kill", [TrialState.RUNNING], with_spec=False)
            if d["worker"].get("pid") == victim.pid
        ]
        assert held, "the killed worker held nothing"
        rescuer = start_worker(server.uri, db_name, *args, log=tmp_path / "rescuer.log")
        procs.append(rescuer)
        wait_for(lambda: store.count("kill", [TrialState.DONE]) == n, 90, what="every trial")
        docs = {d["tid"]: d for d in store.trials("kill")}
        assert len(docs) == n and all(d["state"] == TrialState.DONE for d in docs.values())
        outcomes = []
        for tid in held:
            history = docs[tid]["attempt_history"]
            assert len(history) == 1 and docs[tid]["attempt"] == 2, history
            outcomes.append(history[0]["outcome"])
            # only a trial the worker ran first counts; the ones held behind it do not
            assert docs[tid]["attempts"] == (1 if history[0]["outcome"] == "lost" else 0)
        assert outcomes.count("lost") <= 1 and outcomes.count("requeued") >= 1, outcomes
    finally:
        stop_all(procs)
        store.close()


def test_a_reaped_trial_s_fence_refuses_the_old_owner(server, db_name, store) -> None:
    """A held trial that was reaped (the worker paused past its lease) is not written by it
    later: the ending waiting in its batch reports the lost lease and changes nothing."""
    queue(store, 3, "fence", space="whoami", sleep=0.0)
    worker = make_worker(server, db_name, store, exp_key="fence", lease_s=4.0)
    held_start(worker)
    lease = worker._next_trial()
    assert lease is not None and len(worker._batch.held) == 1  # lease 4 s: hold 2
    worker._report(lease, worker._run(lease))
    store.jobs.update_many(
        {"exp_key": "fence", "state": int(TrialState.RUNNING)},
        {"$currentDate": {"lease_expires": True}},
    )  # as if the worker had been paused for longer than its lease
    time.sleep(0.05)
    assert len(store.reap_expired("fence")) == 2
    taken = []  # one claim takes trials of one attempt: the reaped ones and the fresh one
    while got := store.reserve_trials("other", 3, exp_key="fence").leases:
        taken += got
    assert len(taken) == 3
    worker._settle()
    for other in taken:
        doc = store.get_trial("fence", other.tid)
        assert doc["state"] == TrialState.RUNNING and doc["owner"] == "other"
