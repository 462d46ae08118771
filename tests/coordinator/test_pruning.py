"""Early stopping: options, rung records, the verdict flow, what a pruned trial is, and every
decision checked again from the stored data alone (the golden tests against Optuna are in
test_pruning_golden.py)."""

from __future__ import annotations

import math
import threading

import pytest

from coordinator import rules
from coordinator.errors import ConfigError
from coordinator.pruning import PruningConfig, make_pruner, resolve_pruning
from coordinator.pruning.asha import promotable
from coordinator.pruning.hyperband import bracket_budgets, bracket_of
from coordinator.pruning.median import best_so_far, decide
from coordinator.states import AttemptOutcome, TrialState, Verdict
from coordinator.store import TrialStore
from tests.conftest import queue_trials
from tests.coordinator import pruning_traces as traces
from tests.raw_store import rung_records
from worker.evaluate import Resolver, TrialContextImpl, evaluate

TEST_SPACES = "tests/spaces_for_tests.py"

# -- options ---------------------------------------------------------------------------------


def test_defaults_come_from_the_space() -> None:
    keras_loss = resolve_pruning("asha", {"objective": "val_loss", "epochs": 8})
    assert (keras_loss.metric, keras_loss.direction, keras_loss.max_epochs) == (
        "val_loss",
        "min",
        8,
    )
    keras_error = resolve_pruning("median", {"objective": "val_error", "epochs": 3})
    assert (keras_error.metric, keras_error.direction) == ("val_accuracy", "max")
    plain = resolve_pruning("median", {})
    assert (plain.metric, plain.direction, plain.max_epochs) == ("loss", "min", None)
    assert resolve_pruning("median", {}, metric="acc").direction == "max"
    assert resolve_pruning("none", {"epochs": 3}) is None


@pytest.mark.parametrize(
    "kwargs",
    [
        {"reduction_factor": 1},
        {"min_epochs": 0},
        {"direction": "up"},
    ],
)
def test_bad_pruning_options_are_config_errors(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        resolve_pruning("asha", {"epochs": 9}, **kwargs)


def test_hyperband_needs_a_largest_budget() -> None:
    with pytest.raises(ConfigError, match="--prune-max-epochs"):
        resolve_pruning("hyperband", {})
    with pytest.raises(ConfigError, match="below"):
        resolve_pruning("hyperband", {"epochs": 2}, min_epochs=3)


def test_config_round_trips_through_the_experiment_document() -> None:
    config = resolve_pruning("hyperband", {"epochs": 9}, warmup_epochs=1)
    assert PruningConfig.from_doc(config.to_doc()) == config
    assert PruningConfig.from_doc(None) is None
    assert PruningConfig.from_doc({"rule": "none"}) is None


# -- the rules' arithmetic -------------------------------------------------------------------


def test_promotion_keeps_the_best_third_and_ties() -> None:
    assert promotable(0.5, [0.5], 3, "min") == (True, 0.5)  # alone: the best
    assert promotable(0.6, [0.5, 0.6], 3, "min") == (False, 0.5)  # < η values: only the best
    assert promotable(0.5, [0.5, 0.5, 0.9], 3, "min") == (True, 0.5)  # a tie goes on
    assert promotable(0.9, [0.1, 0.2, 0.3, 0.9, 0.95, 0.97], 3, "max") == (False, 0.95)


def test_strict_promotion_waits_for_eta_values() -> None:
    """``--promote`` (Li et al.'s ASHA): the best 1/η of fewer than η values is nobody; from η
    values on, the same cut as the stopping rule."""
    assert promotable(0.5, [0.5], 3, "min", strict=True) == (False, None)
    assert promotable(0.1, [0.5, 0.1], 3, "min", strict=True) == (False, None)
    assert promotable(0.1, [0.5, 0.1, 0.7], 3, "min", strict=True) == (True, 0.1)
    assert promotable(0.5, [0.5, 0.1, 0.7], 3, "min", strict=True) == (False, 0.1)
    assert promotable(0.95, [0.1, 0.9, 0.95, 0.97], 2, "max", strict=True) == (True, 0.95)
    assert promotable(0.9, [0.1, 0.9, 0.95, 0.97], 2, "max", strict=True) == (False, 0.95)


def test_median_compares_the_best_so_far() -> None:
    assert best_so_far([0.9, 0.5, 0.7], "min") == 0.5
    assert best_so_far([math.nan, 0.2], "max") == 0.2
    assert decide(0.5, [0.4, 0.6, 0.8], "min") == (False, 0.6)
    assert decide(0.7, [0.4, 0.6, 0.8], "min") == (True, 0.6)
    assert decide(math.nan, [0.4], "min") == (True, None)
    assert decide(0.7, [math.nan], "min") == (False, None)


@pytest.mark.parametrize(("low", "high", "eta"), [(1, 9, 3), (1, 8, 2), (2, 50, 3), (1, 1, 3)])
def test_hyperband_brackets_are_optunas(low: int, high: int, eta: int) -> None:
    optuna = pytest.importorskip("optuna")
    pruner = optuna.pruners.HyperbandPruner(
        min_resource=low, max_resource=high, reduction_factor=eta
    )
    study = optuna.create_study(study_name="brackets", pruner=pruner)
    pruner._try_initialization(study)
    config = PruningConfig("hyperband", "m", "min", min_epochs=low, max_epochs=high)
    config = PruningConfig(**{**config.to_doc(), "reduction_factor": eta})
    budgets = bracket_budgets(config)
    assert budgets == pruner._trial_allocation_budgets
    for tid in range(50):
        trial = optuna.trial.create_trial(state=optuna.trial.TrialState.RUNNING)
        trial.number = tid
        assert bracket_of("brackets", tid, budgets) == pruner._get_bracket_id(study, trial)


# -- rung records ------------------------------------------------------------------------------


def _record(tid: int, decision: str, value: float = 0.5) -> dict:
    return {
        "_id": f"exp|0|0|{tid}",
        "exp_key": "exp",
        "bracket": 0,
        "rung": 0,
        "tid": tid,
        "value": value,
        "decision": decision,
    }


def test_a_rung_record_is_written_once_and_the_first_decision_stands(store: TrialStore) -> None:
    first = store.record_rung(_record(1, "continue"))
    again = store.record_rung(_record(1, "prune", 0.9))
    assert first["decision"] == again["decision"] == "continue"
    assert store.rung_values("exp", 0, 0) == {1: 0.5}
    assert len(rung_records(store, "exp")) == 1


def test_concurrent_writers_of_one_key_agree(store: TrialStore) -> None:
    answers: list[str] = []

    def write(i: int) -> None:
        answers.append(store.record_rung(_record(7, f"d{i}"))["decision"])

    threads = [threading.Thread(target=write, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(answers)) == 1 and len(rung_records(store, "exp")) == 1


def test_a_second_attempt_reuses_the_first_attempts_decision(store: TrialStore) -> None:
    """Deliberate difference from Optuna (which has no attempts): a trial handed to another
    worker after its first one was lost gets, at each rung, the decision recorded first."""
    queue_trials(store, 2, exp_key="again")
    config = PruningConfig("asha", "m", "min")
    a = store.reserve_trial("w1", exp_key="again")
    b = store.reserve_trial("w1", exp_key="again")
    assert (
        TrialContextImpl(store, a, {}, {}, make_pruner(config, store)).report_epoch(
            {"epoch": 1, "m": 0.1}
        )
        is Verdict.CONTINUE
    )
    first = TrialContextImpl(store, b, {}, {}, make_pruner(config, store))
    assert first.report_epoch({"epoch": 1, "m": 0.9}) is Verdict.PRUNE
    # b's worker is lost before it writes the result; its next attempt does better at rung 0
    store.release(b, AttemptOutcome.LOST, "test")
    b2 = store.reserve_trial("w2", exp_key="again")
    assert b2 is not None and b2.tid == b.tid
    second = TrialContextImpl(store, b2, {}, {}, make_pruner(config, store))
    assert second.report_epoch({"epoch": 1, "m": 0.05}) is Verdict.PRUNE  # the record stands
    assert second.pruned is not None and second.pruned.threshold == 0.1


# -- reproducible from the stored data alone ---------------------------------------------------


@pytest.mark.parametrize("rule", ["median", "asha", "hyperband"])
def test_every_decision_can_be_checked_from_the_stored_data(store: TrialStore, rule: str) -> None:
    from tests.coordinator.test_pruning_golden import config_for, run_hyperfleet

    config = config_for(rule, "min")
    exp_key = f"replay-{rule}"
    decisions = run_hyperfleet(store, traces.fleet("min"), config, exp_key)
    records = rung_records(store, exp_key)
    assert len(records) >= sum(prune for *_, prune in decisions) > 0
    curves = {d["tid"]: d for d in store.trials(exp_key)}
    for r in records:
        if rule == "median":
            reference = [
                next(e["m"] for e in curves[t]["epochs"] if e["epoch"] == r["epoch"])
                for t in r["seen"]
            ]
            for t in r["seen"]:  # only finished, unpruned trials are compared with
                assert curves[t]["state"] == TrialState.DONE and not rules.pruned(curves[t])
            best = math.nan if r["best"] is None else r["best"]
            prune, threshold = decide(best, reference, "min")
        else:
            at_rung = store.rung_values(exp_key, r["bracket"], r["rung"])
            others = [at_rung[t] for t in r["seen"]]
            if r["value"] is None:
                prune, threshold = True, None
            else:
                keep, threshold = promotable(r["value"], [*others, r["value"]], 3, "min")
                prune = not keep
        prune = prune and not r.get("final")  # the last epoch is never stopped
        assert (prune, threshold) == (r["decision"] == "prune", r["threshold"]), r


def test_the_last_epoch_is_never_stopped(store: TrialStore) -> None:
    queue_trials(store, 2, exp_key="last")
    config = PruningConfig("asha", "m", "min", min_epochs=3, max_epochs=3)
    a, b = (store.reserve_trial("w", exp_key="last") for _ in range(2))
    for lease, value in ((a, 0.1), (b, 0.9)):
        ctx = TrialContextImpl(store, lease, {}, {}, make_pruner(config, store))
        for epoch in (1, 2, 3):
            assert ctx.report_epoch({"epoch": epoch, "m": value}) is Verdict.CONTINUE
    [record] = [r for r in rung_records(store, "last") if r["tid"] == b.tid]
    assert record["final"] and record["decision"] == "continue" and record["threshold"] == 0.1
    assert store.rung_values("last", 0, 0) == {a.tid: 0.1, b.tid: 0.9}  # both compete


# -- the verdict flow and what a pruned trial is -------------------------------------------------


def _queue_epochs(store: TrialStore, exp_key: str, n: int, pruning: PruningConfig | None):
    queue_trials(store, n, exp_key=exp_key, space="epochs", settings={"epochs": 4, "sleep": 0.0})
    store.annotate_experiment(exp_key, {"pruning": pruning and pruning.to_doc()})


def test_a_pruned_trial_ends_done_with_its_pruned_record(store: TrialStore) -> None:
    # max_epochs as `--prune asha` sets it from the space's epochs: the last epoch (4) is never
    # pruned. (Without it, trials reserved in some random orders were pruned at epoch 4: CI.)
    config = PruningConfig("asha", "loss", "min", reduction_factor=2, max_epochs=4)
    _queue_epochs(store, "flow", 6, config)
    resolver = Resolver(store, (TEST_SPACES,))
    outcomes = []
    for _ in range(6):
        lease = store.reserve_trial("w", exp_key="flow")
        outcome = evaluate(resolver, store, lease, {})
        assert store.finish(lease, outcome.result, {"params": outcome.params})
        outcomes.append(outcome)
    pruned = [o for o in outcomes if "pruned" in o.result]
    assert pruned, [o.result for o in outcomes]
    for o in pruned:
        record = o.result["pruned"]
        assert record["rule"] == "asha" and record["metric"] == "loss"
        assert record["epoch"] < 4 and record["threshold"] is not None
        assert o.result["stopped_early"] and o.result["status"] == "ok"
    docs = store.trials("flow")
    best = rules.best_trial(docs)
    assert best is not None and rules.pruned(best) is None
    assert store.best_trial("flow")["tid"] == best["tid"]
    assert all(rules.ok_loss(d) is not None for d in docs)  # TPE learns from pruned ones too


def test_pruned_trials_are_never_the_best(store: TrialStore) -> None:
    docs = [
        {"tid": 0, "state": 2, "result": {"status": "ok", "loss": 0.1, "pruned": {"epoch": 1}}},
        {"tid": 1, "state": 2, "result": {"status": "ok", "loss": 0.5}},
    ]
    assert rules.best_trial(docs)["tid"] == 1
    assert rules.best_trial(docs[:1]) is None


def test_report_epoch_answers_cancelled_and_lease_lost(store: TrialStore) -> None:
    _queue_epochs(store, "verdicts", 2, None)
    lease = store.reserve_trial("w", exp_key="verdicts")
    ctx = TrialContextImpl(store, lease, {}, {})
    assert ctx.report_epoch({"epoch": 1, "loss": 1.0}) is Verdict.CONTINUE
    store.cancel_experiment("verdicts", settle_s=0.0)
    ctx._stop_checked = 0.0  # the cancel flag is read at most every 2 s
    assert ctx.report_epoch({"epoch": 2, "loss": 1.0}) is Verdict.CANCELLED
    assert ctx.should_stop()
    other = store.reserve_trial("w", exp_key="verdicts")
    assert other is None  # the cancel emptied the queue
    assert store.finish(lease, {"status": "ok", "loss": 1.0}, {})
    lost = TrialContextImpl(store, lease, {}, {})
    assert lost.report_epoch({"epoch": 3, "loss": 1.0}) is Verdict.LEASE_LOST
    assert lost.should_stop()


def test_a_trial_pruned_for_a_nan_metric_is_a_pruned_trial_with_a_bad_loss(
    store: TrialStore,
) -> None:
    """Issue 22, item 9: a trial whose metric is NaN is stopped by the rule; it used to end as a
    failure (NaN loss) with no ``result.pruned``, so status, top and TPE did not see it as
    pruned. Now it is DONE, ok, pruned, with the worst loss the experiment had (TPE: bad)."""
    config = PruningConfig("asha", "loss", "min", reduction_factor=2, max_epochs=4)
    queue_trials(store, 8, exp_key="nan", space="nan_epochs", settings={"epochs": 4, "above": 0})
    store.annotate_experiment("nan", {"pruning": config.to_doc()})
    resolver = Resolver(store, (TEST_SPACES,))
    for _ in range(8):
        lease = store.reserve_trial("w", exp_key="nan")
        earlier = [rules.ok_loss(d) for d in store.trials("nan", [TrialState.DONE])]
        outcome = evaluate(resolver, store, lease, {})
        assert store.finish(lease, outcome.result, {"params": outcome.params})
        if lease.doc["misc"]["vals"]["x"][0] > 0:  # diverged: NaN from its first epoch
            result = outcome.result
            assert result["status"] == "ok" and "failure" not in result, result
            assert result["pruned"]["value"] is None and result["pruned"]["stand_in_loss"]
            finite = [x for x in earlier if x is not None]
            assert result["loss"] == (max(finite) if finite else 1e12)
    docs = store.trials("nan")
    nan = [d for d in docs if d["misc"]["vals"]["x"][0] > 0]
    assert nan, "the seed drew no x > 0"
    stopped = [d for d in docs if d["result"].get("stopped_early")]
    assert {d["tid"] for d in stopped} == {d["tid"] for d in docs if rules.pruned(d)}
    assert all(d["state"] == TrialState.DONE and rules.pruned(d) for d in nan)
    assert all(rules.ok_loss(d) is not None for d in docs)  # ranked, shown by top, seen by TPE
    ranked = rules.ranked(docs)
    assert len(ranked) == len(docs) and all(rules.pruned(d) for d in ranked[-len(nan) :])
    full = [d["result"]["loss"] for d in docs if not rules.pruned(d)]
    assert all(d["result"]["loss"] >= max(full, default=0) for d in nan)  # TPE: the bad side
