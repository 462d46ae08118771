"""Early stopping of hopeless trials: one rule per module behind one :class:`Pruner` protocol.

The worker asks :class:`AttemptJudge` after every epoch a trial reports (``TrialContext.
report_epoch``); the rule answers with a :class:`Decision` written as a rung record
(:mod:`coordinator.store.rungs`), and the worker turns it into a
:class:`~coordinator.states.Verdict`. Rules: :mod:`~coordinator.pruning.median`,
:mod:`~coordinator.pruning.asha`, :mod:`~coordinator.pruning.hyperband`; a new rule is a new
module here with a ``make(config, log)`` function plus its name in ``defaults.PRUNE_RULES``.
See docs/pruning.md.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from coordinator.pruning.base import (
    Decision,
    EpochReport,
    Pruner,
    PruningConfig,
    RungLog,
    metric_value,
    resolve_pruning,
)

__all__ = [
    "AttemptJudge",
    "Decision",
    "EpochReport",
    "Pruner",
    "PruningConfig",
    "RungLog",
    "make_pruner",
    "resolve_pruning",
]


def make_pruner(config: PruningConfig | None, log: RungLog) -> Pruner | None:
    """The rule ``config`` names, bound to ``log`` (``None`` for no rule)."""
    if config is None:
        return None
    module = importlib.import_module(f"coordinator.pruning.{config.rule}")
    return module.make(config, log)


class AttemptJudge:
    """One trial attempt's side of pruning: keeps the metric's curve so far and asks the rule."""

    def __init__(self, pruner: Pruner, exp_key: str, tid: int, attempt: int) -> None:
        self.pruner = pruner
        self.exp_key = exp_key
        self.tid = tid
        self.attempt = attempt
        self.curve: list[float] = []
        self.previous_epoch = 0

    def report(self, metrics: Mapping[str, Any]) -> Decision | None:
        """The rule's decision on this epoch's ``metrics`` (``None``: nothing decided)."""
        value = metric_value(metrics, self.pruner.config.metric)
        self.curve.append(value)
        epoch = metrics.get("epoch")
        epoch = int(epoch) if isinstance(epoch, (int, float)) else self.previous_epoch + 1
        report = EpochReport(
            self.exp_key,
            self.tid,
            self.attempt,
            epoch,
            value,
            tuple(self.curve),
            self.previous_epoch,
        )
        self.previous_epoch = epoch
        return self.pruner.judge(report)
