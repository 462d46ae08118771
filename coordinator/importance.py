"""Which hyperparameters mattered: the share of the loss each one explains, by Optuna's evaluators.

Nothing here estimates importance itself. The trials of an experiment are handed to Optuna
(``optuna.importance``) as finished trials of an in-memory study, with each hyperparameter's
distribution read from the experiment's hyperopt space, and Optuna's evaluator does the rest:

- ``ped-anova`` (the default, :class:`optuna.importance.PedAnovaImportanceEvaluator`): how much
  the distribution of each parameter among the best 10 % of trials differs from its distribution
  among all of them (Watanabe et al., IJCAI 2023). Optuna 5's implementation handles
  *conditional* parameters (a learning rate that exists only when ``optimizer`` is ``adam``),
  which hyperopt spaces are full of; it needs only numpy and scipy, which hyperopt already needs.
- ``fanova`` (:class:`optuna.importance.FanovaImportanceEvaluator`): the share of the loss's
  variance each parameter explains in a random-forest fit (Hutter et al., ICML 2014). It needs
  scikit-learn and assesses only parameters present in every trial (conditional ones are left
  out).

Why Optuna: its evaluators are maintained, tested and cited, take arbitrary finished trials
(``optuna.trial.create_trial``), and run in-process without a database. Hand-written fANOVA would
be a second, unreviewed implementation of a published estimator.

Only *full* successful trials are fed (:func:`coordinator.rules.ranked`'s rule without pruned
ones): a pruned trial's loss is that of an unfinished training and would blur the answer.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from coordinator import rules
from coordinator.errors import ConfigError

#: evaluator name → what it needs installed beyond optuna
METHODS = {"ped-anova": None, "fanova": "scikit-learn"}
DEFAULT_METHOD = "ped-anova"
#: below this many full trials the answer is noise; the command says so rather than guessing
MIN_TRIALS = 10

_LOG_DISTS = {"loguniform", "qloguniform", "lognormal", "qlognormal"}
_CHOICE_DISTS = {"randint", "categorical"}
#: a randint with more values than this is an integer range, not a choice
_MAX_CHOICES = 64


@dataclass(frozen=True)
class ParamSpec:
    """One hyperparameter as the importance evaluators see it."""

    label: str
    #: ``"linear"``, ``"log"`` or ``"categorical"`` (then ``low``..``high`` are choice indices)
    scale: str
    low: float | None = None
    high: float | None = None


@dataclass(frozen=True)
class Importance:
    label: str
    #: the share of the total (the importances sum to 1 over the assessed parameters)
    share: float
    #: in how many of the fed trials the parameter was active (conditional ones: fewer)
    active: int


@dataclass(frozen=True)
class ImportanceReport:
    method: str
    trials: int
    #: pruned trials left out (their loss is that of an unfinished training)
    pruned: int
    importances: list[Importance]
    #: parameters not assessed, with the reason (constant, or absent from some trials for fanova)
    skipped: dict[str, str]


def _literal(node: Any) -> Any:
    from hyperopt import pyll

    try:
        return pyll.rec_eval(node)
    except Exception:  # noqa: BLE001 - a computed bound: fall back to the observed range
        return None


def space_params(space: Any) -> dict[str, ParamSpec]:
    """``{label: ParamSpec}`` for every hyperparameter of a hyperopt space, with the bounds the
    space declares where they are constants (``{}`` for ``None``)."""
    if space is None:
        return {}
    from hyperopt import pyll

    specs: dict[str, ParamSpec] = {}
    for node in pyll.dfs(pyll.as_apply(space)):
        if node.name != "hyperopt_param":
            continue
        label = node.pos_args[0].obj
        dist = node.pos_args[1]
        args = [_literal(a) for a in dist.pos_args]
        named = {k: _literal(v) for k, v in dist.named_args}
        specs[label] = _spec(label, dist.name, args, named)
    return specs


def _spec(label: str, name: str, args: list[Any], named: dict[str, Any]) -> ParamSpec:
    def num(value: Any) -> float | None:
        return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None

    low = num(named.get("low", args[0] if args else None))
    high = num(named.get("high", args[1] if len(args) > 1 else None))
    if name in ("uniform", "quniform", "uniformint"):
        return ParamSpec(label, "linear", low, high)
    if name in ("loguniform", "qloguniform"):  # hyperopt's bounds are log(value)
        return ParamSpec(
            label,
            "log",
            None if low is None else math.exp(low),
            None if high is None else math.exp(high),
        )
    if name in _LOG_DISTS:
        return ParamSpec(label, "log")
    if name == "randint":  # randint(upper) or randint(low, upper): choice indices, upper excluded
        lo, up = (0.0, low) if high is None else (low, high)
        if lo is not None and up is not None and up - lo <= _MAX_CHOICES:
            return ParamSpec(label, "categorical", lo, up - 1)
        return ParamSpec(label, "linear", lo, None if up is None else up - 1)
    if name == "categorical":  # categorical(p, upper): hp.pchoice
        upper = named.get("upper", args[1] if len(args) > 1 else None)
        if upper is None and args and isinstance(args[0], (list, tuple)):
            upper = len(args[0])
        return ParamSpec(label, "categorical", 0.0, None if upper is None else float(upper) - 1)
    return ParamSpec(label, "linear")  # normal, qnormal...: the observed range


def trial_values(doc: Mapping[str, Any]) -> dict[str, float]:
    """The active hyperparameters of a trial document, from ``misc.vals`` (hyperopt's raw
    values: the index of a choice, the value of a number); inactive conditional ones are
    absent."""
    misc = doc.get("misc")
    vals = misc.get("vals") if isinstance(misc, Mapping) else None
    out: dict[str, float] = {}
    if not isinstance(vals, Mapping):
        return out
    for label, values in vals.items():
        if isinstance(values, list) and len(values) == 1:
            v = values[0]
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                out[str(label)] = float(v)
    return out


def _distribution(spec: ParamSpec, observed: list[float]) -> Any:
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    low = min([*observed, *([spec.low] if spec.low is not None else [])])
    high = max([*observed, *([spec.high] if spec.high is not None else [])])
    if spec.scale == "categorical":
        choices = sorted({*range(int(low), int(high) + 1), *map(int, observed)})
        return CategoricalDistribution(choices)
    if spec.scale == "log" and low > 0:
        return FloatDistribution(low, high, log=True)
    return FloatDistribution(low, high)


def _evaluator(method: str) -> Any:
    from optuna import importance

    if method == "ped-anova":
        return importance.PedAnovaImportanceEvaluator()
    if method == "fanova":
        try:
            import sklearn  # noqa: F401
        except ImportError:
            raise ConfigError(
                "--method fanova needs scikit-learn: pip install scikit-learn "
                "(or use the default --method ped-anova)"
            ) from None
        return importance.FanovaImportanceEvaluator(seed=0)
    raise ConfigError(f"unknown importance method {method!r}: one of {', '.join(METHODS)}")


def importances(
    docs: Iterable[Mapping[str, Any]], space: Any = None, method: str = DEFAULT_METHOD
) -> ImportanceReport:
    """How much of the loss's variation each hyperparameter of ``docs`` explains, by Optuna's
    ``method`` evaluator (see the module docstring). ``space`` (the experiment's hyperopt space)
    gives the distributions; without it each parameter's observed range on a linear scale."""
    try:
        import optuna
    except ImportError:
        raise ConfigError(
            "hyperfleet importance needs Optuna's evaluators: pip install 'hyperfleet[importance]'"
        ) from None
    evaluator = _evaluator(method)
    docs = list(docs)
    full = [d for d in rules.ranked(docs) if rules.pruned(d) is None]
    pruned = sum(1 for d in rules.ranked(docs) if rules.pruned(d) is not None)
    if len(full) < MIN_TRIALS:
        raise ConfigError(
            f"importance needs at least {MIN_TRIALS} full successful trials; this experiment "
            f"has {len(full)}" + (f" (and {pruned} pruned, left out)" if pruned else "")
        )
    specs = space_params(space)
    values = [trial_values(d) for d in full]
    observed: dict[str, list[float]] = {}
    for v in values:
        for label, x in v.items():
            observed.setdefault(label, []).append(x)
    skipped: dict[str, str] = {}
    dists = {}
    for label, xs in sorted(observed.items()):
        if len(set(xs)) < 2:
            skipped[label] = "the same value in every trial"
            continue
        dists[label] = _distribution(specs.get(label, ParamSpec(label, "linear")), xs)
    if method == "fanova":
        for label in list(dists):
            if len(observed[label]) < len(full):
                skipped[label] = "conditional (fanova assesses only parameters of every trial)"
                del dists[label]
    if not dists:
        raise ConfigError("no hyperparameter varies across the trials: nothing to compare")

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(direction="minimize")
    study.add_trials(
        optuna.trial.create_trial(
            params={k: _as_param(dists[k], x) for k, x in v.items() if k in dists},
            distributions={k: dists[k] for k in v if k in dists},
            value=float(rules.ok_loss(d)),  # type: ignore[arg-type]  # ranked: never None
        )
        for d, v in zip(full, values, strict=True)
    )
    import warnings

    with warnings.catch_warnings():  # "experimental" notices are for Optuna's own users
        warnings.simplefilter("ignore")
        shares = optuna.importance.get_param_importances(
            study, evaluator=evaluator, params=sorted(dists)
        )
    rows = [Importance(label, float(s), len(observed[label])) for label, s in shares.items()]
    rows.sort(key=lambda r: (-r.share, r.label))
    return ImportanceReport(method, len(full), pruned, rows, skipped)


def _as_param(dist: Any, value: float) -> Any:
    from optuna.distributions import CategoricalDistribution

    return int(value) if isinstance(dist, CategoricalDistribution) else value


def format_report(report: ImportanceReport, exp_key: str, width: int = 30) -> str:
    """The report as text: one line per parameter, a bar, its share and where it was active."""
    lines = [
        f"experiment {exp_key}: {report.trials} full trials, importance by {report.method} "
        "(Optuna)" + (f"; {report.pruned} pruned trials left out" if report.pruned else "")
    ]
    name_w = max(len(r.label) for r in report.importances)
    for r in report.importances:
        bar = "#" * round(r.share * width)
        cond = "" if r.active == report.trials else f"  (active in {r.active} trials)"
        line = f"  {r.label.ljust(name_w)}  {r.share:6.1%}  {bar.ljust(width)}{cond}"
        lines.append(line.rstrip())
    for label, why in report.skipped.items():
        lines.append(f"  {label}: not assessed, {why}")
    return "\n".join(lines)
