"""Every Keras trial document records where its time went (``timing``), a warmed worker's first
trial pays no imports, and ``--steps-per-execution`` is recorded. Real workers, real Keras."""

from __future__ import annotations

from pathlib import Path

import pytest

from coordinator.inspect import trial_row
from coordinator.server import EmbeddedServer
from coordinator.store import TrialStore
from tests.worker.test_keras_workers import TINY, run_searches

PHASES = {
    "import_s",
    "data_s",
    "build_s",
    "first_step_s",
    "first_val_step_s",
    "validate_s",
    "fit_s",
    "compile_s",
    "steady_s",
    "save_s",
    "evaluate_s",
    "outside_training_s",
    "wait_child_s",
    "run_s",
    "compile_reused",  # issue 20: 1 when the trial trained a cached compiled model
    "compile_cache_size",
    "checkpoint_s",  # issue 21: what training waited for checkpoints
    "checkpoint_write_s",  # and the writes beside the next epochs
}


def test_phases_in_every_trial_and_a_warm_first_trial(
    server: EmbeddedServer, store: TrialStore, db_name: str, tmp_path: Path
) -> None:
    warm = ("--exp-key", "phases", "--threads", "1", "--warm", "--steps-per-execution", "4")
    done = run_searches(server.uri, db_name, [("mnist_mlp", "phases", 2, TINY)], [warm], tmp_path)
    assert done[0].returncode == 0, done[0].stderr
    docs = store.trials("phases")
    assert len(docs) == 2
    for doc in docs:
        timing = doc["timing"]
        assert set(timing) == PHASES, timing
        assert all(v >= 0 for v in timing.values())
        assert abs(timing["fit_s"] - timing["steady_s"] - timing["compile_s"]) < 1e-3
        # run_s adds the worker's wait on its child to the trial's duration: seconds on a
        # loaded machine, never the whole trial again
        assert timing["evaluate_s"] <= timing["run_s"] + 1e-3 <= doc["duration_s"] + 5
        assert "timing" not in doc["result"]
        assert doc["worker"]["steps_per_execution"] == 4
        assert timing["compile_reused"] in (0, 1) and timing["compile_cache_size"] >= 1
        assert doc["result"]["compiled"]["reused"] == bool(timing["compile_reused"])
        row = trial_row(doc)
        assert row["timing.steady_s"] == timing["steady_s"]
    # warmed before the first reservation: Keras was imported, the data loaded
    assert all(d["timing"]["import_s"] == 0.0 for d in docs)
    log = (tmp_path / "worker-0.log").read_text()
    assert "ready" in log


def test_cold_worker_first_trial_pays_the_imports(
    server: EmbeddedServer, store: TrialStore, db_name: str, tmp_path: Path
) -> None:
    cold = ("--exp-key", "cold", "--threads", "1", "--no-warm")
    done = run_searches(server.uri, db_name, [("mnist_mlp", "cold", 2, TINY)], [cold], tmp_path)
    assert done[0].returncode == 0, done[0].stderr
    first, second = sorted(store.trials("cold"), key=lambda d: d["book_time"])
    assert first["timing"]["import_s"] > 0.1 and second["timing"]["import_s"] == 0.0
    assert second["worker"]["steps_per_execution"] == 32  # the default


def test_warm_targets_follow_the_experiments(
    store: TrialStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pinned: that experiment's space with its settings; unpinned: the running experiments'
    Keras spaces; a non-Keras space or an unknown one is not warmed (no Keras import)."""
    from worker import warm

    monkeypatch.setattr(warm, "EXPERIMENT_WAIT_S", 0.0)
    assert warm._targets(store, "absent") == []
    store.create_experiment({"_id": "q", "space": "quadratic", "status": "running"})
    store.create_experiment({"_id": "ghost", "space": "no_such_space", "status": "running"})
    store.create_experiment(
        {"_id": "m", "space": "mnist_mlp", "status": "running", "settings": {"train_size": 500}}
    )
    store.create_experiment({"_id": "old", "space": "mnist_cnn", "status": "done"})
    assert warm._targets(store, "q") == []
    [(space, settings)] = warm._targets(store, None)
    assert space.name == "mnist_mlp" and settings["train_size"] == 500
    [(space, _)] = warm._targets(store, "old")
    assert space.name == "mnist_cnn"
