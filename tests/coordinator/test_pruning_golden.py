"""Golden tests: hyperfleet's pruning rules decide as Optuna's pruners do.

Each trace (tests/coordinator/pruning_traces.py: recorded from real ``mnist_mlp`` searches, and
synthetic edge cases — ties, NaN, a single trial, late arrivals, a fleet of four workers) is fed
event by event to ``optuna.pruners.MedianPruner``/``SuccessiveHalvingPruner``/
``HyperbandPruner`` (Optuna's in-memory study, ``trial.number`` = tid, ``study_name`` = exp
key) and to hyperfleet through the worker's real path: trials queued and leased in the embedded
MongoDB, ``TrialContextImpl.report_epoch`` with the experiment's rule (two rule instances, as
two worker processes), pruned trials finished as the worker finishes them. Every decision —
(tid, epoch, prune?) — must be the same.

Parameter mapping, not a difference in behaviour: Optuna's step is our 1-based epoch, so our
``warmup_epochs = W`` (never stop at epoch <= W) is Optuna's ``n_warmup_steps = W + 1``.
Deliberate differences (docs/pruning.md): hyperfleet never stops a trial at its last epoch
(``max_epochs``; Optuna may prune a trial that has trained fully), so the Optuna runner below
ignores such a verdict and the trial goes on to finish; a second attempt of a trial reuses the
decision recorded by the first (Optuna has no attempts), tested in test_pruning.py.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import pytest

from coordinator.pruning import PruningConfig, make_pruner
from coordinator.states import Verdict
from coordinator.store import TrialStore
from tests.conftest import queue_trials
from tests.coordinator import pruning_traces as traces
from worker.evaluate import TrialContextImpl

optuna = pytest.importorskip("optuna", reason="the golden tests need optuna (the test extra)")
optuna.logging.set_verbosity(optuna.logging.WARNING)

Decision = tuple[int, int, bool]

RULES: dict[str, dict[str, Any]] = {
    "median": {"startup_trials": 5, "warmup_epochs": 0},
    "median-warmup": {"startup_trials": 2, "warmup_epochs": 2},
    "asha": {"reduction_factor": 3, "min_epochs": 1},
    "asha-2": {"reduction_factor": 2, "min_epochs": 2},
    "hyperband": {"reduction_factor": 3, "min_epochs": 1, "max_epochs": 9},
    "hyperband-2": {"reduction_factor": 2, "min_epochs": 1, "max_epochs": 8},
}


def config_for(name: str, direction: str) -> PruningConfig:
    rule = name.split("-")[0]
    return PruningConfig(rule=rule, metric="m", direction=direction, **RULES[name])


def optuna_pruner(config: PruningConfig) -> Any:
    if config.rule == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=config.startup_trials, n_warmup_steps=config.warmup_epochs + 1
        )
    if config.rule == "asha":
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=config.min_epochs, reduction_factor=config.reduction_factor
        )
    return optuna.pruners.HyperbandPruner(
        min_resource=config.min_epochs,
        max_resource=config.max_epochs,
        reduction_factor=config.reduction_factor,
    )


def run_optuna(events: list[tuple], config: PruningConfig, exp_key: str) -> list[Decision]:
    direction = "maximize" if config.direction == "max" else "minimize"
    study = optuna.create_study(
        study_name=exp_key, direction=direction, pruner=optuna_pruner(config)
    )
    trials = [study.ask() for _ in range(traces.n_trials(events))]  # number == tid
    last: dict[int, float] = {}
    stopped: set[int] = set()
    decisions: list[Decision] = []
    for event in events:
        tid = event[1]
        if tid in stopped:
            continue
        if event[0] == "epoch":
            _, _, epoch, value = event
            trials[tid].report(value, epoch)
            last[tid] = value
            # deliberate difference: hyperfleet never stops a trial at its last epoch
            prune = trials[tid].should_prune() and not config.final(epoch)
            decisions.append((tid, epoch, prune))
            if prune:
                study.tell(trials[tid], state=optuna.trial.TrialState.PRUNED)
                stopped.add(tid)
        else:
            value = last.get(tid, math.nan)
            if math.isnan(value):
                study.tell(trials[tid], state=optuna.trial.TrialState.FAIL)
            else:
                study.tell(trials[tid], value)
            stopped.add(tid)
    return decisions


def run_hyperfleet(
    store: TrialStore, events: list[tuple], config: PruningConfig, exp_key: str
) -> list[Decision]:
    n = traces.n_trials(events)
    queue_trials(store, n, exp_key=exp_key)
    leases = {}
    for _ in range(n):
        lease = store.reserve_trial("w-golden", exp_key=exp_key)
        assert lease is not None
        leases[lease.tid] = lease
    assert sorted(leases) == list(range(n))
    workers = [make_pruner(config, store), make_pruner(config, store)]  # two worker processes
    ctxs = {
        tid: TrialContextImpl(store, lease, {}, {}, workers[tid % 2])
        for tid, lease in leases.items()
    }
    last: dict[int, float] = {}
    stopped: set[int] = set()
    decisions: list[Decision] = []
    for event in events:
        tid = event[1]
        if tid in stopped:
            continue
        ctx = ctxs[tid]
        if event[0] == "epoch":
            _, _, epoch, value = event
            verdict = ctx.report_epoch({"epoch": epoch, "m": value})
            last[tid] = value
            decisions.append((tid, epoch, verdict is Verdict.PRUNE))
            if verdict is Verdict.PRUNE:
                assert ctx.pruned is not None
                result = {"status": "ok", "loss": 1.0, "pruned": ctx.pruned.pruned_record("m")}
                assert store.finish(leases[tid], result, {})
                stopped.add(tid)
            else:
                assert verdict is Verdict.CONTINUE
        else:
            value = last.get(tid, math.nan)
            result = (
                {"status": "fail", "loss": None}
                if math.isnan(value)
                else {"status": "ok", "loss": value}
            )
            assert store.finish(leases[tid], result, {})
            stopped.add(tid)
    return decisions


_keys = itertools.count()


def check(store: TrialStore, events: list[tuple], rule: str, direction: str) -> list[Decision]:
    config = config_for(rule, direction)
    exp_key = f"golden-{rule}-{direction}-{next(_keys)}"
    expected = run_optuna(events, config, exp_key)
    got = run_hyperfleet(store, events, config, exp_key)
    assert got == expected, first_difference(got, expected)
    return got


def first_difference(got: list[Decision], expected: list[Decision]) -> str:
    for i, (a, b) in enumerate(zip(got, expected, strict=False)):
        if a != b:
            return f"decision {i}: hyperfleet {a}, optuna {b}"
    return f"{len(got)} decisions vs optuna's {len(expected)}"


SYNTHETIC = {
    "ties": traces.ties,
    "nan": traces.nan_values,
    "single": traces.single,
    "late": traces.late_arrivals,
}


@pytest.mark.parametrize("rule", list(RULES))
@pytest.mark.parametrize("trace", list(SYNTHETIC))
def test_synthetic_traces(store: TrialStore, trace: str, rule: str) -> None:
    events = SYNTHETIC[trace]()
    decisions = check(store, events, rule, "min")
    if trace == "single":
        assert not any(prune for *_, prune in decisions)  # nothing to compare with


@pytest.mark.parametrize("rule", list(RULES))
@pytest.mark.parametrize("direction", ["min", "max"])
def test_a_fleet_of_four_workers(store: TrialStore, rule: str, direction: str) -> None:
    decisions = check(store, traces.fleet(direction), rule, direction)
    assert any(prune for *_, prune in decisions)  # the rule did stop trials here


@pytest.mark.parametrize("rule", ["median", "asha", "hyperband"])
@pytest.mark.parametrize("name", sorted(traces.recorded()))
def test_traces_recorded_from_real_searches(store: TrialStore, name: str, rule: str) -> None:
    events = traces.recorded()[name]
    decisions = check(store, events, rule, "max")  # validation accuracy
    assert decisions
