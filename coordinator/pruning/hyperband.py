"""Hyperband (Li et al., JMLR 2018) as Optuna's ``HyperbandPruner`` runs it: several ASHA
brackets side by side, each with a later first rung.

With ``n = ⌊log_η(max_epochs / min_epochs)⌋ + 1`` brackets, bracket ``b`` is successive halving
whose first rung is at ``min_epochs · η^b``: bracket 0 stops trials after ``min_epochs`` already,
the last lets every trial train long before any comparison. A trial's bracket follows from the
experiment and its tid alone (a CRC32, weighted so that aggressive brackets get more trials), and
it competes only with trials of its own bracket.
"""

from __future__ import annotations

import binascii
import math

from coordinator.pruning.asha import SuccessiveHalving
from coordinator.pruning.base import Decision, EpochReport, PruningConfig, RungLog

RULE = "hyperband"


def bracket_budgets(config: PruningConfig) -> list[int]:
    """The relative number of trials each bracket gets (Hyperband's ``n_i``)."""
    assert config.max_epochs is not None
    n = math.floor(math.log(config.max_epochs / config.min_epochs, config.reduction_factor)) + 1
    return [math.ceil(n * config.reduction_factor ** (n - 1 - b) / (n - b)) for b in range(n)]


def bracket_of(exp_key: str, tid: int, budgets: list[int]) -> int:
    """The bracket of trial ``tid``: reproducible from the experiment's key and the tid."""
    n = binascii.crc32(f"{exp_key}_{tid}".encode()) % sum(budgets)
    for bracket, budget in enumerate(budgets):
        n -= budget
        if n < 0:
            return bracket
    raise AssertionError("unreachable: n < sum(budgets)")


class Hyperband:
    """:class:`~coordinator.pruning.base.Pruner` for ``--prune hyperband``."""

    def __init__(self, config: PruningConfig, log: RungLog) -> None:
        self.config = config
        self.budgets = bracket_budgets(config)
        self.brackets = [
            SuccessiveHalving(config, log, bracket=b, rate=b, rule=RULE)
            for b in range(len(self.budgets))
        ]

    def judge(self, report: EpochReport) -> Decision | None:
        bracket = bracket_of(report.exp_key, report.tid, self.budgets)
        return self.brackets[bracket].judge(report)


def make(config: PruningConfig, log: RungLog) -> Hyperband:
    return Hyperband(config, log)
