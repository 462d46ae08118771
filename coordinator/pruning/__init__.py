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
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from coordinator.pruning.base import (
    Decision,
    EpochReport,
    Pruner,
    PruningConfig,
    RungLog,
    metric_value,
    resolve_pruning,
    stand_in_loss,
)

logger = logging.getLogger(__name__)

#: (exp_key, metric) pairs already warned about in this process: one line each, not per epoch
_UNREPORTED: set[tuple[str, str]] = set()

__all__ = [
    "AttemptJudge",
    "Decision",
    "EpochReport",
    "Pruner",
    "PruningConfig",
    "RungLog",
    "make_pruner",
    "pruned_result",
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
        metric = self.pruner.config.metric
        raw = metrics.get(metric)
        if isinstance(raw, bool) or not isinstance(raw, (int, float)):
            # the metric is missing or not a number: no report, never a reason to stop
            self._warn_unreported(metric, metrics)
            return None
        value = metric_value(metrics, metric)
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

    def _warn_unreported(self, metric: str, metrics: Mapping[str, Any]) -> None:
        key = (self.exp_key, metric)
        if key in _UNREPORTED:
            return
        _UNREPORTED.add(key)
        reported = sorted(
            str(k)
            for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "epoch"
        )
        logger.warning(
            "pruning %r: tid %s does not report metric %r (it reports: %s); its epochs are "
            "not judged, no trial is stopped for it",
            self.exp_key,
            self.tid,
            metric,
            ", ".join(reported) or "nothing",
        )


def pruned_result(
    result: dict[str, Any],
    decision: Decision,
    metric: str,
    losses: Callable[[], Iterable[Any]],
    *,
    diverged: bool = False,
) -> dict[str, Any]:
    """``result`` (checked: ``status``, ``loss``) of a trial that ``decision`` stopped, recorded
    as pruned (``result.pruned``). ``diverged``: the objective's loss was NaN or infinite (its
    metric was NaN, e.g. a diverged training), which made the result ``fail``: it is still a
    pruned trial, not a failure: ``ok`` with the :func:`~coordinator.pruning.base.
    stand_in_loss` of the experiment's ``losses`` (read only then) and ``pruned.stand_in_loss``
    true, so every reader shows it as pruned and TPE treats its region as bad. A result the
    objective itself marked failed stays failed."""
    if diverged and result.get("status") == "fail" and result.get("loss") is None:
        result.pop("failure", None)
        result.update(status="ok", loss=stand_in_loss(losses()))
        record = decision.pruned_record(metric)
        record["stand_in_loss"] = True
        result["pruned"] = record
    elif result.get("status") == "ok":
        result["pruned"] = decision.pruned_record(metric)
    return result
