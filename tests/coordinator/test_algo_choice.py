"""``--algo tpe`` is the fleet-aware TPE (with ``--liar``); hyperopt's own is ``tpe-hyperopt``."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest
from hyperopt import tpe

from coordinator import fleet_tpe
from coordinator.errors import ConfigError, ExperimentMismatch
from coordinator.search import SearchConfig, algo_function, prepare_experiment
from coordinator.store import TrialStore
from search_spaces import get_space


def _config(**kw: object) -> SearchConfig:
    space = get_space("quadratic")
    return SearchConfig(
        space=space, settings=space.resolve_settings({}), exp_key="a", max_evals=5, **kw
    )


def test_tpe_is_fleet_aware_and_hyperopts_keeps_a_clear_name() -> None:
    fleet = algo_function("tpe", "mean")
    assert fleet.func is fleet_tpe.suggest and fleet.keywords == {"liar": "mean"}
    assert algo_function("tpe").keywords == {"liar": "worst"}
    assert algo_function("tpe-hyperopt") is tpe.suggest
    with pytest.raises(ConfigError, match="unknown --liar 'liest'"):
        algo_function("tpe", "liest")


def test_the_liar_is_stored_and_part_of_the_same_search_check(store: TrialStore) -> None:
    doc = prepare_experiment(store, _config(liar="best"))
    assert doc["algo"] == "tpe" and doc["liar"] == "best"
    with pytest.raises(ExperimentMismatch, match="liar='best'"):
        prepare_experiment(store, _config(liar="worst"))
    assert prepare_experiment(store, _config(liar="best"))["resumed"]


def test_an_experiment_stored_before_the_fleet_tpe_resumes_as_hyperopts_tpe(
    store: TrialStore,
) -> None:
    doc = prepare_experiment(store, _config(algo="tpe-hyperopt"))
    assert doc["liar"] is None
    old = {k: v for k, v in store.get_experiment("a").items() if k != "liar"}
    old["algo"] = "tpe"  # what 565403a wrote: hyperopt's TPE under the name tpe
    assert store.replace_experiment(old, version=old.get("version"))
    with pytest.raises(ExperimentMismatch, match="algo='tpe-hyperopt'"):
        prepare_experiment(store, _config())  # the default would silently change algorithm
    resumed = prepare_experiment(store, dataclasses.replace(_config(), algo="tpe-hyperopt"))
    assert resumed["resumed"] and resumed["algo"] == "tpe-hyperopt"


def test_anneal_fills_a_queue_of_several(store: TrialStore) -> None:
    """hyperopt's anneal takes one id per call; fmin refills the queue with several at once."""
    from hyperopt import Trials, fmin, hp

    trials = Trials()
    suggest = algo_function("anneal")
    docs = suggest([0, 1, 2], _domain(hp), trials, 7)
    assert [d["tid"] for d in docs] == [0, 1, 2]
    best = fmin(
        lambda x: x**2,
        hp.uniform("x", -1, 1),
        algo=suggest,
        max_evals=6,
        trials=trials,
        max_queue_len=3,
        rstate=np.random.default_rng(1),
        show_progressbar=False,
    )
    assert len(trials) == 6 and "x" in best


def _domain(hp: Any) -> Any:
    from hyperopt import base

    return base.Domain(lambda x: x, hp.uniform("x", -1, 1))


def test_atpe_without_its_packages_is_one_line_before_anything_is_written(
    store: TrialStore,
) -> None:
    import importlib.util

    if importlib.util.find_spec("lightgbm") and importlib.util.find_spec("sklearn"):
        pytest.skip("lightgbm and scikit-learn are installed here: nothing is missing")
    with pytest.raises(ConfigError, match="pip install lightgbm scikit-learn"):
        prepare_experiment(store, _config(algo="atpe"))
    assert store.get_experiment("a") is None


def test_a_crashing_algorithm_marks_the_experiment_failed(
    store: TrialStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A coordinator that crashes must not leave its experiment "running" for ever."""
    import coordinator.search as search

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("the algorithm fell over")

    monkeypatch.setattr(search, "algo_function", lambda *a: broken)
    with pytest.raises(RuntimeError, match="fell over"):
        search.Coordinator(store, _config()).run()
    exp = store.get_experiment("a")
    assert exp["status"] == "failed" and "fell over" in exp["error"]
    monkeypatch.undo()
    assert prepare_experiment(store, _config())["status"] == "running"
    assert "error" not in store.get_experiment("a")
