"""Contract: experiment documents; every status change is conditional, cancel is never undone."""

from __future__ import annotations

import pytest

from coordinator.states import ExperimentStatus, TrialState
from coordinator.store import TrialStore
from tests.conftest import queue_trials

RUNNING = ExperimentStatus.RUNNING


def _exp(key: str = "e", status: ExperimentStatus = RUNNING) -> dict:
    return {"_id": key, "space": "quadratic", "status": status.value, "cancel_requested": False}


def test_create_only_once(store: TrialStore) -> None:
    assert store.create_experiment(_exp())
    assert not store.create_experiment({**_exp(), "space": "other"})
    exp = store.get_experiment("e")
    assert exp["space"] == "quadratic" and exp["version"] == 1
    assert [e["_id"] for e in store.list_experiments()] == ["e"]
    assert store.get_experiment("missing") is None


def test_replace_only_the_version_read(store: TrialStore) -> None:
    store.create_experiment(_exp())
    read = store.get_experiment("e")
    assert store.annotate_experiment("e", {"note": "meanwhile"})  # another writer
    assert not store.replace_experiment({**read, "space": "x"}, version=read["version"])
    again = store.get_experiment("e")
    assert again["space"] == "quadratic" and again["note"] == "meanwhile"
    assert store.replace_experiment({**again, "space": "x"}, version=again["version"])
    assert store.get_experiment("e")["version"] == again["version"] + 1


def test_finish_does_not_undo_a_cancel(store: TrialStore) -> None:
    store.create_experiment(_exp())
    store.cancel_experiment("e", settle_s=0)
    assert not store.finish_experiment("e", ExperimentStatus.DONE, {"best_tid": 3})
    exp = store.get_experiment("e")
    assert exp["status"] == ExperimentStatus.CANCELLED and exp["best_tid"] == 3
    assert store.cancel_requested("e")


def test_finish_a_running_experiment(store: TrialStore) -> None:
    store.create_experiment(_exp())
    assert store.finish_experiment("e", ExperimentStatus.DONE, {"best_tid": 1})
    assert store.get_experiment("e")["status"] == ExperimentStatus.DONE
    assert not store.finish_experiment("e", ExperimentStatus.FAILED, {})
    assert store.get_experiment("e")["status"] == ExperimentStatus.DONE


def test_cancel_sweeps_the_queue_and_keeps_a_finished_status(store: TrialStore) -> None:
    queue_trials(store, 3)
    running = store.reserve_trial("w", exp_key="exp")
    assert store.cancel_experiment("exp", settle_s=0) == 2
    assert store.count("exp", [TrialState.CANCEL]) == 2
    assert store.get_experiment("exp")["status"] == ExperimentStatus.CANCELLED
    assert store.cancel_requested("exp")
    assert store.finish(running, {"loss": 1.0, "status": "ok"}, {})  # running ones may finish

    store.create_experiment(_exp("done", ExperimentStatus.DONE))
    assert store.cancel_experiment("done", settle_s=0) == 0
    assert store.get_experiment("done")["status"] == ExperimentStatus.DONE
    assert store.cancel_requested("done")
    assert not store.cancel_requested("missing")


def test_annotate_never_writes_status_fields(store: TrialStore) -> None:
    store.create_experiment(_exp())
    for field in ("status", "cancel_requested", "version", "_id"):
        with pytest.raises(ValueError, match=field):
            store.annotate_experiment("e", {field: 1})
    assert not store.annotate_experiment("missing", {"test": 1})
    assert store.annotate_experiment("e", {"test": {"accuracy": 0.9}})
    assert store.get_experiment("e")["test"] == {"accuracy": 0.9}
