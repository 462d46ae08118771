"""Asynchronous successive halving (ASHA; Li et al., MLSys 2020), as Optuna's
``SuccessiveHalvingPruner`` runs it.

Rung ``k`` is at epoch ``min_epochs · η^(rate + k)``. A trial reaching a rung records its value
there and goes on only if it is among the best ``1/η`` of every value recorded at that rung so
far (itself included; while fewer than ``η`` values exist, only the best goes on: a trial
stopped then could never come back). Nothing waits for a rung to fill, so workers never idle;
the cost is that early trials face few competitors.

With ``--promote`` (``PruningConfig.promote``) a trial below the cut *pauses* instead of
stopping: its checkpoint is kept, and the coordinator promotes it (resumes it from there) once
it ranks among the rung's best ``1/η`` (:mod:`coordinator.pruning.promotion`), as ASHA's
promotions do. With ``--promote-wait`` (``promote_wait``) the best ``1/η`` is taken literally,
as in Li et al.'s algorithm: while a rung holds fewer than ``η`` values nobody goes on
(``strict``), since a paused trial loses nothing by waiting; the search's end promotes the best
of such a rung (the rung will get no more values). A NaN value stops the trial for good: it
competes with nobody.
"""

from __future__ import annotations

import math

from coordinator.pruning.base import (
    Decision,
    EpochReport,
    PruningConfig,
    RungLog,
    rung_record,
    stored_decision,
)

RULE = "asha"


def rung_epoch(config: PruningConfig, rate: int, rung: int) -> int:
    """The epoch at which rung ``rung`` of a bracket with early-stopping rate ``rate`` is."""
    return config.min_epochs * config.reduction_factor ** (rate + rung)


def promotable(
    value: float,
    competing: list[float],
    reduction_factor: int,
    direction: str,
    *,
    strict: bool = False,
) -> tuple[bool, float | None]:
    """Whether ``value`` is among the best ``1/η`` of ``competing`` (which includes it), and
    the value it had to reach (``None`` when nothing could). Ties go on. While fewer than
    ``η`` values compete, only the best goes on; with ``strict`` (promotions) none does."""
    index = len(competing) // reduction_factor - 1
    if index == -1:
        if strict:
            return False, None
        index = 0  # fewer than η values: only the best goes on
    ordered = sorted(competing)
    if direction == "max":
        threshold = ordered[-(index + 1)]
        return value >= threshold, threshold
    threshold = ordered[index]
    return value <= threshold, threshold


class SuccessiveHalving:
    """:class:`~coordinator.pruning.base.Pruner` for ``--prune asha``, and one bracket of
    ``--prune hyperband`` (``bracket``, ``rate``)."""

    def __init__(
        self,
        config: PruningConfig,
        log: RungLog,
        *,
        bracket: int = 0,
        rate: int = 0,
        rule: str = RULE,
    ) -> None:
        self.config = config
        self.log = log
        self.bracket = bracket
        self.rate = rate
        self.rule = rule

    def rungs_between(self, after: int, upto: int) -> list[int]:
        """The rungs whose epoch is in ``(after, upto]``."""
        found, rung = [], 0
        while (at := rung_epoch(self.config, self.rate, rung)) <= upto:
            if at > after:
                found.append(rung)
            rung += 1
        return found

    def judge(self, report: EpochReport) -> Decision | None:
        decision = None
        for rung in self.rungs_between(report.previous_epoch, report.epoch):
            decision = self._at_rung(report, rung)
            if decision.prune:
                break
        return decision

    def _at_rung(self, report: EpochReport, rung: int) -> Decision:
        """Record the trial's value at ``rung`` and decide; at the trial's last epoch the value
        is recorded (it competes) but the trial is never stopped (``PruningConfig.final``)."""
        config = self.config
        final = config.final(report.epoch)
        if math.isnan(report.value):
            decision = Decision(
                not final, self.rule, report.epoch, report.value, None, self.bracket, rung
            )
            seen: list[int] = []
        else:
            others = self.log.rung_values(report.exp_key, self.bracket, rung)
            others.pop(report.tid, None)
            seen = sorted(others)
            prune, threshold = _judge_value(report.value, [others[t] for t in seen], config)
            decision = Decision(
                prune and not final,
                self.rule,
                report.epoch,
                report.value,
                threshold,
                self.bracket,
                rung,
                pause=prune and not final and config.promote,
            )
        inputs = {"seen": seen, "rate": self.rate, **({"final": True} if final else {})}
        record = rung_record(decision, report, config.metric, **inputs)
        return stored_decision(self.log.record_rung(record), decision)


def _judge_value(
    value: float, others: list[float], config: PruningConfig
) -> tuple[bool, float | None]:
    keep, threshold = promotable(
        value,
        [*others, value],
        config.reduction_factor,
        config.direction,
        strict=config.promote and config.promote_wait,
    )
    return not keep, threshold


def make(config: PruningConfig, log: RungLog) -> SuccessiveHalving:
    return SuccessiveHalving(config, log)
