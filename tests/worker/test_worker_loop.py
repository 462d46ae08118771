"""worker/worker.py's loop in this process (``isolate=False``) on the embedded server: it stops
through its named steps and records why, and a trial whose space it does not know is handed back
and ends the worker with a one-line error instead of a ``SystemExit``."""

from __future__ import annotations

import signal
import time

import pytest

from coordinator import rules
from coordinator.errors import WorkerMissingSpace
from coordinator.server import EmbeddedServer
from coordinator.states import TrialState
from coordinator.store import TrialStore
from tests.conftest import (
    DROP,
    TEST_SPACES,
    queue_trials,
    queued_doc,
    start_worker,
    stop_all,
    wait_for,
)
from tests.raw_store import insert_raw_documents
from worker.worker import Worker, WorkerConfig

pytestmark = pytest.mark.usefixtures("keep_signal_handlers")


def make_worker(server: EmbeddedServer, db_name: str, store: TrialStore, **kw) -> Worker:
    config = WorkerConfig(server.uri, db_name, isolate=False, spaces=(TEST_SPACES,), **kw)
    return Worker(store, config)


def stop_reason(store: TrialStore, worker: Worker) -> str:
    (row,) = [w for w in store.list_workers(alive_only=False) if w["_id"] == worker.id]
    assert row["state"] == "stopped"
    return row["stop_reason"]


def test_runs_max_trials_then_stops(server, db_name, store: TrialStore) -> None:
    queue_trials(store, 3, exp_key="loop", space="whoami", settings={"sleep": 0.0})
    worker = make_worker(server, db_name, store, exp_key="loop", max_trials=2)
    assert worker.work() == 0
    assert store.count("loop", [TrialState.DONE]) == 2
    assert store.count("loop", [TrialState.NEW]) == 1
    assert stop_reason(store, worker) == "ran --max-trials 2"


def test_stops_when_idle(server, db_name, store: TrialStore) -> None:
    worker = make_worker(server, db_name, store, exp_key="empty", idle_timeout_s=0.2)
    assert worker.work() == 0
    assert stop_reason(store, worker).endswith("(--idle-timeout)")


def test_an_unknown_space_hands_the_trial_back_and_raises(
    server, db_name, store: TrialStore
) -> None:
    queue_trials(store, 1, exp_key="elsewhere", space="not_installed_here")
    worker = make_worker(server, db_name, store, exp_key="elsewhere")
    with pytest.raises(WorkerMissingSpace, match="--spaces PATH"):
        worker.work()
    (trial,) = store.trials("elsewhere")
    assert trial["state"] == TrialState.NEW and trial["attempts"] == 0
    assert trial["attempt_history"][-1]["outcome"] == "requeued"


def test_a_signal_during_the_warm_up_stops_the_worker_at_once(
    server, db_name, store: TrialStore, tmp_path
) -> None:
    """The worker waited for a long warm-up (a Keras import, a download) to finish before it
    looked at a SIGTERM: Ctrl-C did nothing for as long as the warm-up took (review finding)."""
    store.create_experiment(
        {"_id": "sw", "space": "slow_warm", "settings": {"warm_s": 120.0}, "status": "running"}
    )
    log = tmp_path / "w.log"
    worker = start_worker(
        server.uri, db_name, "--exp-key", "sw", "--spaces", TEST_SPACES, "--warm", log=log
    )
    try:
        wait_for(lambda: "started" in log.read_text(), 60, what="the worker to start")
        time.sleep(2.0)  # inside the 120 s warm-up by now (or still importing: either way)
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(20) == 0, log.read_text()
    finally:
        stop_all([worker])
    text = log.read_text()
    assert "stopped by signal" in text and "ready" not in text, text


def test_a_worker_pinned_to_a_missing_experiment_says_so(
    server, db_name, store: TrialStore, tmp_path
) -> None:
    """A typo in --exp-key left the worker waiting forever without a word (new-user review)."""
    store.create_experiment({"_id": "q1", "space": "quadratic", "status": "running"})
    log = tmp_path / "w.log"
    worker = start_worker(server.uri, db_name, "--exp-key", "q1x", "--no-warm", log=log)
    try:
        wait_for(lambda: "no experiment 'q1x'" in log.read_text(), 60, what="the warning")
        assert worker.poll() is None  # it keeps waiting: a search may be about to start
    finally:
        stop_all([worker])
    assert "known: q1" in log.read_text()


@pytest.mark.parametrize("space", ["quadratic", None])
def test_a_pinned_worker_leaves_a_finished_search_with_a_hyperopt_shaped_trial_queued(
    server, db_name, store: TrialStore, tmp_path, space: str | None
) -> None:
    """Issue 22, item 3: one hyperopt-shaped NEW document (no named space) in a finished
    search's key, which a worker without --trust-pickled never runs: the pinned worker waited
    for it for ever. It leaves in one line; in an experiment of a named space the document is
    junk there and marked ERROR (``MalformedTrial``), else it is left for a trusted worker."""
    store.create_experiment({"_id": "fin", "space": space, "status": "done"})
    insert_raw_documents(store, [queued_doc(1, "fin", space=DROP)])
    log = tmp_path / "w.log"
    worker = start_worker(server.uri, db_name, "--exp-key", "fin", "--no-warm", log=log)
    try:
        code = worker.wait(45)
    finally:
        stop_all([worker])
    text = log.read_text()
    assert code == 0, text
    [line] = [x for x in text.splitlines() if "search 'fin' is over" in x]
    doc = store.get_trial("fin", 1)
    if space is None:
        assert "leaving 1 queued trial without a named space" in line
        assert "--trust-pickled" in line and doc["state"] == TrialState.NEW
    else:
        assert "1 queued document without a named space marked ERROR" in line
        assert doc["state"] == TrialState.ERROR and doc["error"]["type"] == rules.MALFORMED
