"""Trials of a real built-in search space for the chart tests: hyperopt's own ``rand.suggest``
draws them from the space (so ``misc.vals`` and the decoded ``params`` are what a search
stores), and a known loss, per-epoch curve and outcome (full, pruned, failed) are written on
top, as a worker would leave them."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable
from typing import Any

from coordinator.states import TrialState
from tests.dashboard.conftest import trial_doc


def space_trials(
    space_name: str,
    n: int,
    exp_key: str,
    *,
    loss: Callable[[dict[str, Any]], float],
    epochs: Callable[[int, float], list[dict[str, Any]]] | None = None,
    pruned: Callable[[int], int | None] = lambda tid: None,
    seed: int = 1,
    start: dt.datetime | None = None,
    seconds_each: float = 5.0,
) -> list[dict[str, Any]]:
    """``n`` DONE trials of the built-in space ``space_name`` with its default settings:
    ``loss(params)`` as their loss, ``epochs(tid, loss)`` as their per-epoch records (none when
    ``None``); ``pruned(tid)`` an epoch makes the trial pruned there (its curve ends there).
    Trial ``tid`` runs from ``start + tid * seconds_each`` for ``seconds_each`` seconds."""
    from hyperopt import Trials, rand, space_eval
    from hyperopt.base import Domain

    from search_spaces import get_space

    space = get_space(space_name)
    hp_space = space.hyperopt_space(space.resolve_settings({}))
    trials = Trials()
    docs = rand.suggest(list(range(n)), Domain(lambda p: 0.0, hp_space), trials, seed)
    start = start or dt.datetime.now(dt.UTC).replace(tzinfo=None) - dt.timedelta(
        seconds=n * seconds_each + 10
    )
    out = []
    for d in docs:
        tid = d["tid"]
        vals = plain(d["misc"]["vals"])
        params = plain(space_eval(hp_space, {k: v[0] for k, v in vals.items() if v}))
        value = float(loss(params))
        stop = pruned(tid)
        curve = epochs(tid, value) if epochs else []
        result: dict[str, Any] = {"status": "ok", "loss": value}
        if stop is not None:
            curve = curve[:stop]
            partial = curve[-1]["val_loss"] if curve else value
            result = {
                "status": "ok",
                "loss": partial,
                "pruned": {"epoch": stop, "rule": "median", "metric": "val_loss"},
            }
        begin = start + dt.timedelta(seconds=tid * seconds_each)
        out.append(
            trial_doc(
                tid,
                TrialState.DONE,
                exp_key=exp_key,
                space=space_name,
                misc={"tid": tid, "vals": vals, "idxs": plain(d["misc"]["idxs"]), "cmd": None},
                params=params,
                result=result,
                epochs=curve,
                book_time=begin,
                ended=begin + dt.timedelta(seconds=seconds_each),
                duration_s=seconds_each,
            )
        )
    return out


def plain(value: Any) -> Any:
    """``value`` with numpy scalars as Python numbers and tuples as lists (what BSON stores)."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value.item() if hasattr(value, "item") else value


def learning_rate(params: dict[str, Any]) -> float:
    """The mnist spaces' learning rate (every optimizer choice has one)."""
    return float(params["optimizer"]["learning_rate"])


def lr_loss(params: dict[str, Any]) -> float:
    """A loss that depends on the (log-distributed) learning rate only: best near 1e-3."""
    return 0.05 + abs(math.log10(learning_rate(params)) + 3.0) ** 2


def decaying(epochs: int) -> Callable[[int, float], list[dict[str, Any]]]:
    """Curves that fall to the trial's loss over ``epochs`` epochs, with per-epoch seconds."""

    def make(tid: int, loss: float) -> list[dict[str, Any]]:
        return [
            {
                "epoch": e,
                "loss": loss + 1.0 / e,
                "val_loss": loss + 1.2 / e,
                "accuracy": 1.0 - 0.5 / e,
                "seconds": 1.5 + 0.1 * e,
            }
            for e in range(1, epochs + 1)
        ]

    return make
