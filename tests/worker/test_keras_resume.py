"""Issue 21 on real Keras trials: a worker SIGKILLed mid-trial, and the next worker resumes the
trial from its last per-epoch checkpoint (weights, optimizer state, epoch) instead of epoch 0;
the learning curve has each epoch once. Real workers, real Keras, a small MNIST subset."""

from __future__ import annotations

import signal
import subprocess

from coordinator.states import TrialState
from coordinator.store import connect
from tests.conftest import cli_env, start_worker, stop_all, wait_for
from tests.worker.test_keras_search import search_cmd

FAST_LEASE = ("--heartbeat", "0.3", "--lease", "2")
EPOCHS = 5
SMALL = ("--set", f"epochs={EPOCHS}", "--set", "train_size=2000", "--set", "val_size=256")


def test_a_killed_keras_trial_resumes_from_its_checkpoint(server, db_name, tmp_path) -> None:
    store = connect(server.uri, db_name)
    search = subprocess.Popen(
        search_cmd(server.uri, db_name, "mnist_mlp", "kr", 1, *SMALL),
        stdout=open(tmp_path / "search.log", "w"),  # noqa: SIM115
        stderr=subprocess.STDOUT,
        text=True,
        env=cli_env(),
    )
    args = ("--exp-key", "kr", *FAST_LEASE)
    first = start_worker(server.uri, db_name, *args, log=tmp_path / "w1.log")
    workers = [search, first]
    try:

        def checkpointed() -> dict | None:
            docs = store.trials("kr", [TrialState.RUNNING])
            return next((d for d in docs if (d.get("checkpoint") or {}).get("epoch", 0) >= 2), None)

        doc = wait_for(checkpointed, 240, what="a checkpoint of epoch 2")
        first.send_signal(signal.SIGKILL)
        first.wait(20)
        workers.append(start_worker(server.uri, db_name, *args, log=tmp_path / "w2.log"))
        assert search.wait(300) == 0, (tmp_path / "search.log").read_text()[-2000:]
    finally:
        stop_all(workers)
    done = store.get_trial("kr", doc["tid"])
    assert done["state"] == TrialState.DONE and done["result"]["status"] == "ok"
    resumed = done["result"]["resumed_from_epoch"]
    assert resumed >= 2 and done["resumed_from_epoch"] == resumed
    assert done["result"]["epochs_run"] == EPOCHS
    assert len(done["result"]["history"]["loss"]) == EPOCHS - resumed  # trained here: the rest
    assert [e["epoch"] for e in done["epochs"]] == list(range(1, EPOCHS + 1))
    assert done["attempt_history"][0]["checkpoint_epoch"] == resumed
    # the resumed model went on from the checkpoint's weights: its first epoch's training loss
    # is near the loss the killed attempt had reached, not a fresh model's
    losses = [e["loss"] for e in done["epochs"]]
    assert losses[resumed] < losses[0], losses
    assert done["checkpoint"] is None
    assert store.db["fs.files"].count_documents({"kind": "checkpoint"}) == 0
