"""Warm a trial process before its first reservation: imports, data and the framework's
first-use costs paid while no trial waits (``hyperfleet worker --warm``, the default).

A space that can warm itself has a ``warm_up(settings)`` method (Keras spaces do: see
:class:`search_spaces.keras.space.KerasSearchSpace`). A worker pinned to an experiment warms
that experiment's space with its settings; an unpinned worker warms the spaces of the running
experiments. Either waits up to ``EXPERIMENT_WAIT_S`` for one to appear, then warms nothing (a
fleet serving other spaces pays no Keras import); it stops waiting as soon as trials are queued
with no experiment (plain ``hyperopt.fmin``).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from coordinator.errors import HyperfleetError
from coordinator.shown import shown
from coordinator.states import ExperimentStatus, TrialState
from coordinator.store import TrialStoreBase
from search_spaces import SearchSpace, get_space

logger = logging.getLogger(__name__)


#: how long a worker waits for an experiment to warm for (``hyperfleet local`` starts its
#: workers just before the search creates it); then it warms nothing
EXPERIMENT_WAIT_S = 5.0


def _experiments(store: TrialStoreBase, exp_key: str | None) -> list[dict[str, Any]]:
    """The experiment ``exp_key``, or (``None``) the running ones, once there is one."""
    deadline = time.monotonic() + EXPERIMENT_WAIT_S
    while True:
        if exp_key is not None:
            exp = store.get_experiment(exp_key)
            found = [] if exp is None else [exp]
        else:
            running = ExperimentStatus.RUNNING.value
            found = [e for e in store.list_experiments() if e.get("status") == running]
        if found or time.monotonic() >= deadline:
            return found
        if _queued_without_experiment(store, exp_key):
            # plain hyperopt.fmin queues trials but makes no experiment to warm for: waiting
            # would only delay them
            return []
        time.sleep(0.1)


def _queued_without_experiment(store: TrialStoreBase, exp_key: str | None) -> bool:
    """Are trials queued (of ``exp_key``, or of any experiment) that no experiment document
    describes? Trials of known experiments (a failed one's leftovers) do not count."""
    if exp_key is not None:
        return store.count(exp_key, [TrialState.NEW]) > 0
    queued = {repr(key) for key in store.queued_exp_keys()}  # repr: any odd key compares
    return bool(queued - {repr(e.get("_id")) for e in store.list_experiments()})


def _targets(
    store: TrialStoreBase, exp_key: str | None
) -> list[tuple[SearchSpace, dict[str, Any]]]:
    targets = []
    for exp in _experiments(store, exp_key):
        if not exp.get("space"):
            continue  # plain fmin: nothing known to warm
        try:
            space = get_space(exp["space"])
        except HyperfleetError as e:
            logger.info("not warming for experiment %s: %s", shown(exp.get("_id")), e)
            continue
        if callable(getattr(space, "warm_up", None)):
            targets.append((space, space.resolve_settings(exp.get("settings") or {})))
    return targets


def warm(store: TrialStoreBase, exp_key: str | None) -> float:
    """Warm this process for ``exp_key``'s trials (or any); returns the seconds it took. A
    space that fails to warm is logged and skipped: its first trial is then a cold one."""
    started = time.perf_counter()
    try:
        targets = _targets(store, exp_key)
    except HyperfleetError as e:
        logger.warning("not warming up: %s", e)
        return time.perf_counter() - started
    for space, settings in targets:
        try:
            space.warm_up(settings)  # type: ignore[attr-defined]
        except Exception as e:  # noqa: BLE001 - warming is an optimisation, never fatal
            logger.warning("could not warm up space %r: %s: %s", space.name, type(e).__name__, e)
    return time.perf_counter() - started
