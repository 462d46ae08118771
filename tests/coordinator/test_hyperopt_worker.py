"""Issue 19: hyperopt's own worker (``MongoWorker``, ``main_worker_helper``) runs against
hyperopt's ``MongoJobs`` surface over the store (:class:`coordinator.hyperopt_jobs.HyperoptJobs`)
on the real embedded server.

When the store inherited hyperopt's ``MongoJobs``, removing its pymongo-4 ``reserve`` silently
brought back hyperopt's, which calls the removed ``find_and_modify``: ``reserve("host")`` raised
``TypeError: 'Collection' object is not callable`` and hyperopt's worker could not run a trial.
"""

from __future__ import annotations

import datetime as dt
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hyperopt.mongoexp
import numpy as np
import pytest
from hyperopt import STATUS_OK, fmin, hp, rand
from hyperopt.mongoexp import MongoWorker, main_worker_helper

from coordinator import rules
from coordinator.hyperopt_jobs import HyperoptJobs
from coordinator.server import EmbeddedServer
from coordinator.states import TrialState
from coordinator.store import TrialStore
from coordinator.trials import HyperfleetTrials
from tests.conftest import queue_trials, wait_for

FMIN_WAIT_S = 60


def objective(x: float) -> dict[str, Any]:
    return {"loss": (x - 1) ** 2, "status": STATUS_OK, "attachments": {"note": b"from hyperopt"}}


class FmInThread:
    """Plain ``hyperopt.fmin`` over ``trials`` in a thread (hyperopt's worker runs here)."""

    def __init__(self, trials: HyperfleetTrials, max_evals: int) -> None:
        self.trials = trials
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(max_evals,), daemon=True)
        self.thread.start()

    def _run(self, max_evals: int) -> None:
        try:
            fmin(
                objective,
                hp.uniform("x", -3, 3),
                algo=rand.suggest,
                max_evals=max_evals,
                trials=self.trials,
                rstate=np.random.default_rng(7),
                show_progressbar=False,
            )
        except BaseException as e:  # noqa: BLE001 - reported by join()
            self.error = e

    def join(self) -> None:
        self.thread.join(FMIN_WAIT_S)
        assert not self.thread.is_alive(), f"fmin still waiting after {FMIN_WAIT_S} s"
        assert self.error is None, repr(self.error)


def assert_done_by(store: TrialStore, exp_key: str, owner: str, n: int) -> None:
    docs = list(store.jobs.find({"exp_key": exp_key}))
    assert len(docs) == n
    for doc in docs:
        assert doc["state"] == TrialState.DONE, doc
        assert doc["owner"] == owner
        assert rules.trial_problem(doc) is None
        assert isinstance(doc["mtime"], dt.datetime)
        assert doc["mtime"] >= doc["book_time"]  # stamped by the worker's writes, not only reserve
        x = doc["misc"]["vals"]["x"][0]
        assert doc["result"]["loss"] == pytest.approx((x - 1) ** 2)
        assert [name for name, _ in doc["_attachments"]] == ["note"]


@pytest.fixture
def keep_signal_handlers() -> Iterator[None]:
    """``main_worker_helper`` installs its own handlers; give pytest its own back."""
    signals = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1)
    saved = {s: signal.getsignal(s) for s in signals}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def test_reserve_returns_the_document(store: TrialStore) -> None:
    queue_trials(store, 1, space=None)
    jobs = HyperoptJobs(store)

    doc = jobs.reserve("host")

    assert doc is not None  # the old code: TypeError: 'Collection' object is not callable
    assert doc["state"] == TrialState.RUNNING
    assert doc["owner"] == "host"
    for field in ("book_time", "refresh_time", "mtime", "lease_expires"):
        assert isinstance(doc[field], dt.datetime), field
    # a real lease, renewed by a thread of the claiming process (issue 22, item 1)
    assert doc["lease_expires"] - doc["book_time"] == dt.timedelta(seconds=30)
    assert doc["attempt"] == 1
    assert store.jobs.find_one({"_id": doc["_id"]}) == doc
    assert jobs.reserve("host") is None  # nothing left queued


def test_reserve_stores_hyperopt_tuple_host_ids_as_strings(store: TrialStore) -> None:
    """hyperopt's workers pass tuples (``("host:pid",)`` by default): stored as BSON arrays,
    every hyperfleet reader refused the trial, and a search never saw it finish."""
    queue_trials(store, 2, space=None)
    jobs = HyperoptJobs(store)

    docs = [jobs.reserve(("hostname", 0)), jobs.reserve(("host:123",))]

    assert [d["owner"] for d in docs] == ["hostname:0", "host:123"]
    assert all(rules.trial_problem(d) is None for d in docs)
    with pytest.raises(ValueError, match="non-empty host id"):
        jobs.reserve(())


def test_hyperopt_mongo_worker_runs_plain_fmin_trials(store: TrialStore, tmp_path: Path) -> None:
    search = FmInThread(HyperfleetTrials(store, exp_key="hw"), max_evals=3)
    worker = MongoWorker(
        HyperoptJobs(store), poll_interval=1.0, workdir=str(tmp_path / "w"), logfilename=None
    )
    for _ in range(3):
        worker.run_one("hostname", reserve_timeout=FMIN_WAIT_S, erase_created_workdir=True)
    search.join()

    assert_done_by(store, "hw", "hostname", 3)
    trials = search.trials
    trials.refresh()
    assert len(trials.losses()) == 3 and None not in trials.losses()
    assert trials.trial_attachments(trials.trials[0])["note"] == b"from hyperopt"


def test_main_worker_helper_runs_a_queued_trial(
    server: EmbeddedServer,
    store: TrialStore,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    keep_signal_handlers: None,
) -> None:
    """hyperopt's ``hyperopt-mongo-worker`` body, with hyperopt's ``mongo://`` strings on both
    sides (``MongoJobs.new_from_connection_str`` is the adapter's)."""
    monkeypatch.setattr(hyperopt.mongoexp, "MongoJobs", HyperoptJobs)
    monkeypatch.chdir(tmp_path)  # its worker logs to ./logfile.txt
    where = f"{server.host}:{server.port}/{store.db_name}"
    search = FmInThread(HyperfleetTrials(f"mongo://{where}/jobs", exp_key="mw"), max_evals=1)

    class Options:
        max_jobs = 1
        mongo = where
        reserve_timeout = FMIN_WAIT_S
        poll_interval = 1.0
        workdir = str(tmp_path / "w")
        exp_key = "mw"
        last_job_timeout = None

    main_worker_helper(Options(), ())
    search.join()

    [doc] = store.jobs.find({"exp_key": "mw"})
    assert_done_by(store, "mw", doc["owner"], 1)
    assert doc["owner"].rsplit(":", 1)[1].isdigit()  # hyperopt's ("host:pid",), as a string


class _ReplyLostOnce:
    """``store.jobs`` whose first ``find_one_and_update`` takes effect on the server and then
    loses its reply (a real write, a simulated network failure: no fake server)."""

    def __init__(self, jobs: Any) -> None:
        self._jobs = jobs
        self.lost = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._jobs, name)

    def find_one_and_update(self, *args: Any, **kwargs: Any) -> Any:
        done = self._jobs.find_one_and_update(*args, **kwargs)
        if not self.lost:
            self.lost += 1
            import pymongo.errors

            raise pymongo.errors.AutoReconnect("reply lost (simulated)")
        return done


def test_a_reserve_whose_reply_was_lost_claims_no_second_trial(store: TrialStore) -> None:
    """The retry finds the claim it made (hyperopt's reservations have no lease: a second
    claim would orphan the first for good)."""
    queue_trials(store, 3, exp_key="lost")
    jobs = HyperoptJobs(store)
    store.jobs = _ReplyLostOnce(store.jobs)  # type: ignore[assignment]
    doc = jobs.reserve("host", exp_key="lost")
    assert store.jobs.lost == 1 and doc is not None
    running = store.trials("lost", [TrialState.RUNNING])
    assert [d["tid"] for d in running] == [doc["tid"]]


def test_a_live_hyperopt_worker_keeps_its_trial_past_the_lease(store: TrialStore) -> None:
    """The claim's lease is renewed while the trial runs (hyperopt's worker renews none): a
    trial longer than the lease is not reaped under a live worker, and its end clears it."""
    queue_trials(store, 1, space=None, exp_key="live")
    jobs = HyperoptJobs(store, lease_s=1.0, heartbeat_s=0.2)
    doc = jobs.reserve("host", exp_key="live")
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:  # three leases long, a reaper at work
        assert store.reap_expired("live") == []
        time.sleep(0.2)
    jobs.update(doc, {"state": TrialState.DONE, "result": {"status": "ok", "loss": 1.0}})
    done = store.get_trial("live", doc["tid"])
    assert done["state"] == TrialState.DONE and done["lease_expires"] is None
    assert "attempt_history" not in done


def test_a_dead_hyperopt_worker_loses_its_trial_once_the_lease_runs_out(
    server: EmbeddedServer, store: TrialStore
) -> None:
    """Issue 22, item 1: hyperopt's worker (through the adapter) took a trial and was killed.
    The claim used to set no lease: nobody ever reaped it, and the search waited for ever."""
    queue_trials(store, 1, space=None, exp_key="dead")
    script = textwrap.dedent(f"""
        import time
        from coordinator.hyperopt_jobs import HyperoptJobs
        from coordinator.store import connect
        jobs = HyperoptJobs(connect({server.uri!r}, {store.db_name!r}), lease_s=1.0,
                            heartbeat_s=0.2)
        print(jobs.reserve("doomed-host", exp_key="dead")["tid"], flush=True)
        time.sleep(600)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        tid = int(proc.stdout.readline())
        time.sleep(1.5)  # alive: its thread renews the lease
        assert store.reap_expired("dead") == []
        proc.kill()
    finally:
        proc.kill()
        proc.wait()
    reaped = wait_for(lambda: store.reap_expired("dead"), 10, what="the dead claim reaped")
    assert reaped == [tid]
    doc = store.get_trial("dead", tid)
    assert doc["state"] == TrialState.NEW and doc["attempt_history"][0]["outcome"] == "lost"
