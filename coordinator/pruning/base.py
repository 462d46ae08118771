"""The pruning contract: the experiment's rule (:class:`PruningConfig`), one epoch's report
(:class:`EpochReport`), the rule's answer (:class:`Decision`), and what a rule may read and write
(:class:`RungLog`, implemented by :mod:`coordinator.store.rungs`).

A rule is a small module (``median``, ``asha``, ``hyperband``) with a ``make(config, log)``
function returning a :class:`Pruner`. Every decision it takes is written as one *rung record*
that holds its inputs (the trial's value, the competitors it saw, the threshold), so any decision
can be checked again from the stored data alone.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from coordinator import defaults
from coordinator.errors import ConfigError

DIRECTIONS = ("min", "max")
#: the rules that can pause a trial at a rung and promote it later (``--promote``)
PROMOTING_RULES = ("asha", "hyperband")


@dataclass(frozen=True)
class PruningConfig:
    """An experiment's early-stopping rule, as stored on its document (``pruning``)."""

    rule: str
    metric: str
    direction: str  #: ``min`` (losses) or ``max`` (accuracies)
    warmup_epochs: int = defaults.PRUNE_WARMUP_EPOCHS
    startup_trials: int = defaults.PRUNE_STARTUP_TRIALS
    reduction_factor: int = defaults.PRUNE_REDUCTION_FACTOR
    min_epochs: int = defaults.PRUNE_MIN_EPOCHS
    max_epochs: int | None = None  #: Hyperband's largest budget (default: the ``epochs`` setting)
    #: ASHA/Hyperband with promotions: a trial below a rung's cut pauses (checkpointed) instead
    #: of stopping, and is resumed when it ranks in the rung's best 1/η later
    #: (:mod:`coordinator.pruning.promotion`)
    promote: bool = False
    #: with ``promote``: a rung of fewer than η values promotes nobody (Li et al.'s rule) instead
    #: of letting its best go on (``--promote-wait``)
    promote_wait: bool = False

    def to_doc(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any] | None) -> PruningConfig | None:
        """The config stored on an experiment document; ``None`` for no rule."""
        if not doc or doc.get("rule") in (None, "none"):
            return None
        known = {k: v for k, v in doc.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    def final(self, epoch: int) -> bool:
        """Whether ``epoch`` is a trial's last (``max_epochs``): a rule never stops a trial
        there — its training is over, stopping it saves nothing and would only hide a finished
        trial (Optuna's pruners do stop it; a deliberate difference)."""
        return self.max_epochs is not None and epoch >= self.max_epochs


def resolve_pruning(
    rule: str | None,
    settings: Mapping[str, Any],
    *,
    metric: str | None = None,
    direction: str | None = None,
    warmup_epochs: int | None = None,
    startup_trials: int | None = None,
    reduction_factor: int | None = None,
    min_epochs: int | None = None,
    max_epochs: int | None = None,
    promote: bool | None = False,
    promote_wait: bool | None = False,
) -> PruningConfig | None:
    """The :class:`PruningConfig` that ``--prune RULE`` and its options ask for, with defaults
    from the space's ``settings``: the metric the loss comes from (a Keras space's ``objective``
    ``val_loss`` -> ``val_loss``/min, ``val_error`` -> ``val_accuracy``/max; else ``loss``/min)
    and Hyperband's ``max_epochs`` from ``epochs``. Bad values raise :class:`ConfigError`."""
    if promote_wait and not promote:
        raise ConfigError("--promote-wait needs --promote (and --prune asha or hyperband)")
    if rule in (None, "none"):
        if promote:
            raise ConfigError("--promote needs --prune asha or --prune hyperband")
        return None
    if rule not in defaults.PRUNE_RULES:
        raise ConfigError(f"--prune {rule!r}: choose one of {', '.join(defaults.PRUNE_RULES)}")
    objective = settings.get("objective")
    default_metric, default_direction = {
        "val_loss": ("val_loss", "min"),
        "val_error": ("val_accuracy", "max"),
    }.get(objective, ("loss", "min"))
    if metric is None:
        metric = default_metric
        direction = direction or default_direction
    direction = direction or ("max" if "acc" in metric else "min")
    if direction not in DIRECTIONS:
        raise ConfigError(f"--prune-direction {direction!r}: choose min or max")
    epochs = settings.get("epochs")
    config = PruningConfig(
        rule=rule,
        metric=metric,
        direction=direction,
        warmup_epochs=defaults.PRUNE_WARMUP_EPOCHS if warmup_epochs is None else warmup_epochs,
        startup_trials=defaults.PRUNE_STARTUP_TRIALS if startup_trials is None else startup_trials,
        reduction_factor=(
            defaults.PRUNE_REDUCTION_FACTOR if reduction_factor is None else reduction_factor
        ),
        min_epochs=defaults.PRUNE_MIN_EPOCHS if min_epochs is None else min_epochs,
        max_epochs=max_epochs if max_epochs is not None else epochs,
        promote=bool(promote),
        promote_wait=bool(promote_wait),
    )
    if promote and rule not in PROMOTING_RULES:
        raise ConfigError(
            f"--promote works with --prune {' or '.join(PROMOTING_RULES)}, not {rule!r} (a "
            "rule that compares whole curves has no rung to promote from)"
        )
    if config.reduction_factor < 2:
        raise ConfigError(f"--prune-reduction {config.reduction_factor}: must be 2 or more")
    if config.min_epochs < 1 or config.warmup_epochs < 0 or config.startup_trials < 0:
        raise ConfigError("--prune-min-epochs must be >= 1, warm-up and start-up >= 0")
    if rule == "hyperband":
        if config.max_epochs is None:
            raise ConfigError(
                "--prune hyperband needs --prune-max-epochs (this space has no epochs setting)"
            )
        if config.max_epochs < config.min_epochs:
            raise ConfigError(
                f"--prune-max-epochs {config.max_epochs} is below --prune-min-epochs "
                f"{config.min_epochs}"
            )
    return config


@dataclass(frozen=True)
class EpochReport:
    """One epoch of one trial attempt, as the rule sees it."""

    exp_key: str
    tid: int
    attempt: int
    epoch: int  #: 1-based, as the Keras callback reports it
    value: float  #: the rule's metric this epoch (NaN when missing or not a number)
    curve: tuple[float, ...]  #: the metric of every epoch of this attempt so far, ``value`` last
    previous_epoch: int = 0  #: the epoch this attempt reported before (0: none)


def metric_value(metrics: Mapping[str, Any], metric: str) -> float:
    """``metrics[metric]`` as a float; NaN when missing or not a number."""
    value = metrics.get(metric)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return math.nan
    return float(value)


@dataclass(frozen=True)
class Decision:
    """A rule's answer for one epoch. ``prune`` stops the trial (``pause``: for now, it may be
    promoted and resumed from its checkpoint later); the rest says why."""

    prune: bool
    rule: str
    epoch: int
    value: float
    threshold: float | None = None  #: the value it had to reach (None: no comparison, e.g. NaN)
    bracket: int | None = None
    rung: int | None = None
    pause: bool = False

    def pruned_record(self, metric: str) -> dict[str, Any]:
        """The ``result.pruned`` record of a trial this decision stopped (the worker adds
        ``paused: true`` when it paused the trial, its checkpoint saved)."""
        record = {
            "epoch": self.epoch,
            "rule": self.rule,
            "metric": metric,
            "value": _number_or_none(self.value),
            "threshold": self.threshold,
        }
        if self.bracket is not None:
            record.update(bracket=self.bracket, rung=self.rung)
        return record


#: the loss given to a pruned trial whose own loss is not a number while no trial of its
#: experiment has a finite loss yet: worse than any loss a working objective reports
NAN_FALLBACK_LOSS = 1e12


def stand_in_loss(losses: Iterable[Any]) -> float:
    """The loss recorded for a trial an early-stopping rule stopped whose own loss is not a
    number (its metric was NaN, as diverged trainings report): the worst finite loss among
    ``losses`` (the experiment's successful trials', pruned ones included), so TPE counts it
    with the bad trials and avoids its region, and it ranks after every pruned trial with a
    real loss; :data:`NAN_FALLBACK_LOSS` when there is none."""
    finite = [
        float(x)
        for x in losses
        if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
    ]
    return max(finite, default=NAN_FALLBACK_LOSS)


def _number_or_none(value: float) -> float | None:
    """NaN is stored as ``None`` (it compares with nothing); infinities stay numbers."""
    return None if math.isnan(value) else value


class RungLog(Protocol):
    """What rules read and write (the store's :mod:`~coordinator.store.rungs` part)."""

    def record_rung(self, record: dict[str, Any]) -> dict[str, Any]:
        """Insert one rung record (its key: experiment, bracket, rung, trial) and return it;
        if one with that key exists already, nothing is written and the stored one is returned
        (its decision stands)."""
        ...

    def rung_values(self, exp_key: str, bracket: int, rung: int) -> dict[int, float]:
        """``{tid: value}`` of the records at one rung (records without a value left out)."""
        ...

    def finished_curves(
        self, exp_key: str, metric: str, *, known: Collection[int] = ()
    ) -> dict[int, dict[int, float] | None]:
        """The finished trials of ``exp_key`` not in ``known``: ``{tid: {epoch: value}}`` for
        those a rule compares against (DONE, ok, not pruned), ``{tid: None}`` for the others."""
        ...


class Pruner(Protocol):
    """One early-stopping rule bound to one experiment."""

    config: PruningConfig

    def judge(self, report: EpochReport) -> Decision | None:
        """The decision for ``report`` (``None``: nothing to decide this epoch, go on)."""
        ...


def rung_record(decision: Decision, report: EpochReport, metric: str, **inputs: Any) -> dict:
    """The stored form of ``decision`` (``inputs``: what it was computed from)."""
    return {
        "_id": rung_key(report.exp_key, decision.bracket or 0, decision.rung or 0, report.tid),
        "exp_key": report.exp_key,
        "bracket": decision.bracket or 0,
        "rung": decision.rung or 0,
        "tid": report.tid,
        "attempt": report.attempt,
        "epoch": report.epoch,
        "rule": decision.rule,
        "metric": metric,
        "value": _number_or_none(decision.value),
        "threshold": decision.threshold,
        "decision": decision_name(decision),
        **inputs,
    }


def decision_name(decision: Decision) -> str:
    """A rung record's ``decision``: ``continue``, ``prune`` or ``pause`` (a paused trial's
    record becomes ``promoted`` when it is promoted)."""
    if not decision.prune:
        return "continue"
    return "pause" if decision.pause else "prune"


def rung_key(exp_key: str, bracket: int, rung: int, tid: int) -> str:
    """The unique key of a rung record: one per experiment, bracket, rung and trial."""
    return f"{exp_key}|{bracket}|{rung}|{tid}"


def stored_decision(stored: Mapping[str, Any], proposed: Decision) -> Decision:
    """``proposed`` as the stored record has it (another attempt of the trial, or a retried
    write, may have recorded this rung first: its decision stands; a ``promoted`` one goes
    on)."""
    value = stored.get("value")
    return Decision(
        prune=stored.get("decision") in ("prune", "pause"),
        pause=stored.get("decision") == "pause",
        rule=proposed.rule,
        epoch=proposed.epoch,
        value=math.nan if value is None else float(value),
        threshold=stored.get("threshold"),
        bracket=proposed.bracket,
        rung=proposed.rung,
    )
