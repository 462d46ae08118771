"""Checkpoints in a shared directory (``hyperfleet worker --checkpoint-dir``, issue 21): the same
contract as GridFS checkpoints — resumed by the next attempt, checked when read back, gone once
the trial ended — with files instead of GridFS, and a link that can never make a worker read or
delete a file outside its own directory."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from coordinator.errors import CheckpointNotSaved, CheckpointRefused
from coordinator.states import AttemptOutcome, TrialState
from coordinator.store import Lease, TrialStore
from coordinator.store.checkpoints import CHECKPOINT_DIR_ENV
from tests.conftest import queue_trials


@pytest.fixture
def shared(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "shared"
    directory.mkdir(mode=0o700)  # as `worker --checkpoint-dir` makes it; the store never does
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
        ({"checkpoint.bytes": 3}, "holds 10 bytes, not the 3"),
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


@pytest.mark.parametrize("kind", ["symlink", "fifo", "bigger", "directory"])
def test_only_a_regular_file_of_the_saved_size_is_read(
    store: TrialStore, shared: Path, tmp_path: Path, kind: str
) -> None:
    """Attacker review: whoever can write to the directory must not make a worker read another
    file through a symlink, hang on a FIFO, or read gigabytes (``/dev/zero``, a sparse file)."""
    queue_trials(store, 1)
    lease = store.reserve_trial("w1", exp_key="exp")
    assert store.save_checkpoint(lease, 2, b"good state")
    [path] = shared.iterdir()
    path.unlink()
    if kind == "symlink":
        secret = tmp_path / "secret"
        secret.write_bytes(b"good state")  # even the right bytes, through a link: refused
        path.symlink_to(secret)
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "bigger":
        with open(path, "wb") as out:
            out.truncate(3 * 2**30)  # sparse: 3 GB of nothing, never read
    else:
        path.mkdir()
    reason = {"symlink": "cannot be read", "fifo": "not a regular file",
              "bigger": "not the 10 bytes", "directory": "not a regular file"}[kind]  # fmt: skip
    with pytest.raises(CheckpointRefused, match=reason):
        store.load_checkpoint(lease)


def test_a_hostile_link_cannot_get_another_trials_file_deleted(
    store: TrialStore, shared: Path
) -> None:
    queue_trials(store, 2)
    mine, other = (store.reserve_trial("w", exp_key="exp") for _ in range(2))
    assert store.save_checkpoint(mine, 1, b"mine")
    assert store.save_checkpoint(other, 1, b"other")
    theirs = store.get_trial("exp", other.tid)["checkpoint"]["file"]
    store.jobs.update_one({"_id": mine.id}, {"$set": {"checkpoint.file": theirs}})
    assert store.save_checkpoint(mine, 2, b"mine 2")  # replaces "its" link: deletes nothing
    assert store.load_checkpoint(other).data == b"other"
    assert store.finish(mine, {"loss": 1.0, "status": "ok"}, {})
    store.jobs.update_one({"_id": mine.id}, {"$set": {"checkpoint.file": theirs}})
    store.drop_checkpoints(exp_key="exp")
    assert store.load_checkpoint(other).data == b"other"


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
    assert store.drop_checkpoints(exp_key="exp") == 0  # it cannot delete the file: nor the link
    assert "1 checkpoints stay linked" in caplog.text
    assert store.get_trial("exp", lease.tid)["checkpoint"] is not None
    monkeypatch.setenv(CHECKPOINT_DIR_ENV, str(shared))  # the advice followed: it works
    assert store.drop_checkpoints(exp_key="exp") == 1 and list(shared.iterdir()) == []


def test_a_directory_that_cannot_be_written_keeps_the_last_checkpoint(
    store: TrialStore, shared: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog
) -> None:
    queue_trials(store, 1)
    lease = store.reserve_trial("w1", exp_key="exp")
    assert store.save_checkpoint(lease, 1, b"one")
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv(CHECKPOINT_DIR_ENV, str(blocker / "sub"))  # not writable, even for root
    with pytest.raises(CheckpointNotSaved):  # one warning; the context lets the trial go on
        store.save_checkpoint(lease, 2, b"two")
    assert "checkpoint of epoch 2 not written" in caplog.text
    assert not (blocker.parent / "sub").exists()
    monkeypatch.setenv(CHECKPOINT_DIR_ENV, str(tmp_path / "unmounted"))  # never created here
    with pytest.raises(CheckpointNotSaved):
        store.save_checkpoint(lease, 3, b"three")
    assert not (tmp_path / "unmounted").exists()
    monkeypatch.setenv(CHECKPOINT_DIR_ENV, str(shared))
    assert store.load_checkpoint(lease).data == b"one"


def test_the_sweep_deletes_files_a_killed_worker_never_linked(
    store: TrialStore, shared: Path
) -> None:
    """A file renamed into place by a worker killed before it linked it: the search's sweep
    deletes it once its trial ended; not a running trial's, not another experiment's, not a
    later attempt's, not a symlink's target."""
    import dataclasses
    import hashlib

    from coordinator.store.checkpoints import _put_file

    def put(lease: Lease, epoch: int, data: bytes) -> str:  # the write, and no link: killed
        return _put_file(shared, lease, epoch, data, hashlib.sha256(data).hexdigest())

    queue_trials(store, 2)
    queue_trials(store, 1, exp_key="other")
    done, running = (store.reserve_trial("w", exp_key="exp") for _ in range(2))
    elsewhere = store.reserve_trial("w", exp_key="other")
    assert store.save_checkpoint(done, 1, b"linked")
    orphan = put(done, 2, b"orphan")
    kept = [
        put(running, 1, b"running"),
        put(elsewhere, 1, b"other experiment"),
        put(dataclasses.replace(done, attempt=done.attempt + 1), 1, b"a later attempt"),
    ]
    outside = shared.parent / "outside.txt"
    outside.write_text("not a checkpoint")
    alias = orphan.replace("-2-", "-3-")
    (shared / alias).symlink_to(outside)  # named like an orphan: the link goes, not its target
    assert store.finish(done, {"loss": 1.0, "status": "ok"}, {})
    assert store.drop_checkpoints(trial_ids=[done.id]) == 1
    assert (shared / orphan).exists()
    assert store.drop_checkpoints(exp_key="exp") == 2
    assert sorted(p.name for p in shared.iterdir()) == sorted(kept)
    assert outside.read_text() == "not a checkpoint"


def test_junk_trial_ids_and_attempts_delete_nothing_and_leak_nothing(
    store: TrialStore, shared: Path
) -> None:
    """Attacker review: a junk ended job of this experiment whose ``_id`` is the *string* of
    another experiment's running trial's ObjectId made the sweep delete that trial's file; a
    sub-document ``_id`` crashed the search's end; an attempt number of 10 digits made every
    save write a file no link could name (never read back, never deleted)."""
    import bson

    queue_trials(store, 1, exp_key="victim")
    victim = store.reserve_trial("w", exp_key="victim")
    assert store.save_checkpoint(victim, 1, b"victim's state")
    junk = [
        {"_id": str(victim.id), "exp_key": "exp", "state": int(TrialState.CANCEL),
         "attempt": 10**9},
        {"_id": {"a": 1}, "exp_key": "exp", "state": int(TrialState.DONE)},
        {"_id": bson.ObjectId(), "exp_key": "exp", "state": int(TrialState.DONE), "attempt": "x"},
    ]  # fmt: skip
    store.jobs.insert_many(junk)
    assert store.drop_checkpoints(exp_key="exp") == 0
    assert store.load_checkpoint(victim).data == b"victim's state"

    queue_trials(store, 1)
    lease = store.reserve_trial("w", exp_key="exp")
    store.jobs.update_one({"_id": lease.id}, {"$set": {"attempt": 10**9}})
    import dataclasses

    lease = dataclasses.replace(lease, attempt=10**9)
    before = sorted(shared.iterdir())
    with pytest.raises(CheckpointNotSaved, match="out of range"):
        store.save_checkpoint(lease, 1, b"state")
    assert sorted(shared.iterdir()) == before


def test_temporaries_of_killed_writers_are_swept_and_nothing_else(shared: Path) -> None:
    """A worker killed while writing leaves ``.<name>.<pid>.tmp``; the next worker started with
    the directory deletes those unchanged for an hour, and nothing else: not a fresh one (a
    write going on), not a checkpoint, not a link or another file."""
    import time

    from coordinator.store.checkpoints import sweep_stale_temporaries

    name = "0123456789abcdef-1-2-fedcba9876543210.ckpt"
    stale, fresh = shared / f".{name}.4242.tmp", shared / f".{name}.4343.tmp"
    kept = [shared / name, shared / ".other.tmp", shared / f".{name}.4444.tmp.bak"]
    outside = shared.parent / "outside.txt"
    for path in [stale, fresh, *kept, outside]:
        path.write_bytes(b"x")
    linked = shared / f".{name}.4545.tmp"
    linked.symlink_to(outside)
    hour_ago = time.time() - 3700
    for path in [stale, *kept, outside]:
        os.utime(path, (hour_ago, hour_ago))
    os.utime(linked, (hour_ago, hour_ago), follow_symlinks=False)
    assert sweep_stale_temporaries(shared) == 1
    assert not stale.exists() and fresh.exists() and all(p.exists() for p in kept)
    assert linked.is_symlink() and outside.exists()
    assert sweep_stale_temporaries(shared / "missing") == 0
