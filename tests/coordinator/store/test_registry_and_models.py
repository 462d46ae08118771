"""Contract: the worker registry, the best trial and dropping superseded models."""

from __future__ import annotations

import pytest

from coordinator.states import WorkerStatus
from coordinator.store import TrialStore
from tests.conftest import queue_trials
from tests.raw_store import insert_raw_rows


def test_worker_registry(store: TrialStore) -> None:
    store.worker_heartbeat({"id": "w1", "host": "h", "exp_key": "exp"}, 4)
    store.worker_heartbeat({"id": "w2", "host": "h", "exp_key": None}, None)
    store.worker_heartbeat({"id": "w3", "host": "h", "exp_key": "other"}, None)
    store.worker_stopped("w2", "idle")
    alive = store.list_workers()
    assert {w["_id"] for w in alive} == {"w1", "w3"}
    assert all(w["state"] == WorkerStatus.ALIVE for w in alive)
    every = {w["_id"]: w for w in store.list_workers(alive_only=False)}
    assert every["w2"]["state"] == WorkerStatus.STOPPED and every["w2"]["stop_reason"] == "idle"
    assert every["w1"]["current_tid"] == 4 and every["w1"]["last_seen"] is not None
    assert {w["_id"] for w in store.live_workers(60, exp_key="exp")} == {"w1"}
    assert {w["_id"] for w in store.live_workers(60)} == {"w1", "w3"}


def _finish_all(store: TrialStore, losses: list[float], attach: set[int] = frozenset()) -> list:
    leases = []
    for i, loss in enumerate(losses):
        lease = store.reserve_trial("w", exp_key="exp")
        if i in attach:
            assert store.attach(lease, "model.keras", f"model {i}".encode())
        store.finish(lease, {"loss": loss, "status": "ok"}, {})
        leases.append(lease)
    return leases


def test_a_worker_row_stamped_in_the_future_is_not_alive(store: TrialStore) -> None:
    """Issue 22, item 6: a row whose ``last_seen`` is ahead of the server's clock (a hand edit,
    another program's clock) counted as alive for ever, hiding the no-worker warning."""
    import datetime as dt

    store.worker_heartbeat({"id": "real", "host": "h", "pid": 1, "exp_key": None}, None)
    future = store.server_time() + dt.timedelta(days=3650)
    insert_raw_rows(
        store, "workers", [{"_id": "ghost", "state": "alive", "exp_key": None, "last_seen": future}]
    )
    assert [w["_id"] for w in store.live_workers(60)] == ["real"]


def test_best_trial_breaks_ties_on_the_lowest_tid(store: TrialStore) -> None:
    queue_trials(store, 5)
    leases = _finish_all(store, [3.0, 1.0, 1.0, float("nan")], attach={0, 2})
    assert store.best_trial("exp")["tid"] == min(leases[1].tid, leases[2].tid)
    holder = store.best_trial("exp", with_attachment="model.keras")
    assert holder["tid"] == leases[2].tid
    assert store.get_attachment(holder, "model.keras") == b"model 2"
    assert store.best_trial("other") is None


def test_drop_superseded_models(store: TrialStore) -> None:
    queue_trials(store, 3)
    leases = _finish_all(store, [3.0, 1.0, 2.0], attach={0, 1, 2})
    assert store.drop_superseded_models("exp", "model.keras", 1.0, keep_tid=leases[1].tid) == 2
    assert store.drop_superseded_models("exp", "model.keras", 1.0, keep_tid=leases[1].tid) == 0
    holders = [
        d["tid"] for d in store.trials("exp") if store.get_attachment(d, "model.keras") is not None
    ]
    assert holders == [leases[1].tid]
    assert store.get_domain_blob("exp") is None


def test_delete_all_removes_trials_their_files_and_the_experiments_files(store) -> None:
    from coordinator.trials import HyperfleetTrials
    from tests.conftest import queue_trials

    trials = queue_trials(store, 2, exp_key="gone")
    queue_trials(store, 1, exp_key="kept")
    trials.attachments["note"] = b"experiment file"
    lease = store.reserve_trial("w", exp_key="gone")
    assert store.attach(lease, "model", b"weights")
    doc = store.get_trial("gone", lease.tid)
    assert store.get_attachment(doc, "model") == b"weights"
    store.delete_all(exp_key="gone")
    assert store.trials("gone") == [] and len(store.trials("kept")) == 1
    assert "note" not in HyperfleetTrials(store, exp_key="gone").attachments
    with pytest.raises(Exception, match="no file"):  # the trial's GridFS file is gone too
        store.get_attachment(doc, "model")


def test_a_replaced_experiment_file_is_never_missing(store: TrialStore) -> None:
    """hyperopt replaces ``FMinIter_Domain`` by deleting, then writing: a worker reading it in
    between found none and failed its trial (review finding: 1,558 of 1,962 reads). The store
    writes the new version first; a reader racing 40 rewrites always gets a whole version."""
    import threading

    store.write_experiment_file("exp", "FMinIter_Domain", b"v0" * 1000)
    seen: list[bytes | None] = []
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            seen.append(store.get_domain_blob("exp"))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for i in range(1, 41):
            store.write_experiment_file("exp", "FMinIter_Domain", f"v{i}".encode() * 1000)
    finally:
        done.set()
        reader.join()
    assert seen and None not in seen
    assert all(len(set(data.split(b"v")[1:])) == 1 for data in seen)  # one whole version each
    assert store.read_experiment_file("exp", "FMinIter_Domain") == b"v40" * 1000
    assert store.experiment_file_names("exp") == ["FMinIter_Domain"]  # older versions went
    assert store.db["fs.files"].count_documents({"filename": "FMinIter_Domain"}) == 1
    assert store.delete_experiment_file("exp", "FMinIter_Domain")
    assert not store.delete_experiment_file("exp", "FMinIter_Domain")
    assert store.get_domain_blob("exp") is None


def test_experiment_files_stay_within_their_experiment(store: TrialStore) -> None:
    """Replacing or deleting a file of one experiment (or of none: plain fmin's default
    ``exp_key=None``) never touches another experiment's copy (review finding: ``None``
    matched every experiment's ``FMinIter_Domain``)."""
    store.write_experiment_file("a", "FMinIter_Domain", b"a")
    store.write_experiment_file("b", "FMinIter_Domain", b"b")
    store.write_experiment_file(None, "FMinIter_Domain", b"none1")
    store.write_experiment_file(None, "FMinIter_Domain", b"none2")
    assert store.read_experiment_file("a", "FMinIter_Domain") == b"a"
    assert store.read_experiment_file("b", "FMinIter_Domain") == b"b"
    assert store.db["fs.files"].count_documents({"filename": "FMinIter_Domain"}) == 3
    assert store.delete_experiment_file(None, "FMinIter_Domain")
    assert store.read_experiment_file("a", "FMinIter_Domain") == b"a"
    assert store.read_experiment_file("b", "FMinIter_Domain") == b"b"
    assert store.has_experiment_file("b", "FMinIter_Domain")


def test_two_writers_at_once_leave_one_whole_version(store: TrialStore) -> None:
    """Each writer keeps the newest version, not its own: two at once never delete both."""
    import threading

    barrier = threading.Barrier(2)

    def write(tag: bytes) -> None:
        barrier.wait()
        for _ in range(10):
            store.write_experiment_file("exp", "shared", tag * 100)

    threads = [threading.Thread(target=write, args=(t,)) for t in (b"x", b"y")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.read_experiment_file("exp", "shared") in (b"x" * 100, b"y" * 100)
    assert store.db["fs.files"].count_documents({"filename": "shared"}) == 1
