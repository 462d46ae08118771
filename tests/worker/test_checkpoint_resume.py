"""Issue 21: a trial that comes back (worker SIGKILLed, SIGTERM hand-back) resumes from its
last checkpoint on the next worker — real worker processes, really killed — with its learning
curve continued (no epoch recorded twice) and no checkpoint left once it has ended."""

from __future__ import annotations

import re
import signal

import pytest

from coordinator.states import AttemptOutcome, TrialState
from coordinator.store import TrialStore, connect
from tests.conftest import (
    TEST_SPACES,
    hyperfleet,
    queue_trials,
    start_worker,
    stop_all,
    wait_for,
)

FAST_LEASE = ("--heartbeat", "0.3", "--lease", "1.5")
EPOCHS = 6


def _checkpointed(store: TrialStore, exp_key: str, epoch: int) -> dict | None:
    docs = store.trials(exp_key, [TrialState.RUNNING])
    return next((d for d in docs if (d.get("checkpoint") or {}).get("epoch", 0) >= epoch), None)


def _resumed_trial(store: TrialStore, exp_key: str, tid: int) -> dict:
    doc = store.get_trial(exp_key, tid)
    assert doc["state"] == TrialState.DONE, doc["state"]
    resumed = doc["resumed_from_epoch"]
    assert resumed >= 2, "the next attempt must start after the last checkpoint"
    assert doc["result"]["trained"] == list(range(resumed + 1, EPOCHS + 1))
    assert doc["result"]["state"] == EPOCHS  # the state went on from the checkpoint's
    assert [e["epoch"] for e in doc["epochs"]] == list(range(1, EPOCHS + 1))
    assert doc["checkpoint"] is None
    assert store.db["fs.files"].count_documents({"kind": "checkpoint"}) == 0
    return doc


@pytest.mark.parametrize("how", ["sigkill", "sigterm-requeue"])
def test_a_trial_taken_over_resumes_from_its_checkpoint(server, db_name, tmp_path, how) -> None:
    store = connect(server.uri, db_name)
    queue_trials(store, 1, exp_key="ck", space="resumable", settings={"sleep": 0.4})
    args = ("--spaces", TEST_SPACES, "--exp-key", "ck", *FAST_LEASE)
    first_args = (*args, "--requeue-on-term") if how == "sigterm-requeue" else args
    first = start_worker(server.uri, db_name, *first_args, log=tmp_path / "w1.log")
    workers = [first]
    try:
        doc = wait_for(lambda: _checkpointed(store, "ck", 2), 90, what="a checkpoint of epoch 2")
        first.send_signal(signal.SIGKILL if how == "sigkill" else signal.SIGTERM)
        first.wait(20)
        workers.append(start_worker(server.uri, db_name, *args, log=tmp_path / "w2.log"))
        wait_for(
            lambda: store.get_trial("ck", doc["tid"])["state"] == TrialState.DONE,
            90,
            what="the trial to finish on the second worker",
        )
    finally:
        stop_all(workers)
    done = _resumed_trial(store, "ck", doc["tid"])
    history = done["attempt_history"]
    assert [h["outcome"] for h in history] == (["lost"] if how == "sigkill" else ["requeued"])
    assert history[0]["checkpoint_epoch"] == done["resumed_from_epoch"]
    # show says so (new-user review: resuming was invisible there), and takes a trial number
    out = hyperfleet("show", "--mongo", server.uri, "--db", db_name, "--exp-key", "ck", "1")
    shown_tid = str(doc["tid"])
    if shown_tid != "1":  # tid != trial number 1: the hint names the tid
        assert out.returncode != 0 and f"is tid {shown_tid}" in out.stderr, out.stderr
    out = hyperfleet("show", "--mongo", server.uri, "--db", db_name, "--exp-key", "ck", shown_tid)
    assert out.returncode == 0, out.stderr
    resumed = done["resumed_from_epoch"]
    assert re.search(rf"resumed from epoch\s+{resumed}\n", out.stdout), out.stdout
    assert f"checkpoint at epoch {resumed}" in out.stdout  # the attempt's line
    # how long the lost attempt ran, to its last heartbeat: it reached epoch 2 of 0.4 s each
    assert history[0]["ran_s"] >= 0.5, history
    assert re.search(r"ran at least \d+ s", out.stdout), out.stdout
    assert done["attempt"] == 2


def test_an_attempt_that_only_loaded_a_checkpoint_leaves_none_behind(server, db_name, tmp_path):
    """Attacker review of this round: the worker deleted an ended trial's checkpoint only if
    that attempt saved one, so an attempt that resumed from the last epoch's checkpoint (nothing
    left to save) ended DONE with the earlier attempt's file still linked."""
    store = connect(server.uri, db_name)
    queue_trials(store, 1, exp_key="ck-last", space="resumable", settings={"sleep": 0.0})
    lease = store.reserve_trial("gone", exp_key="ck-last")
    assert store.save_checkpoint(lease, EPOCHS, str(EPOCHS).encode())  # then it died
    assert store.release(lease, AttemptOutcome.LOST, "killed") is TrialState.NEW
    args = ("--spaces", TEST_SPACES, "--exp-key", "ck-last", *FAST_LEASE, "--max-trials", "1")
    worker = start_worker(server.uri, db_name, *args, log=tmp_path / "w.log")
    try:
        assert worker.wait(90) == 0, (tmp_path / "w.log").read_text()[-2000:]
    finally:
        stop_all([worker])
    doc = store.get_trial("ck-last", lease.tid)
    assert doc["state"] == TrialState.DONE and doc["result"]["trained"] == []
    assert doc["checkpoint"] is None
    assert store.db["fs.files"].count_documents({"kind": "checkpoint"}) == 0


def test_a_trial_resumes_from_a_shared_checkpoint_directory(server, db_name, tmp_path) -> None:
    """``--checkpoint-dir``: the checkpoints are files in a directory both workers mount (here
    the same path), not GridFS; the second worker resumes from the first one's file."""
    store = connect(server.uri, db_name)
    shared = tmp_path / "shared"
    queue_trials(store, 1, exp_key="ckdir", space="resumable", settings={"sleep": 0.4})
    args = ("--spaces", TEST_SPACES, "--exp-key", "ckdir", *FAST_LEASE, "--checkpoint-dir", shared)
    first = start_worker(server.uri, db_name, *map(str, args), log=tmp_path / "w1.log")
    workers = [first]
    try:
        doc = wait_for(lambda: _checkpointed(store, "ckdir", 2), 90, what="a checkpoint")
        assert doc["checkpoint"]["file"] in {p.name for p in shared.iterdir()}
        first.send_signal(signal.SIGKILL)
        first.wait(20)
        workers.append(start_worker(server.uri, db_name, *map(str, args), log=tmp_path / "w2.log"))
        wait_for(
            lambda: store.get_trial("ckdir", doc["tid"])["state"] == TrialState.DONE,
            90,
            what="the trial to finish on the second worker",
        )
    finally:
        stop_all(workers)
    _resumed_trial(store, "ckdir", doc["tid"])
    assert list(shared.iterdir()) == []  # the ended trial's file is gone
