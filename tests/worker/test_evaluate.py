"""worker/evaluate.py on the embedded server: an objective's epochs reach the trial document, its
result is checked, its exceptions become ``Outcome.error``, a lost lease becomes ``Outcome.lost``
(never a write), a cancel reaches ``ctx.should_stop`` and model files are kept per trial."""

from __future__ import annotations

import math

import pytest
from hyperopt import hp

from coordinator.errors import Interrupted, SpaceError, TrialLost
from coordinator.states import AttemptOutcome, TrialState
from coordinator.store import Lease, TrialStore
from search_spaces import SearchSpace, register
from tests.conftest import TEST_SPACES, queue_trials
from worker.evaluate import Resolver, TrialContextImpl, check_result, evaluate


def lease_for(
    store: TrialStore, exp_key: str, space: str | None, settings: dict | None = None
) -> Lease:
    queue_trials(store, 1, exp_key=exp_key, space=space, settings=settings)
    lease = store.reserve_trial("w-test", exp_key=exp_key, trusted=space is None)
    assert lease is not None
    return lease


def doc(store: TrialStore, lease: Lease) -> dict:
    return store.get_trial(lease.exp_key, lease.tid)


@pytest.fixture
def resolver(store: TrialStore) -> Resolver:
    return Resolver(store, (TEST_SPACES,))


def test_epochs_are_recorded_and_the_result_finishes_the_trial(
    store: TrialStore, resolver: Resolver
) -> None:
    lease = lease_for(store, "epochs", "epochs", {"epochs": 3, "sleep": 0.0})
    outcome = evaluate(resolver, store, lease, {})
    assert outcome.error is None and not outcome.lost
    assert outcome.result["status"] == "ok" and outcome.result["epochs_run"] == 3
    assert set(outcome.params) == {"x"}
    assert [e["epoch"] for e in doc(store, lease)["epochs"]] == [1, 2, 3]
    assert store.finish(lease, outcome.result, {"params": outcome.params})
    assert doc(store, lease)["state"] == TrialState.DONE
    assert not store.finish(lease, outcome.result, {})  # fenced: a finished trial never changes


def test_an_objective_error_is_an_outcome_and_fails_the_trial(
    store: TrialStore, resolver: Resolver
) -> None:
    lease = lease_for(store, "boom", "boom", {"threshold": -2.0})
    outcome = evaluate(resolver, store, lease, {})
    assert outcome.error["type"] == "ValueError"
    assert "too large" in outcome.error["message"] and "Traceback" in outcome.error["traceback"]
    assert store.fail(lease, outcome.error, {})
    assert doc(store, lease)["state"] == TrialState.ERROR


def test_a_lost_lease_is_reported_as_lost_and_writes_nothing(
    store: TrialStore, resolver: Resolver
) -> None:
    lease = lease_for(store, "lost", "epochs", {"epochs": 3, "sleep": 0.0})
    store.release(lease, AttemptOutcome.REQUEUED, "taken away by the test")
    outcome = evaluate(resolver, store, lease, {})
    assert outcome.lost and outcome.error is None
    after = doc(store, lease)
    assert after["state"] == TrialState.NEW and not after.get("epochs")
    assert not store.finish(lease, {"status": "ok", "loss": 0.0}, {})


def test_a_cancelled_experiment_stops_the_objective(store: TrialStore, resolver: Resolver) -> None:
    lease = lease_for(store, "cancel", "epochs", {"epochs": 50, "sleep": 0.0})
    store.cancel_experiment("cancel", settle_s=0)
    outcome = evaluate(resolver, store, lease, {})
    assert outcome.result["stopped_early"] and outcome.result["epochs_run"] == 1


def test_a_pickled_objective_needs_trust(store: TrialStore, resolver: Resolver) -> None:
    lease = lease_for(store, "pickled", None)
    outcome = evaluate(resolver, store, lease, {})
    assert outcome.error["type"] == SpaceError.__name__
    assert "--trust-pickled" in outcome.error["message"]


def test_interrupted_propagates(store: TrialStore) -> None:
    def objective(params, ctx):
        raise Interrupted()  # what the worker's signal handler raises in an in-process trial

    register(SearchSpace("interrupted", lambda s: {"x": hp.uniform("x", -1, 1)}, objective))
    lease = lease_for(store, "interrupted", "interrupted")
    with pytest.raises(Interrupted):
        evaluate(Resolver(store), store, lease, {})


def test_models_are_attached_and_superseded_ones_dropped(store: TrialStore) -> None:
    queue_trials(store, 2, exp_key="models")
    first = store.reserve_trial("w-test", exp_key="models")
    second = store.reserve_trial("w-test", exp_key="models")
    ctx1 = TrialContextImpl(store, first, {}, {})
    assert ctx1.best_loss() is None
    ctx1.attach("model.keras", b"first")
    assert store.finish(first, {"status": "ok", "loss": 2.0}, {})
    ctx2 = TrialContextImpl(store, second, {}, {})
    assert ctx2.best_loss() == 2.0
    ctx2.attach("model.keras", b"second")
    assert store.finish(second, {"status": "ok", "loss": 1.0}, {})
    assert ctx2.drop_superseded_models("model.keras", worse_than=1.0) == 1
    assert store.get_attachment(doc(store, first), "model.keras") is None
    assert store.get_attachment(doc(store, second), "model.keras") == b"second"
    with pytest.raises(TrialLost):  # the trial is finished: its lease no longer holds
        ctx2.attach("model.keras", b"late")


def test_check_result() -> None:
    assert check_result({"loss": 1})["status"] == "ok"
    diverged = check_result({"loss": math.nan, "status": "ok"})
    assert diverged["status"] == "fail" and diverged["loss"] is None
    assert check_result(1.5) == {"loss": 1.5, "status": "ok"}  # a bare loss, as fmin takes it
    assert check_result(math.inf)["status"] == "fail"
    with pytest.raises(TypeError):
        check_result("1.0")
    with pytest.raises(TypeError):
        check_result(True)
    with pytest.raises(ValueError):
        check_result({"status": "great"})
    with pytest.raises(ValueError, match="MiB encoded"):  # would not fit in its document
        check_result({"loss": 1.0, "blob": "x" * (5 * 2**20)})
