"""Issue 21 on real Keras trials: a worker SIGKILLed mid-trial, and the next worker resumes the
trial from its last per-epoch checkpoint (weights, optimizer state, epoch) instead of epoch 0;
the learning curve has each epoch once. Real workers, real Keras, a small MNIST subset."""

from __future__ import annotations

import signal
import subprocess
import time

import pytest

from coordinator.states import TrialState
from coordinator.store import connect
from tests.conftest import cli_env, kill_worker_mid_trial, start_worker, stop_all, wait_for
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


STORM_EPOCHS = 8
STORM_TRIALS = 8


def _epochs_trained(doc: dict) -> tuple[int, int]:
    """(epochs the trial needed, epochs trained by all its attempts): each lost attempt trained
    from where it resumed to the last epoch it recorded; the last one from its resume point on."""
    trained = doc["result"]["epochs_run"] - doc["result"]["resumed_from_epoch"]
    for entry in doc.get("attempt_history", []):
        trained += entry.get("epochs_recorded", 0) - (entry.get("resumed_from_epoch") or 0)
    return doc["result"]["epochs_run"], trained


@pytest.mark.slow
def test_a_kill_storm_on_keras_trials_trains_almost_no_epoch_twice(
    server, db_name, tmp_path
) -> None:
    """The issue's storm: mnist_mlp, 8 epochs, 3 workers, a worker holding a running trial
    SIGKILLed every ~6 s, 5 times, each replaced: every trial DONE once, and the epochs trained
    stay within 1.1x the epochs the finished trials needed (restarts trained up to 8 each)."""
    store = connect(server.uri, db_name)
    settings = (
        "--set",
        f"epochs={STORM_EPOCHS}",
        "--set",
        # trials long enough for 5 kills ~6 s apart: with widths as values (issue 20) most
        # trials skip their trace, and at 2,000 images the search ended after 2 kills
        "train_size=8000",
        "--set",
        "val_size=256",
    )
    search = subprocess.Popen(
        search_cmd(server.uri, db_name, "mnist_mlp", "storm", STORM_TRIALS, *settings),
        stdout=open(tmp_path / "search.log", "w"),  # noqa: SIM115
        stderr=subprocess.STDOUT,
        text=True,
        env=cli_env(),
    )
    args = ("--exp-key", "storm", *FAST_LEASE)
    workers = [start_worker(server.uri, db_name, *args, log=tmp_path / "w.log") for _ in range(3)]
    kills = 0
    try:
        while kills < 5 and search.poll() is None:
            time.sleep(6)
            try:
                victim = kill_worker_mid_trial(
                    store, "storm", workers, timeout=30, checkpointed=True
                )
            except AssertionError:  # no first attempt running any more: the search is ending
                break
            if victim is not None:
                kills += 1
            workers.append(start_worker(server.uri, db_name, *args, log=tmp_path / "w.log"))
        assert search.wait(600) == 0, (tmp_path / "search.log").read_text()[-2000:]
    finally:
        stop_all([search, *workers])
    docs = store.trials("storm")
    assert sorted(d["tid"] for d in docs) == sorted({d["tid"] for d in docs})
    assert [d["state"] for d in docs] == [TrialState.DONE] * STORM_TRIALS
    assert kills >= 3, f"only {kills} kills landed mid-trial"
    needed, trained = map(sum, zip(*(_epochs_trained(d) for d in docs), strict=True))
    resumed = [d for d in docs if d["result"]["resumed_from_epoch"] > 0]
    assert resumed, "no trial resumed from a checkpoint"
    print(f"kill storm: {kills} kills, {len(resumed)} trials resumed, {trained} epochs trained")
    print(f"for {needed} needed ({trained / needed:.3f}x)")
    assert trained <= 1.1 * needed, f"trained {trained} epochs for {needed} needed"
    assert store.db["fs.files"].count_documents({"kind": "checkpoint"}) == 0
