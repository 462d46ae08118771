"""Warming up before the first reservation never delays trials that are already queued."""

from __future__ import annotations

import time

import pytest

from coordinator.store import TrialStore
from tests.conftest import queued_doc


@pytest.mark.parametrize("pinned", [True, False])
def test_queued_trials_without_an_experiment_end_the_wait(
    store: TrialStore, monkeypatch: pytest.MonkeyPatch, pinned: bool
) -> None:
    """Plain ``hyperopt.fmin`` queues trials but makes no experiment document: a warming worker
    used to wait its whole ``EXPERIMENT_WAIT_S`` for one before taking them."""
    from worker import warm

    monkeypatch.setattr(warm, "EXPERIMENT_WAIT_S", 60.0)
    store.insert_trials([queued_doc(0, "plain")])
    started = time.monotonic()
    assert warm._targets(store, "plain" if pinned else None) == []
    assert time.monotonic() - started < 30  # not the 60 s wait


def test_queued_trials_of_a_known_experiment_do_not_end_the_wait(store: TrialStore) -> None:
    """An unpinned worker stops waiting only for trials no experiment describes: a failed
    experiment's leftover queued trials must not make it skip warming a new experiment."""
    from worker import warm

    store.create_experiment({"_id": "old", "space": "quadratic", "status": "failed"})
    store.insert_trials([queued_doc(0, "old")])
    assert not warm._queued_without_experiment(store, None)
    store.insert_trials([queued_doc(1, "plain")])  # plain fmin: no experiment document
    assert warm._queued_without_experiment(store, None)
    assert warm._queued_without_experiment(store, "plain")
    assert not warm._queued_without_experiment(store, "absent")
