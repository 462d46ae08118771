"""worker/heartbeat.py on the embedded server: the lease is renewed on the server's clock, a lost
lease is noticed, a failing callback never kills the thread, and stopping is immediate."""

from __future__ import annotations

import threading
import time

import pytest

from coordinator.states import AttemptOutcome
from coordinator.store import Lease, TrialStore
from tests.conftest import queue_trials, wait_for
from worker.heartbeat import Heartbeat


def reserve_one(store: TrialStore, lease_s: float = 30.0) -> Lease:
    queue_trials(store, 1)
    lease = store.reserve_trial("w-test", exp_key="exp", lease_s=lease_s)
    assert lease is not None
    return lease


def lease_expires(store: TrialStore, lease: Lease):
    return store.get_trial(lease.exp_key, lease.tid)["lease_expires"]


def test_renews_the_lease_and_calls_on_beat(store: TrialStore) -> None:
    lease = reserve_one(store, lease_s=1.0)
    before = lease_expires(store, lease)
    beats = threading.Semaphore(0)
    with Heartbeat(store, lease, interval_s=0.05, lease_s=60.0, on_beat=beats.release) as beat:
        wait_for(lambda: beats.acquire(blocking=False), timeout=5, what="a heartbeat")
    assert not beat.lost.is_set()
    # renewed for 60 s of server time: far beyond the 1 s lease it was reserved with
    assert (lease_expires(store, lease) - before).total_seconds() > 30


def test_stops_at_once_even_with_a_long_interval(store: TrialStore) -> None:
    lease = reserve_one(store)
    started = time.monotonic()
    with Heartbeat(store, lease, interval_s=60.0, lease_s=120.0) as beat:
        pass
    # far below the 60 s interval it would sleep out; slack for a thread start on a busy machine
    assert time.monotonic() - started < 5.0
    assert not beat._thread.is_alive()
    assert not beat.lost.is_set()


def test_a_lost_lease_sets_lost_and_ends_the_thread(
    store: TrialStore, caplog: pytest.LogCaptureFixture
) -> None:
    lease = reserve_one(store)
    # someone else changed the trial (here: handed back): the fence no longer matches
    store.release(lease, AttemptOutcome.REQUEUED, "taken away by the test")
    with Heartbeat(store, lease, interval_s=0.05, lease_s=30.0) as beat:
        assert beat.lost.wait(5), "the heartbeat did not notice the lost lease"
        beat._thread.join(5)
        assert not beat._thread.is_alive()
    # named by its tid (issue 23: "trial N" is the per-experiment number status prints)
    assert f"tid {lease.tid}: lease lost (reaped or cancelled)" in caplog.text, caplog.text


def test_a_failing_on_beat_does_not_stop_the_heartbeat(
    store: TrialStore, caplog: pytest.LogCaptureFixture
) -> None:
    lease = reserve_one(store)
    calls: list[float] = []

    def broken() -> None:
        calls.append(time.monotonic())
        raise RuntimeError("registry write failed")

    with Heartbeat(store, lease, interval_s=0.05, lease_s=30.0, on_beat=broken) as beat:
        wait_for(lambda: len(calls) >= 3, timeout=5, what="three beats")
        assert beat._thread.is_alive()
    assert not beat.lost.is_set()
    # one line per failure, no stack: a log line starting "Traceback" reads like a crash
    failures = [r for r in caplog.records if "heartbeat failed" in r.getMessage()]
    assert failures and all(r.exc_info is None for r in failures)
    assert "RuntimeError: registry write failed" in failures[0].getMessage()


def test_a_renewal_that_returns_after_the_trial_ended_says_nothing(
    store: TrialStore, caplog: pytest.LogCaptureFixture
) -> None:
    """A renewal still waiting out an outage when the trial ends (the worker stops waiting
    for the thread after 10 s) used to log a false "lease lost" after the result was
    recorded, and re-register the worker with the finished trial. A stand-in store holds the
    renewal: a real outage cannot be ended at exactly the moment wanted."""
    lease = reserve_one(store)
    entered, release = threading.Event(), threading.Event()
    beats: list[int] = []

    class SlowStore:
        def heartbeat(self, lease: Lease, lease_s: float) -> bool:
            entered.set()
            release.wait(10)
            return False  # as if the trial had moved on meanwhile

    beat = Heartbeat(
        SlowStore(), lease, interval_s=0.01, lease_s=30.0, on_beat=lambda: beats.append(1)
    )  # type: ignore[arg-type]
    beat.__enter__()
    assert entered.wait(5)
    beat._stop.set()  # the trial ended while the renewal was out
    release.set()
    beat._thread.join(5)
    assert not beat.lost.is_set() and not beats
    assert "lease lost" not in caplog.text
