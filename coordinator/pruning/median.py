"""The median rule: stop a trial whose best value so far is worse than the median of the
finished trials' values at the same epoch (Optuna's ``MedianPruner``; Google Vizier's
median stopping rule).

It compares against finished, unpruned trials only, and only once ``startup_trials`` of them
exist and the trial has trained more than ``warmup_epochs`` epochs. Finished trials never change,
so each process reads each of them once.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from coordinator.pruning.base import (
    Decision,
    EpochReport,
    PruningConfig,
    RungLog,
    rung_record,
    stored_decision,
)

RULE = "median"


def best_so_far(curve: tuple[float, ...] | list[float], direction: str) -> float:
    """The best value of ``curve`` (NaNs ignored; NaN if all are NaN)."""
    values = [v for v in curve if not math.isnan(v)]
    if not values:
        return math.nan
    return max(values) if direction == "max" else min(values)


def median_threshold(values: list[float]) -> float:
    """The median of ``values``, NaNs ignored (linear interpolation, as ``np.nanpercentile``);
    NaN when there is no number."""
    numbers = [v for v in values if not math.isnan(v)]
    if not numbers:  # no warnings.catch_warnings here: it is process-wide, not thread-safe
        return math.nan
    return float(np.percentile(np.asarray(numbers, dtype=float), 50.0))


def decide(best: float, reference: list[float], direction: str) -> tuple[bool, float | None]:
    """Prune (and the threshold) for a trial whose best value so far is ``best``, given the
    finished trials' values at this epoch. A trial with no number yet is pruned; with no
    reference number it goes on."""
    if math.isnan(best):
        return True, None
    threshold = median_threshold(reference) if reference else math.nan
    if math.isnan(threshold):
        return False, None
    worse = best < threshold if direction == "max" else best > threshold
    return worse, threshold


class MedianPruner:
    """:class:`~coordinator.pruning.base.Pruner` for ``--prune median``."""

    def __init__(self, config: PruningConfig, log: RungLog) -> None:
        self.config = config
        self.log = log
        self._curves: dict[int, dict[int, float] | None] = {}  #: finished trials, by tid

    def judge(self, report: EpochReport) -> Decision | None:
        config = self.config
        self._curves.update(
            self.log.finished_curves(report.exp_key, config.metric, known=self._curves.keys())
        )
        finished = {tid: c for tid, c in self._curves.items() if c is not None}
        if not finished or len(finished) < config.startup_trials:
            return None
        if report.epoch <= config.warmup_epochs:
            return None
        seen = sorted(tid for tid, c in finished.items() if report.epoch in c)
        best = best_so_far(report.curve, config.direction)
        if not seen and not math.isnan(best):
            return None  # no finished trial reached this epoch: nothing to compare with
        prune, threshold = decide(best, [finished[t][report.epoch] for t in seen], config.direction)
        final = config.final(report.epoch)
        prune = prune and not final
        decision = Decision(prune, RULE, report.epoch, report.value, threshold, 0, report.epoch)
        inputs: dict[str, Any] = {"best": None if math.isnan(best) else best, "seen": seen}
        if final:
            inputs["final"] = True  # the last epoch: recorded, never stopped
        stored = self.log.record_rung(rung_record(decision, report, config.metric, **inputs))
        return stored_decision(stored, decision)


def make(config: PruningConfig, log: RungLog) -> MedianPruner:
    return MedianPruner(config, log)
