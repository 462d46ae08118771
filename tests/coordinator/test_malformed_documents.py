"""Issue 10, findings 2-5 (quarantine, never crash): job documents that a worker or the
coordinator cannot use (another team's space, no ``misc``, no ``tid``, no ``space``, a state
``"2"``) never end a worker, never crash or stall a search, and never count or rank as trials."""

from __future__ import annotations

import pytest

from coordinator import rules
from coordinator.inspect import load_rows, summarize
from coordinator.states import TrialState
from coordinator.store import TrialStore
from tests.conftest import (
    DROP,
    TEST_SPACES,
    hyperfleet,
    queue_trials,
    queued_doc,
    start_worker,
    stop_all,
)
from tests.raw_store import insert_raw_documents, trials_by_ids
from worker.worker import Worker, WorkerConfig

pytestmark = pytest.mark.usefixtures("keep_signal_handlers")


def test_rule_names_what_is_wrong() -> None:
    """Finding 3-5: the one rule says why a document cannot be used."""
    ok = queued_doc(1, "e")
    assert rules.trial_problem(ok) is None
    assert rules.trial_problem(ok, ["x"]) is None
    assert rules.trial_problem(queued_doc(1, "e", misc=DROP)) == "no misc"
    assert rules.trial_problem(queued_doc(1, "e", tid=DROP)) == "no tid"
    assert "state '2'" in rules.trial_problem(queued_doc(1, "e", state="2"))
    assert "space" in rules.trial_problem(queued_doc(1, "e", space=None))
    assert "not a dict" in rules.trial_problem(queued_doc(1, "e", result=[1]))
    assert "owned" in rules.trial_problem(queued_doc(1, "e", owner="someone"))
    assert "not this search's" in rules.trial_problem(ok, ["y"])
    assert "misc.tid" in rules.trial_problem(queued_doc(2, "e", misc=ok["misc"]))
    # lists the store appends to (attacker review: a $push on "x" failed with a long error)
    assert "epochs is str" in rules.trial_problem(queued_doc(1, "e", epochs="x"))
    assert "attempt_history is dict" in rules.trial_problem(queued_doc(1, "e", attempt_history={}))
    assert rules.trial_problem(queued_doc(1, "e", epochs=[], attempt_history=[])) is None


def test_worker_skips_an_unknown_space_and_serves_the_others(server, db_name, store) -> None:
    """Finding 2: an unpinned worker hands a trial of an unknown space back (not counted),
    stops serving that experiment and goes on with the others (it used to exit 1)."""
    queue_trials(store, 2, exp_key="theirs", space="not_installed_here")
    queue_trials(store, 2, exp_key="ours", space="whoami", settings={"sleep": 0.0})
    config = WorkerConfig(
        server.uri, db_name, isolate=False, spaces=(TEST_SPACES,), idle_timeout_s=0.5
    )
    assert Worker(store, config).work() == 0
    assert store.count("ours", [TrialState.DONE]) == 2
    theirs = store.trials("theirs")
    assert [d["state"] for d in theirs] == [TrialState.NEW, TrialState.NEW]
    assert all(d["attempts"] == 0 for d in theirs)
    handed_back = [d for d in theirs if d.get("attempt_history")]
    assert len(handed_back) == 1, "the experiment is skipped after its first trial"


def test_worker_quarantines_own_and_leaves_foreign_documents(server, db_name, store) -> None:
    """Finding 3: a NEW document without ``tid`` (it crashed the worker and stayed RUNNING)
    or without ``misc`` is never claimed: hyperfleet's own is marked ERROR with the reason,
    a foreign one (no experiment document) is left exactly as it was."""
    queue_trials(store, 1, exp_key="own", space="whoami", settings={"sleep": 0.0})
    own_bad = insert_raw_documents(
        store, [queued_doc(900, "own", tid=DROP), queued_doc(901, "own", misc=DROP, space="whoami")]
    )
    foreign = insert_raw_documents(store, [queued_doc(902, "foreign", tid=DROP)])
    config = WorkerConfig(
        server.uri, db_name, isolate=False, spaces=(TEST_SPACES,), idle_timeout_s=0.5
    )
    assert Worker(store, config).work() == 0
    assert store.count("own", [TrialState.DONE]) == 1
    for doc in trials_by_ids(store, own_bad):
        assert doc["state"] == TrialState.ERROR and doc["error"]["type"] == "MalformedTrial"
        assert "no tid" in doc["error"]["message"] or "no misc" in doc["error"]["message"]
    (left,) = trials_by_ids(store, foreign)
    assert left == {**queued_doc(902, "foreign", tid=DROP), "_id": foreign[0]}


def test_reaper_survives_a_running_document_without_tid(store: TrialStore) -> None:
    """Finding 3: an expired RUNNING document without ``tid`` or ``owner`` used to crash the
    reaper (a KeyError in whichever process reaped)."""
    import datetime as dt

    queue_trials(store, 1, exp_key="own")
    past = dt.datetime(2000, 1, 1)
    insert_raw_documents(
        store,
        [
            queued_doc(0, "own", tid=DROP, state=1, owner="w", lease_expires=past),
            queued_doc(7, "own", state=1, lease_expires=past),
        ],
    )
    assert store.reap_expired("own") == []
    assert store.count("own", [TrialState.ERROR]) == 2


def test_search_finishes_with_malformed_documents_in_its_experiment(
    server, db_name, store, tmp_path
) -> None:
    """Findings 3-5: NEW documents without ``misc``, without ``tid``, without ``space`` and one
    with state ``"2"`` in a running search's experiment: the coordinator neither crashes
    (KeyError) nor waits forever; the search ends with exactly max-evals of its own trials; the
    worker goes on; ``status`` never says "7/6 finished", ``top --all-states`` never ranks the
    state-"2" document first, ``export`` and ``show`` call such documents malformed."""
    key = "polluted"
    junk = [
        queued_doc(1000, key, misc=DROP),
        queued_doc(1001, key, tid=DROP),
        queued_doc(1002, key, space=DROP),
        queued_doc(1003, key, state="2", result={"status": "ok", "loss": -1e9}),
        # a sub-document _id (attacker review): the coordinator's view crashed on it
        {**queued_doc(1004, key), "_id": {"not": "an ObjectId"}, "state": TrialState.DONE},
    ]
    insert_raw_documents(store, junk)
    log = tmp_path / "w.log"
    worker = start_worker(server.uri, db_name, "--spaces", TEST_SPACES, "--trust-pickled", log=log)
    try:
        common = ("--mongo", server.uri, "--db", db_name)
        out = hyperfleet(
            "search",
            "quadratic",
            *common,
            "--exp-key",
            key,
            "--max-evals",
            "6",
            "--seed",
            "1",
            timeout=90,
        )
        assert out.returncode == 0, out.stderr
        assert "Traceback" not in out.stderr
        assert worker.poll() is None, "the worker must not exit"
        usable = [d for d in store.trials(key) if rules.trial_problem(d) is None]
        assert sum(d["state"] == TrialState.DONE for d in usable) == 6
        exp = store.get_experiment(key)
        assert exp["best_loss"] > -1e9
        summary = summarize(store, exp, [])
        assert summary.finished == 6 and summary.malformed >= 3
        status = hyperfleet("status", *common, "--exp-key", key)
        assert status.returncode == 0 and "6/6 finished" in status.stdout, status.stdout
        top = hyperfleet("top", *common, "--exp-key", key, "--all-states")
        assert top.returncode == 0, top.stderr
        first = top.stdout.splitlines()[1]
        assert "1003" not in first and "-1e+09" not in top.stdout
        rows = load_rows(store, key)
        assert {r["tid"] for r in rows if r["state"] == "malformed"} >= {1000, 1002, 1003}
        export = hyperfleet("export", *common, "--exp-key", key, "--format", "jsonl")
        assert export.returncode == 0 and export.stdout.count('"malformed"') >= 3
        show = hyperfleet("show", *common, "--exp-key", key, "1003")
        assert show.returncode == 0 and "malformed" in show.stdout, show.stdout + show.stderr
    finally:
        stop_all([worker])
    assert "Traceback" not in log.read_text()
