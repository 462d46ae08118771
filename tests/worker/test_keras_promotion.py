"""Promotion-based ASHA on real Keras trials (issue 21): ``mnist_mlp`` with ``--prune asha
--promote``, one real worker, real MNIST. A Keras trial paused at a rung saves a checkpoint of
that epoch whatever ``--checkpoint-every`` says (``result.pruned.paused`` is only written when
it did), and a promoted one resumes from it: its learning curve continues without a repeated
epoch. Slow tier (about a minute on 2 cores)."""

from __future__ import annotations

from pathlib import Path

import pymongo
import pytest

from coordinator.server import EmbeddedServer
from coordinator.states import TrialState
from tests.conftest import hyperfleet, start_worker, stop_all

pytestmark = pytest.mark.slow


def test_keras_trials_pause_at_a_rung_and_resume_when_promoted(
    server: EmbeddedServer, db_name: str, tmp_path: Path
) -> None:
    key = "keras-promote"
    common = ["--mongo", server.uri, "--db", db_name]
    worker = start_worker(
        server.uri, db_name, "--exp-key", key, "--threads", "1", "--checkpoint-every", "5",
        "--idle-timeout", "120", log=tmp_path / "worker.log",
    )  # fmt: skip
    try:
        search = hyperfleet(
            "search", "mnist_mlp", *common, "--exp-key", key, "--max-evals", "8",
            "--set", "epochs=3", "--set", "train_size=500", "--set", "val_size=500",
            "--prune", "asha", "--promote", "--algo", "rand", "--seed", "1", "--no-progress",
            timeout=600,
        )  # fmt: skip
    finally:
        stop_all([worker])
    assert search.returncode == 0, search.stderr
    log = (tmp_path / "worker.log").read_text()
    db = pymongo.MongoClient(server.uri)[db_name]
    trials = list(db.jobs.find({"exp_key": key}))
    assert len(trials) == 8 and all(d["state"] == TrialState.DONE for d in trials)
    promoted = [d for d in trials if d.get("promotions")]
    # with --checkpoint-every 5 no epoch of a 3-epoch trial is checkpointed but the paused one:
    # every pause was taken (none fell back to "prune" for want of a checkpoint)
    # (the search's end turns the records of trials still paused into "prune" with that why)
    ended = "still paused when the search ended"
    records = list(db.rungs.find({"exp_key": key}))
    taken = [r for r in records if r["decision"] in ("pause", "promoted") or r.get("why") == ended]
    assert taken, ([(r["decision"], r.get("why")) for r in records], log[-3000:])
    assert all(r.get("why") in (None, ended) for r in records), records
    assert "with no checkpoint of it" not in log and "paused at epoch" in log, log[-3000:]
    for doc in promoted:
        history = [h for h in doc["attempt_history"] if h["outcome"] == "paused"]
        epochs = [e["epoch"] for e in doc["epochs"]]
        assert epochs == list(range(1, len(epochs) + 1)), epochs
        assert doc["resumed_from_epoch"] == history[-1]["paused_at_epoch"]
        assert doc["result"]["resumed_from_epoch"] == history[-1]["paused_at_epoch"]
        # the earlier segments' seconds: duration_s is the last segment's alone
        seconds = [h["duration_s"] for h in history]
        assert all(s > 0 for s in seconds) and doc["duration_s"] > 0, seconds
        assert doc["segments_duration_s"] == pytest.approx(sum(seconds), abs=1e-5)
    assert all(d.get("checkpoint") is None for d in trials)
    assert db["fs.files"].count_documents({"kind": "checkpoint"}) == 0
