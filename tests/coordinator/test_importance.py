"""``hyperfleet importance``: Optuna's evaluators fed with our trials, checked on objectives whose
answer is known (loss of x only; of x and y with a known split) and against Optuna's own study on
the same objective."""

from __future__ import annotations

import json
import math
import uuid
from pathlib import Path

import numpy as np
import optuna
import pytest
from hyperopt import Trials, fmin, hp, rand

from coordinator.importance import importances
from tests.conftest import hyperfleet
from tests.coordinator.importance_spaces import xyz_space
from tests.raw_store import insert_raw_documents

SPACES = str(Path(__file__).with_name("importance_spaces.py"))
SPACE = xyz_space({})


def hyperopt_trials(objective, space=SPACE, n: int = 150, seed: int = 0) -> list[dict]:
    """Trial documents as hyperopt writes them (random search, a fixed seed)."""
    trials = Trials()
    fmin(
        objective,
        space,
        algo=rand.suggest,
        max_evals=n,
        trials=trials,
        rstate=np.random.default_rng(seed),
        show_progressbar=False,
    )
    return trials.trials


def shares(docs, space=SPACE) -> dict[str, float]:
    return {r.label: r.share for r in importances(docs, space).importances}


def test_loss_of_x_only_ranks_x_first_with_nearly_all_of_it() -> None:
    got = shares(hyperopt_trials(lambda p: p["x"] ** 2))
    assert list(got)[0] == "x"
    assert got["x"] > 0.9
    assert math.isclose(sum(got.values()), 1.0)


def test_x_and_y_of_equal_weight_split_evenly_and_noise_gets_little() -> None:
    got = shares(hyperopt_trials(lambda p: p["x"] ** 2 + p["y"] ** 2, n=300))
    assert 0.3 < got["x"] < 0.7 and 0.3 < got["y"] < 0.7, got
    assert got["z"] < 0.1, got


def test_x_weighted_four_times_y_ranks_x_then_y_then_z() -> None:
    got = shares(hyperopt_trials(lambda p: 4 * p["x"] ** 2 + p["y"] ** 2))
    assert list(got) == ["x", "y", "z"], got
    assert got["x"] > 2 * got["y"]


def test_agrees_with_optunas_own_study_of_the_same_objective() -> None:
    def loss(x: float, y: float) -> float:
        return 4 * x**2 + y**2

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(
        lambda t: (
            loss(
                t.suggest_float("x", -5, 5),
                t.suggest_float("y", -5, 5),
            )
            + 0 * t.suggest_float("z", math.exp(-5), 1, log=True)
        ),
        n_trials=150,
    )
    theirs = optuna.importance.get_param_importances(study)
    ours = shares(hyperopt_trials(lambda p: loss(p["x"], p["y"])))
    assert list(ours)[:2] == list(theirs)[:2] == ["x", "y"]


def test_conditional_parameter_is_assessed_where_active() -> None:
    space = {
        "opt": hp.choice(
            "opt", [{"name": "adam", "lr": hp.loguniform("lr", -8, 0)}, {"name": "sgd"}]
        ),
        "x": hp.uniform("x", -1, 1),
    }

    def loss(p):
        o = p["opt"]
        return (abs(math.log(o["lr"]) + 4) if o["name"] == "adam" else 3.0) + 0.1 * p["x"] ** 2

    report = importances(hyperopt_trials(loss, space), space)
    first = report.importances[0]
    assert first.label == "lr" and 0 < first.active < report.trials


def test_pruned_trials_are_left_out() -> None:
    docs = hyperopt_trials(lambda p: p["x"] ** 2, n=40)
    for d in docs[:10]:  # as if an early-stopping rule had stopped them: partial, huge losses
        d["result"] = {**d["result"], "loss": 1e6 - d["tid"], "pruned": {"epoch": 1}}
    report = importances(docs, SPACE)
    assert (report.trials, report.pruned) == (30, 10)


def test_too_few_trials_is_one_clear_error() -> None:
    from coordinator.errors import ConfigError

    with pytest.raises(ConfigError, match="at least 10 full successful trials"):
        importances(hyperopt_trials(lambda p: p["x"] ** 2, n=5), SPACE)


# -- the command -------------------------------------------------------------------------------


@pytest.fixture
def experiment(server, store, db_name):
    exp_key = f"imp-{uuid.uuid4().hex[:6]}"
    store.create_experiment({"_id": exp_key, "space": "imp_xyz", "settings": {}, "status": "done"})
    docs = hyperopt_trials(lambda p: 4 * p["x"] ** 2 + p["y"] ** 2, n=80)
    for d in docs:
        d.update(exp_key=exp_key, space="imp_xyz")
        d["misc"]["workdir"] = None
    insert_raw_documents(store, docs)
    return {"uri": server.uri, "db": db_name, "exp_key": exp_key}


def test_command_ranks_x_first(experiment) -> None:
    e = experiment
    out = hyperfleet(
        "importance", "--mongo", e["uri"], "--db", e["db"], "--exp-key", e["exp_key"],
        "--spaces", SPACES,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert "80 full trials, importance by ped-anova (Optuna)" in lines[0]
    assert [line.split()[0] for line in lines[1:]] == ["x", "y", "z"]
    assert "Warning" not in out.stderr and "Experimental" not in out.stderr, out.stderr


def test_command_json_and_without_the_space(experiment) -> None:
    e = experiment  # no --spaces: the observed ranges, linear
    out = hyperfleet(
        "importance", "--mongo", e["uri"], "--db", e["db"], "--exp-key", e["exp_key"], "--json"
    )
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert list(got["importances"])[0] == "x" and got["trials"] == 80


def test_command_fanova_without_scikit_learn_says_what_to_install(experiment) -> None:
    pytest.importorskip("optuna")
    try:
        import sklearn  # noqa: F401

        pytest.skip("scikit-learn is installed here")
    except ImportError:
        pass
    e = experiment
    out = hyperfleet(
        "importance", "--mongo", e["uri"], "--db", e["db"], "--exp-key", e["exp_key"],
        "--method", "fanova",
    )  # fmt: skip
    assert out.returncode == 2
    assert "pip install scikit-learn" in out.stderr and "Traceback" not in out.stderr
