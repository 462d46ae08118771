"""bench/fleet_sim.py: the simulation runs, counts what it claims, and replays an export."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from hyperopt import base, rand, space_eval

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import fleet_objectives  # noqa: E402
import fleet_report  # noqa: E402
import fleet_sim  # noqa: E402


def test_simulated_search_is_reproducible_and_complete() -> None:
    objective = fleet_objectives.OBJECTIVES["branin"]
    first = fleet_sim.simulate(objective, "tpe-worst", workers=8, n_trials=40, seed=1)
    again = fleet_sim.simulate(objective, "tpe-worst", workers=8, n_trials=40, seed=1)
    assert first["losses"] == again["losses"]
    assert len(first["losses"]) == first["suggestions"] == 40
    assert first["max_batch"] == 8  # the first fill is one batch call
    assert min(first["losses"]) >= fleet_objectives.BRANIN_MIN


def test_at_one_worker_fleet_tpe_replays_hyperopts_tpe() -> None:
    objective = fleet_objectives.OBJECTIVES["mlp"]
    mine = fleet_sim.simulate(objective, "tpe-worst", workers=1, n_trials=30, seed=2)
    stock = fleet_sim.simulate(objective, "tpe-hyperopt", workers=1, n_trials=30, seed=2)
    assert mine["losses"] == stock["losses"]


def test_mlp_surrogate_minimum() -> None:
    best = {
        "layers": [{"units": 256, "dropout": 0.2}] * 2,
        "activation": "relu",
        "optimizer": {"name": "adam", "learning_rate": 2e-3, "beta_1": 0.9},
        "batch_size": 64,
    }
    assert fleet_objectives.mlp_loss(best) == pytest.approx(fleet_objectives.MLP_MIN)
    domain = base.Domain(fleet_objectives.mlp_loss, fleet_objectives.mlp_space())
    docs = rand.suggest(list(range(200)), domain, base.Trials(), 0)
    for doc in docs:
        params = space_eval(fleet_objectives.mlp_space(), base.spec_from_misc(doc["misc"]))
        assert fleet_objectives.mlp_loss(params) > fleet_objectives.MLP_MIN


def test_replay_of_an_export(tmp_path: Path) -> None:
    """An export as ``hyperfleet export -f json`` writes it (made here from the mlp surrogate)."""
    space = fleet_objectives.mlp_space()
    domain = base.Domain(fleet_objectives.mlp_loss, space)
    rng = np.random.default_rng(0)
    rows = []
    for doc in rand.suggest(list(range(60)), domain, base.Trials(), 0):
        params = space_eval(space, base.spec_from_misc(doc["misc"]))
        rows.append(
            {
                "tid": doc["tid"],
                "state": "done",
                "status": "ok",
                "loss": fleet_objectives.mlp_loss(params),
                **fleet_objectives.flat(params, "params"),
                "duration_s": fleet_objectives.mlp_duration(params, rng),
            }
        )
    rows.append({"tid": 60, "state": "running", "status": None, "loss": None})
    path = tmp_path / "export.json"
    path.write_text(json.dumps(rows))
    objective = fleet_objectives.replay_objective(path)
    assert objective.minimum == min(r["loss"] for r in rows if r["loss"] is not None)
    recorded = {k[len("params.") :]: v for k, v in rows[0].items() if k.startswith("params.")}
    assert objective.loss({f"params.{k}": v for k, v in recorded.items()}) == pytest.approx(
        rows[0]["loss"]
    )
    run = fleet_sim.simulate(objective, "tpe-worst", workers=4, n_trials=30, seed=0)
    assert len(run["losses"]) == 30
    assert min(run["losses"]) >= objective.minimum - 1e-12
    table = fleet_report.markdown([run], [10, 30])
    assert "tpe-worst" in table
