"""``--algo tpe`` is the fleet-aware TPE (with ``--liar``); hyperopt's own is ``tpe-hyperopt``."""

from __future__ import annotations

import dataclasses

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
