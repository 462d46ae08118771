"""Checkpoints in a shared directory (``hyperfleet worker --checkpoint-dir``, issue 21): the same
contract as GridFS checkpoints — resumed by the next attempt, checked when read back, gone once
the trial ended — with files instead of GridFS, and a link that can never make a worker read or
delete a file outside its own directory."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from coordinator.errors import CheckpointRefused
from coordinator.states import AttemptOutcome, TrialState
from coordinator.store import Lease, TrialStore
from coordinator.store.checkpoints import CHECKPOINT_DIR_ENV
from tests.conftest import queue_trials


@pytest.fixture
def shared(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "shared"
    monkeypatch.setenv(CHECKPOINT_DIR_ENV, str(directory))
    return directory


def _requeued(store: TrialStore, lease: Lease) -> Lease:
    assert store.release(lease, AttemptOutcome.LOST, "killed") is TrialState.NEW
    again = store.reserve_trial("w2", exp_key="exp")
    assert again is not None and again.id == lease.id
    return again


def test_checkpoints_live_in_the_directory_and_resume_the_next_attempt(
    store: TrialStore, shared: Path
) -> None:
    queue_trials(store, 1)
    lease = store.reserve_trial("w1", exp_key="exp")
    for epoch in (1, 2, 3):
        assert store.save_checkpoint(lease, epoch, b"state after %d" % epoch)
    files = sorted(p.name for p in shared.iterdir())
    assert len(files) == 1 and files[0].endswith(".ckpt")  # older ones deleted, no temp left
    assert oct(shared.stat().st_mode & 0o777) == "0o700"
    assert oct((shared / files[0]).stat().st_mode & 0o777) == "0o600"
    link = store.get_trial("exp", lease.tid)["checkpoint"]
    assert link["file"] == files[0] and "file_id" not in link and link["epoch"] == 3
    assert store.db["fs.files"].count_documents({}) == 0  # nothing in GridFS

    again = _requeued(store, lease)
    checkpoint = store.load_checkpoint(again)
    assert checkpoint is not None and (checkpoint.epoch, checkpoint.data) == (3, b"state after 3")
    assert store.finish(again, {"loss": 1.0, "status": "ok"}, {})
    assert store.drop_checkpoints(trial_ids=[again.id]) == 1
    assert list(shared.iterdir()) == []


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        ({"checkpoint.file": "../../etc/passwd"}, "is not a checkpoint's"),
        ({"checkpoint.file": "/etc/passwd"}, "is not a checkpoint's"),
        ({"checkpoint.file": ["x"]}, "is not a checkpoint's"),
        ({"checkpoint.file": "0123456789abcdef-1-3-0123456789abcdef.ckpt"}, "another trial"),
        ({"checkpoint.bytes": 3}, "do not match"),
    ],
)
def test_a_hostile_or_damaged_link_is_refused_and_reads_nothing_else(
    store: TrialStore, shared: Path, damage: dict, reason: str
) -> None:
    queue_trials(store, 1)
    lease = store.reserve_trial("w1", exp_key="exp")
    assert store.save_checkpoint(lease, 3, b"good state")
    store.jobs.update_one({"_id": lease.id}, {"$set": damage})
    with pytest.raises(CheckpointRefused, match=reason):
        store.load_checkpoint(lease)
    # and the sweep deletes nothing outside the directory (a hostile name is no file of ours)
    assert store.release(lease, AttemptOutcome.REQUEUED, "x") is TrialState.NEW


def test_a_corrupt_or_missing_file_is_refused(store: TrialStore, shared: Path) -> None:
    queue_trials(store, 1)
    lease = store.reserve_trial("w1", exp_key="exp")
    assert store.save_checkpoint(lease, 2, b"good state")
    [path] = shared.iterdir()
    path.write_bytes(b"evil state")  # same size, other bytes
    with pytest.raises(CheckpointRefused, match="do not match"):
        store.load_checkpoint(lease)
    path.unlink()
    with pytest.raises(CheckpointRefused, match="cannot be read"):
        store.load_checkpoint(lease)


def test_a_worker_without_the_directory_refuses_it_in_one_line(
    store: TrialStore, shared: Path, monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    caplog.set_level(logging.INFO)
    queue_trials(store, 1)
    lease = store.reserve_trial("w1", exp_key="exp")
    assert store.save_checkpoint(lease, 2, b"state")
    monkeypatch.delenv(CHECKPOINT_DIR_ENV)
    with pytest.raises(CheckpointRefused, match="start workers with --checkpoint-dir"):
        store.load_checkpoint(lease)
    assert store.finish(lease, {"loss": 1.0, "status": "ok"}, {})
    assert store.drop_checkpoints(exp_key="exp") == 1  # unlinked; the file stays, said once
    assert "stay in the workers' shared directory" in caplog.text
    assert len(list(shared.iterdir())) == 1


def test_a_directory_that_cannot_be_written_keeps_the_last_checkpoint(
    store: TrialStore, shared: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog
) -> None:
    queue_trials(store, 1)
    lease = store.reserve_trial("w1", exp_key="exp")
    assert store.save_checkpoint(lease, 1, b"one")
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv(CHECKPOINT_DIR_ENV, str(blocker / "sub"))  # not writable, even for root
    assert store.save_checkpoint(lease, 2, b"two")  # one warning; the trial goes on
    assert "checkpoint of epoch 2 not written" in caplog.text
    monkeypatch.setenv(CHECKPOINT_DIR_ENV, str(shared))
    assert store.load_checkpoint(lease).data == b"one"
