"""Contract: checkpoints (issue 21) — saved under the lease, resumed by the next attempt, checked
when read back, and gone once the trial has ended."""

from __future__ import annotations

import contextlib

import pymongo.errors
import pytest
from bson import ObjectId, Regex

from coordinator.errors import CheckpointRefused
from coordinator.states import AttemptOutcome, TrialState
from coordinator.store import Lease, TrialStore
from tests.conftest import queue_trials


def _checkpoint_files(store: TrialStore) -> int:
    return store.db["fs.files"].count_documents({"kind": "checkpoint"})


def _requeued(store: TrialStore, lease: Lease, owner: str = "w2") -> Lease:
    assert store.release(lease, AttemptOutcome.LOST, "killed") is TrialState.NEW
    again = store.reserve_trial(owner, exp_key="exp")
    assert again is not None and again.id == lease.id and again.attempt == lease.attempt + 1
    return again


def test_a_requeued_trial_resumes_from_its_last_checkpoint(store: TrialStore) -> None:
    queue_trials(store, 1)
    lease = store.reserve_trial("w1", exp_key="exp")
    assert store.load_checkpoint(lease) is None
    for epoch in (1, 2, 3):
        assert store.record_epoch(lease, {"epoch": epoch, "loss": 1.0 / epoch})
        assert store.save_checkpoint(lease, epoch, b"state after %d" % epoch)
    assert _checkpoint_files(store) == 1  # each older one went once the new one was linked
    assert store.record_epoch(lease, {"epoch": 4, "loss": 0.2})  # killed before its checkpoint

    again = _requeued(store, lease)
    checkpoint = store.load_checkpoint(again)
    assert checkpoint is not None
    assert (checkpoint.epoch, checkpoint.data, checkpoint.attempt) == (3, b"state after 3", 1)
    assert store.resume_at(again, checkpoint.epoch)
    assert store.record_epoch(again, {"epoch": 4, "loss": 0.25})
    doc = store.get_trial("exp", lease.tid)
    assert [e["epoch"] for e in doc["epochs"]] == [1, 2, 3, 4]  # epoch 4 once, the new one
    assert doc["epochs"][-1]["loss"] == 0.25 and doc["resumed_from_epoch"] == 3
    assert doc["checkpoint"]["epoch"] == 3 and doc["checkpoint"]["attempt"] == 1
    first = doc["attempt_history"][0]  # what the lost attempt got to, as its releaser saw it
    assert (first["epochs_recorded"], first["checkpoint_epoch"]) == (4, 3)
    assert "resumed_from_epoch" not in first  # it started from scratch

    assert store.release(again, AttemptOutcome.REQUEUED, "handed back") is TrialState.NEW
    second = store.get_trial("exp", lease.tid)["attempt_history"][1]
    assert (second["resumed_from_epoch"], second["epochs_recorded"]) == (3, 4)


def test_a_lost_lease_writes_no_checkpoint_and_keeps_no_file(store: TrialStore) -> None:
    queue_trials(store, 1)
    lease = store.reserve_trial("w1", exp_key="exp")
    assert store.save_checkpoint(lease, 1, b"one")
    again = _requeued(store, lease)
    assert not store.save_checkpoint(lease, 2, b"late")  # the old owner, fenced out
    assert not store.resume_at(lease, 0)
    assert _checkpoint_files(store) == 1
    assert store.load_checkpoint(again).data == b"one"


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda s, d: s.gfs.delete(d["checkpoint"]["file_id"]), "cannot be read"),
        (lambda s, d: _set(s, d, "checkpoint.sha256", "0" * 64), "do not match"),
        (lambda s, d: _set(s, d, "checkpoint.bytes", 2), "do not match"),
        (lambda s, d: _set(s, d, "checkpoint.epoch", "3"), "epoch"),
        (lambda s, d: _set(s, d, "checkpoint.file_id", {"$ne": None}), "not an ObjectId"),
        (lambda s, d: _set(s, d, "checkpoint", "junk"), "not a document"),
        (lambda s, d: _set(s, d, "checkpoint.bytes", 2**40), "limit"),
        (
            lambda s, d: _set(s, d, "checkpoint.file_id", s.gfs.put(b"x", tid=9, trial=1)),
            "written for trial 9",
        ),
        (lambda s, d: _set(s, d, "checkpoint.file_id", s.gfs.put(b"x")), "not a checkpoint"),
        (lambda s, d: s.db["fs.chunks"].delete_many({}), "cannot be read"),
        (lambda s, d: _file(s, d, "chunkSize", 0), "cannot be read"),
        (lambda s, d: _file(s, d, "chunkSize", "x"), "cannot be read"),
        (lambda s, d: _file(s, d, "length", "1"), "length"),
        (lambda s, d: s.db["fs.chunks"].update_many({}, {"$set": {"data": 5}}), "cannot be read"),
    ],
)
def test_a_damaged_or_foreign_checkpoint_is_refused_with_its_reason(
    store: TrialStore, damage, reason: str
) -> None:
    queue_trials(store, 1)
    lease = store.reserve_trial("w1", exp_key="exp")
    assert store.save_checkpoint(lease, 3, b"good state")
    damage(store, store.get_trial("exp", lease.tid))
    with pytest.raises(CheckpointRefused, match=reason):
        store.load_checkpoint(lease)


def _file(store: TrialStore, doc: dict, field: str, value: object) -> None:
    """Damage the checkpoint's GridFS file document itself (attacker review of this round:
    these raised ZeroDivisionError / TypeError / ValueError and the trial became ERROR)."""
    store.db["fs.files"].update_one({"_id": doc["checkpoint"]["file_id"]}, {"$set": {field: value}})


def _set(store: TrialStore, doc: dict, field: str, value: object) -> None:
    store.jobs.update_one({"_id": doc["_id"]}, {"$set": {field: value}})


def test_ended_trials_keep_no_checkpoint_and_running_ones_keep_theirs(store: TrialStore) -> None:
    queue_trials(store, 3)
    done, failed, running = (store.reserve_trial("w", exp_key="exp") for _ in range(3))
    for lease in (done, failed, running):
        assert store.save_checkpoint(lease, 1, b"state %d" % lease.tid)
    assert store.finish(done, {"loss": 1.0, "status": "ok"}, {})
    assert store.fail(failed, {"type": "E", "message": "m"}, {})
    all_ids = [done.id, failed.id, running.id]
    assert store.drop_checkpoints(trial_ids=all_ids) == 2
    assert store.drop_checkpoints(trial_ids=all_ids) == 0
    assert _checkpoint_files(store) == 1
    assert store.load_checkpoint(running).data == b"state %d" % running.tid
    assert store.get_trial("exp", done.tid)["checkpoint"] is None
    assert store.drop_checkpoints() == 0  # neither ids nor an experiment: nothing


def test_the_sweep_of_an_experiment_removes_leftovers_of_ended_trials(store: TrialStore) -> None:
    queue_trials(store, 2)
    done = store.reserve_trial("w", exp_key="exp")
    assert store.save_checkpoint(done, 2, b"x")
    assert store.finish(done, {"loss": 1.0, "status": "ok"}, {})  # the worker died here
    assert store.drop_checkpoints(exp_key="other") == 0
    assert store.drop_checkpoints(exp_key="exp") == 1 and _checkpoint_files(store) == 0


def test_the_sweep_deletes_files_a_killed_worker_never_linked(store: TrialStore) -> None:
    """A worker killed between writing a checkpoint and linking it leaves a file no link names;
    the search's sweep deletes it once the trial ended, and nothing else: not a running
    trial's, not another experiment's, not one of an attempt after the trial was seen ended."""
    import dataclasses
    import hashlib

    def put(lease: Lease, epoch: int, data: bytes) -> None:  # the write, and no link: killed
        store.parts.checkpoints._put(lease, epoch, data, hashlib.sha256(data).hexdigest())

    queue_trials(store, 2)
    queue_trials(store, 1, exp_key="other")
    done, running = (store.reserve_trial("w", exp_key="exp") for _ in range(2))
    elsewhere = store.reserve_trial("w", exp_key="other")
    assert store.save_checkpoint(done, 1, b"linked")
    put(done, 2, b"orphan")
    put(running, 1, b"running")
    put(elsewhere, 1, b"other experiment")
    put(dataclasses.replace(done, attempt=done.attempt + 1), 1, b"a later attempt")
    assert store.finish(done, {"loss": 1.0, "status": "ok"}, {})
    assert store.drop_checkpoints(trial_ids=[done.id]) == 1  # the worker: its linked one
    assert _checkpoint_files(store) == 5 - 1
    assert store.drop_checkpoints(exp_key="exp") == 1  # the search's end: the orphan
    left = sorted(
        (f["tid"], f["attempt"]) for f in store.db["fs.files"].find({"kind": "checkpoint"})
    )
    assert left == sorted(
        [(running.tid, running.attempt), (elsewhere.tid, 1), (done.tid, done.attempt + 1)]
    )


def test_a_link_deletes_only_a_checkpoint_of_its_own_trial(store: TrialStore) -> None:
    """Attacker review: documents copied (a warm start) from a running experiment with their
    checkpoint links, a junk link stored as an operator, and a GridFS id that is a file name.
    Every sweep unlinks them and deletes nothing of another trial's, and none crashes it
    (the operator link made the update fail with "unknown operator", out of the search loop)."""
    queue_trials(store, 2, exp_key="src")
    running, paused = (store.reserve_trial("w", exp_key="src") for _ in range(2))
    assert store.save_checkpoint(running, 3, b"running at 3")
    assert store.save_checkpoint(paused, 1, b"paused at 1")
    queue_trials(store, 1)
    own = store.reserve_trial("w", exp_key="exp")
    assert store.save_checkpoint(own, 2, b"own")
    assert store.finish(own, {"loss": 1.0, "status": "ok"}, {})  # its worker died here
    for lease in (running, paused):
        doc = store.jobs.find_one({"_id": lease.id})
        doc.pop("_id")
        doc.update(exp_key="exp", tid=doc["tid"] + 100, state=int(TrialState.DONE))
        store.jobs.insert_one(doc)
    for i, link in enumerate([{"$foo": 1}, {"file_id": "0" * 16 + "-1-1-" + "0" * 16 + ".ckpt"}]):
        store.jobs.insert_one({"exp_key": "exp", "tid": 200 + i, "state": int(TrialState.DONE),
                               "checkpoint": link})  # fmt: skip
    # a junk document whose _id is a regex (SecantusDB stores one) naming the running file
    link = store.jobs.find_one({"_id": running.id})["checkpoint"]
    with contextlib.suppress(pymongo.errors.PyMongoError):  # a real MongoDB refuses one
        store.jobs.insert_one(
            {"_id": Regex(".*"), "exp_key": "exp", "state": 3, "checkpoint": link}
        )
    store.db["fs.files"].insert_one({"_id": {"a": 1}, "kind": "checkpoint", "exp_key": "exp"})
    for trial in ([1, 2], {"a": 1}, Regex("x")):  # junk files of the experiment: unhashable
        store.db["fs.files"].insert_one({"kind": "checkpoint", "exp_key": "exp", "trial": trial,
                                         "attempt": 0, "length": 0, "chunkSize": 1})  # fmt: skip
    assert store.drop_checkpoints(exp_key="exp", search_ended=False) == 1  # own's only
    assert store.drop_checkpoints(exp_key="exp") == 0
    assert store.load_checkpoint(running).data == b"running at 3"
    assert store.load_checkpoint(paused).data == b"paused at 1"
    # every link of exp's ended trials is gone, the junk ones too: only their files stay
    assert store.jobs.count_documents({"exp_key": "exp", "checkpoint": {"$ne": None}}) == 0


def test_the_sweep_while_a_search_runs_reads_no_trial_without_checkpoints(
    server, store: TrialStore
) -> None:
    """An experiment that saves no checkpoint pays one query per sweep, not a read of its
    trials (with ended trials that hold no link, as every trial of such a search)."""
    import pymongo

    queue_trials(store, 3)
    for lease in [store.reserve_trial("w", exp_key="exp") for _ in range(3)]:
        assert store.finish(lease, {"loss": 1.0, "status": "ok"}, {})

    def queries() -> int:
        with pymongo.MongoClient(server.uri) as client:
            return int(client.admin.command("serverStatus")["opcounters"]["query"])

    before = queries()
    assert store.drop_checkpoints(exp_key="exp", search_ended=False) == 0
    assert queries() - before == 1  # the files of the experiment, and nothing else


def test_a_bad_epoch_is_refused_before_anything_is_written(store: TrialStore) -> None:
    queue_trials(store, 1)
    lease = store.reserve_trial("w", exp_key="exp")
    for epoch in (-1, 1.5, True, "2", 10**9, 10**30):  # a file name holds 9 digits
        with pytest.raises(ValueError, match="whole number"):
            store.save_checkpoint(lease, epoch, b"x")  # type: ignore[arg-type]
    assert _checkpoint_files(store) == 0 and isinstance(lease.id, ObjectId)


def test_a_trial_with_a_checkpoint_is_reserved_before_fresh_ones(store: TrialStore) -> None:
    """New-user review: a trial handed back at epoch 27 of 30 waited while the next worker ran
    two fresh trials (candidates were claimed in random order). Progress goes first now."""
    for _ in range(10):  # random order among candidates: it must win every time
        store.drop_database()
        queue_trials(store, 4)
        leases = [store.reserve_trial("w", exp_key="exp") for _ in range(4)]
        keeper = leases[2]
        assert store.save_checkpoint(keeper, 27, b"27 epochs")
        for lease in leases:
            store.release(lease, AttemptOutcome.REQUEUED, "handed back")
        assert store.reserve_trial("next", exp_key="exp").id == keeper.id
