"""Hostile-tester findings: a NaN in a queued trial's ``misc.vals``, an ill-typed experiment
``version``, ``best`` and ``search`` disagreeing on a forged trial, and pruning on a metric
the trials never report."""

from __future__ import annotations

import logging
import math

import pytest

from coordinator import fleet_tpe, rules
from coordinator.pruning import AttemptJudge, Decision, PruningConfig
from coordinator.rules import no_success_reason
from coordinator.states import ExperimentStatus, TrialState
from tests.conftest import (
    TEST_SPACES,
    hyperfleet,
    queued_doc,
    search_quadratic,
    start_worker,
    stop_all,
)
from tests.raw_store import insert_raw_documents

pytestmark = pytest.mark.usefixtures("keep_signal_handlers")


def with_vals(n: int, value, exp_key: str = "e") -> dict:
    return queued_doc(
        n, exp_key, misc={"tid": n, "cmd": None, "idxs": {"x": [n]}, "vals": {"x": [value]}}
    )


def test_rule_refuses_non_finite_vals_odd_shapes_and_negative_tids() -> None:
    for bad in (math.nan, math.inf, -math.inf, [0.5], {"a": 1}):
        problem = rules.trial_problem(with_vals(8, bad))
        assert problem is not None and "misc.vals" in problem, bad
    assert rules.trial_problem(with_vals(8, 0.25)) is None
    assert "negative" in rules.trial_problem(
        queued_doc(-7, "e", misc={**queued_doc(-7, "e")["misc"], "tid": -7})
    )


def test_fleet_tpe_never_shows_a_non_finite_value_to_tpe() -> None:
    """Defensive: even a view that lets a NaN through does not reach TPE's assertion."""
    from hyperopt import Trials, fmin, hp, rand
    from hyperopt.base import Domain

    space = {"x": hp.uniform("x", -1, 1)}
    real = Trials()
    fmin(
        lambda p: p["x"] ** 2,
        space,
        rand.suggest,
        max_evals=6,
        trials=real,
        rstate=__import__("numpy").random.default_rng(0),
        show_progressbar=False,
    )
    bad = {**real.trials[0], "tid": 900008, "state": 0, "result": {"status": "new"}}
    bad["misc"] = {**bad["misc"], "tid": 900008, "idxs": {"x": [900008]}, "vals": {"x": [math.nan]}}

    class View:
        trials = [*real.trials, bad]
        new_trial_docs = real.new_trial_docs

    out = fleet_tpe.suggest([100], Domain(lambda p: 0.0, space), View(), 1, n_startup_jobs=2)
    assert len(out) == 1 and math.isfinite(out[0]["misc"]["vals"]["x"][0])


def test_search_finishes_with_a_nan_valued_queued_trial(server, db_name, store, tmp_path) -> None:
    key = "nanvals"
    insert_raw_documents(
        store, [with_vals(900008, math.nan, key), with_vals(900009, math.inf, key)]
    )
    log = tmp_path / "w.log"
    worker = start_worker(server.uri, db_name, "--spaces", TEST_SPACES, log=log)
    try:
        out = search_quadratic(
            server.uri, db_name, key, "--max-evals", "8", "--seed", "3", timeout=90
        )
        assert out.returncode == 0, out.stderr
        assert "Traceback" not in out.stderr
    finally:
        stop_all([worker])
    usable = [d for d in store.trials(key) if rules.trial_problem(d) is None]
    assert sum(d["state"] == TrialState.DONE for d in usable) == 8
    assert "Traceback" not in log.read_text()


def test_experiment_writes_survive_a_non_numeric_version(store, caplog) -> None:
    store.create_experiment({"_id": "v", "status": "running", "space": "quadratic"})
    store.experiments.update_one({"_id": "v"}, {"$set": {"version": "v"}})
    with caplog.at_level(logging.WARNING):
        assert store.finish_experiment("v", ExperimentStatus.DONE, {"best_loss": 1.0})
    exp = store.get_experiment("v")
    assert exp["status"] == "done" and exp["version"] == 1 and exp["best_loss"] == 1.0
    assert sum("version" in r.getMessage() for r in caplog.records) == 1
    store.experiments.update_one({"_id": "v"}, {"$set": {"version": [1]}})
    assert store.annotate_experiment("v", {"note": 1})
    assert store.get_experiment("v")["version"] == 1
    store.experiments.update_one({"_id": "v"}, {"$set": {"version": "v"}})
    store.cancel_experiment("v", settle_s=0)
    assert store.get_experiment("v")["version"] == 1
    store.experiments.update_one({"_id": "v"}, {"$set": {"version": "v"}})
    assert store.replace_experiment({"_id": "v", "status": "running"}, version="v")
    assert store.get_experiment("v")["version"] == 1


def test_search_finishes_when_the_experiment_version_is_not_a_number(
    server, db_name, store, tmp_path
) -> None:
    key = "badversion"
    store.create_experiment({"_id": key, "status": "done", "space": "quadratic"})
    store.experiments.update_one({"_id": key}, {"$set": {"version": "v"}})
    worker = start_worker(server.uri, db_name, "--spaces", TEST_SPACES, log=tmp_path / "w.log")
    try:
        out = search_quadratic(server.uri, db_name, key, "--max-evals", "3", "--force", timeout=90)
    finally:
        stop_all([worker])
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr
    assert store.get_experiment(key)["status"] == "done"


def test_best_and_search_name_the_same_trial(server, db_name, store, tmp_path) -> None:
    key = "forged"
    forged = queued_doc(
        -7,
        key,
        state=int(TrialState.DONE),
        result={"status": "ok", "loss": -1e308},
        misc={"tid": -7, "cmd": None, "idxs": {"x": [-7]}, "vals": {"x": [0.0]}},
    )
    other_space = queued_doc(
        777777,
        key,
        state=int(TrialState.DONE),
        result={"status": "ok", "loss": -1e300},
        space="someone_elses",
    )
    insert_raw_documents(store, [forged, other_space])
    worker = start_worker(server.uri, db_name, "--spaces", TEST_SPACES, log=tmp_path / "w.log")
    common = ("--mongo", server.uri, "--db", db_name)
    try:
        out = hyperfleet(
            "search", "quadratic", *common, "--exp-key", key, "--max-evals", "4", timeout=90
        )
        assert out.returncode == 0, out.stderr
    finally:
        stop_all([worker])
    best_tid = store.get_experiment(key)["best_tid"]
    assert best_tid not in (-7, 777777)
    assert f"best trial: tid {best_tid}," in out.stdout
    best = hyperfleet("best", *common, "--exp-key", key)
    assert best.returncode == 0, best.stderr
    assert f"best trial: tid {best_tid}," in best.stdout, best.stdout
    assert store.best_trial(key)["tid"] == best_tid


class _AlwaysPrune:
    config = PruningConfig(rule="median", metric="nosuch", direction="min")

    def __init__(self) -> None:
        self.asked = 0

    def judge(self, report):
        self.asked += 1
        return Decision(True, "median", report.epoch, report.value)


def test_an_unreported_metric_never_prunes_and_is_logged_once(caplog) -> None:
    pruner = _AlwaysPrune()
    judge = AttemptJudge(pruner, "exp-nosuch", 1, 1)
    with caplog.at_level(logging.WARNING):
        for epoch in (1, 2, 3):
            assert judge.report({"epoch": epoch, "loss": 0.5, "acc": 0.9}) is None
        assert judge.report({"epoch": 4, "nosuch": "text"}) is None
    assert pruner.asked == 0
    warned = [r.getMessage() for r in caplog.records if "nosuch" in r.getMessage()]
    assert len(warned) == 1 and "acc, loss" in warned[0], warned
    decision = judge.report({"epoch": 5, "nosuch": 1.0})
    assert decision is not None and decision.prune and pruner.asked == 1


def test_end_message_says_what_happened() -> None:
    pruned = queued_doc(
        1, "e", state=2, result={"status": "ok", "loss": 1.0, "pruned": {"epoch": 1}}
    )
    text = no_success_reason([pruned, {**pruned, "tid": 2, "misc": {**pruned["misc"], "tid": 2}}])
    assert "2 pruned" in text and "state: 3" not in text
    failed = queued_doc(
        3,
        "e",
        state=3,
        result={"status": "fail"},
        misc={"tid": 3, "cmd": None, "idxs": {"x": [3]}, "vals": {"x": [0.5]}},
    )
    assert "1 failed" in no_success_reason([failed]) and "state: 3" in no_success_reason([failed])
    assert no_success_reason([]) == "no trial ran"


def test_a_search_whose_trials_all_failed_says_so(server, db_name, tmp_path) -> None:
    """Issue 22, item 8: the search said "no trial succeeded: no trial ran" although its
    trials ran and failed (ERROR trials are not in hyperopt's lists, which it counted)."""
    worker = start_worker(server.uri, db_name, "--spaces", TEST_SPACES, log=tmp_path / "w.log")
    try:
        out = hyperfleet(
            "search", "boom", "--mongo", server.uri, "--db", db_name, "--spaces", TEST_SPACES,
            "--set", "threshold=-2", "--max-evals", "3", "--exp-key", "allfail", "--no-progress",
        )  # fmt: skip
    finally:
        stop_all([worker])
    text = out.stdout + out.stderr
    assert "3 failed" in text and "no trial ran" not in text, text[-2000:]
