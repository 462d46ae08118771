"""Warm a trial process before its first reservation: imports, data and the framework's
first-use costs paid while no trial waits (``hyperfleet worker --warm``, the default).

A space that can warm itself has a ``warm_up(settings)`` method (Keras spaces do: see
:class:`search_spaces.keras.space.KerasSearchSpace`). A worker pinned to an experiment warms
that experiment's space with its settings (waiting up to ``EXPERIMENT_WAIT_S`` for the
experiment to appear; none: nothing is warmed); an unpinned worker warms every registered space
that can, once per distinct data loader, with default settings.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from coordinator.errors import HyperfleetError
from coordinator.store import TrialStore
from search_spaces import SearchSpace, available_spaces, get_space

logger = logging.getLogger(__name__)


#: how long a worker pinned to an experiment waits for it to appear (``hyperfleet local`` starts
#: its workers just before the search creates it); then it warms nothing
EXPERIMENT_WAIT_S = 5.0


def _experiment(store: TrialStore, exp_key: str) -> dict[str, Any] | None:
    deadline = time.monotonic() + EXPERIMENT_WAIT_S
    while True:
        exp = store.get_experiment(exp_key)
        if exp is not None or time.monotonic() >= deadline:
            return exp
        time.sleep(0.1)


def _targets(store: TrialStore, exp_key: str | None) -> list[tuple[SearchSpace, dict[str, Any]]]:
    if exp_key is not None:
        exp = _experiment(store, exp_key)
        if exp is None or not exp.get("space"):
            return []  # not there yet, or plain fmin: nothing known to warm
        space = get_space(exp["space"])
        return [(space, space.resolve_settings(exp.get("settings") or {}))]
    seen: set[Any] = set()
    targets = []
    for space in available_spaces():
        loader = getattr(space, "data", None)
        if callable(getattr(space, "warm_up", None)) and loader not in seen:
            seen.add(loader)
            targets.append((space, space.resolve_settings({})))
    return targets


def warm(store: TrialStore, exp_key: str | None) -> float:
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
