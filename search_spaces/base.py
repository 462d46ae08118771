"""What a search space is: a hyperopt space, an objective and named, typed settings."""

from __future__ import annotations

import hashlib
import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from hyperopt import pyll

from coordinator.errors import ConfigError, SpaceError
from coordinator.shown import shown
from coordinator.states import Verdict


class TrialContext(Protocol):
    """What an objective receives besides its params (implemented by the worker).

    The worker's heartbeat keeps the trial's lease alive on its own; an objective only reports,
    asks whether to stop, and stores files. ``attach`` raises ``TrialLost`` once the lease is
    gone; ``report_epoch`` says so in its verdict.
    """

    settings: Mapping[str, Any]  #: the experiment's resolved settings
    tid: int
    attempt: int
    exp_key: str | None
    info: Mapping[str, Any]  #: worker and device facts (``save_models``, ``threads``, ``pid``...)

    def report_epoch(self, metrics: dict[str, Any]) -> Verdict:
        """Append one epoch's metrics to the trial document and answer whether to go on:
        ``CONTINUE``, or ``PRUNE`` (the experiment's early-stopping rule), ``CANCELLED``,
        ``LEASE_LOST``; stop training for anything but ``CONTINUE``."""
        ...

    def should_stop(self) -> bool:
        """Whether the objective should stop now (any verdict but ``CONTINUE``, or cancelled)."""
        ...

    def attach(self, name: str, data: bytes) -> None:
        """Store ``data`` as the trial's attachment ``name`` (replacing an older one)."""
        ...

    def best_loss(self) -> float | None:
        """The lowest loss among the experiment's successful trials so far (None: none yet)."""
        ...

    def drop_superseded_models(self, name: str, worse_than: float) -> int:
        """Delete attachment ``name`` of other finished trials whose loss is above
        ``worse_than``; returns how many were deleted."""
        ...

    def load_checkpoint(self, restore: Callable[[Any], object] | None = None) -> Any:
        """The state an earlier attempt of this trial saved with :meth:`save_checkpoint`: an
        object with ``epoch`` (epochs done), ``data`` (its bytes) and ``attempt``; ``None`` to
        start from scratch (none saved, or the saved one is corrupt or foreign: refused with a
        warning). ``restore``, if given, is called with it first and may refuse it by raising
        ``coordinator.errors.CheckpointRefused`` (then ``None``). Call it once, before
        training: it also drops the per-epoch records of the epochs the trial trains again,
        so its learning curve continues without duplicates."""
        ...

    def save_checkpoint(self, epoch: int, data: bytes) -> None:
        """Save ``data`` as this trial's state after ``epoch`` epochs (replacing the last one),
        for an attempt that takes the trial over after this one is lost (killed, pre-empted,
        handed back). ``epoch``: a whole number from 0 to 999,999,999 (else ``ValueError``,
        nothing written). Raises ``TrialLost`` once the lease is gone."""
        ...


Objective = Callable[[dict[str, Any], TrialContext], dict[str, Any]]
#: an objective as plain hyperopt users write it: the params only
PlainObjective = Callable[[dict[str, Any]], dict[str, Any]]


def _required_positionals(func: Callable[..., Any]) -> tuple[int, int] | None:
    """(required, accepted) positional parameters of ``func`` (accepted is large for
    ``*args``), or None when its signature cannot be read (a builtin)."""
    try:
        params = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):
        return None
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = sum(1 for p in positional if p.default is p.empty)
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return required, 1 << 30
    return required, len(positional)


_BOOLS = {
    "1": True,
    "true": True,
    "yes": True,
    "on": True,
    "0": False,
    "false": False,
    "no": False,
    "off": False,
}


#: the largest magnitude a number setting (``--set``) may have: beyond it no search means it
MAX_FLOAT_SETTING = 1e15


@dataclass(frozen=True)
class Setting:
    """One named setting of a space, overridable with ``--set NAME=VALUE``."""

    name: str
    default: Any
    help: str = ""
    type: type = str
    choices: tuple[Any, ...] | None = None
    min: float | None = None
    max: float | None = None

    def parse(self, value: Any) -> Any:
        """Convert and validate ``value`` (a string from the CLI or a typed value)."""
        try:
            if self.type is bool and isinstance(value, str):
                parsed: Any = _BOOLS[value.strip().lower()]
            elif self.type is int and isinstance(value, float) and value.is_integer():
                parsed = int(value)
            else:
                parsed = self.type(value)
        except (ValueError, KeyError, TypeError, OverflowError):
            raise ConfigError(
                f"setting {self.name}={shown(value)} is not a valid {self.type.__name__}"
            ) from None
        if isinstance(parsed, float) and not math.isfinite(parsed):
            raise ConfigError(f"setting {self.name}={value!r} must be a finite number")
        if isinstance(parsed, float) and abs(parsed) > MAX_FLOAT_SETTING:
            # e.g. bound=1e99 gave losses of 2.5e197: no objective means such a number
            raise ConfigError(
                f"setting {self.name}={shown(value)} is out of range: a number setting must "
                f"lie within ±{MAX_FLOAT_SETTING:g}"
            )
        if isinstance(parsed, int) and not -(2**63) <= parsed < 2**63:
            # settings are stored in the experiment document: MongoDB's integers are 64-bit
            raise ConfigError(
                f"setting {self.name}={shown(value)} does not fit in a 64-bit integer"
            )
        if self.choices is not None and parsed not in self.choices:
            raise ConfigError(
                f"setting {self.name}={value!r} must be one of: "
                + ", ".join(map(str, self.choices))
            )
        if self.min is not None and parsed < self.min:
            raise ConfigError(f"setting {self.name}={value!r} must be >= {self.min}")
        if self.max is not None and parsed > self.max:
            raise ConfigError(f"setting {self.name}={value!r} must be <= {self.max}")
        return parsed

    def describe(self) -> str:
        extra = ""
        if self.choices is not None:
            extra = " (one of " + ", ".join(map(str, self.choices)) + ")"
        elif self.min is not None or self.max is not None:
            lo = "" if self.min is None else f"{self.min} <= "
            hi = "" if self.max is None else f" <= {self.max}"
            extra = f" ({lo}value{hi})"
        return f"{self.name}={self.default!r} [{self.type.__name__}]{extra} {self.help}".rstrip()


@dataclass(frozen=True)
class SearchSpace:
    """A named search space.

    ``build`` is the hyperopt space itself (``{"x": hp.uniform("x", -5, 5)}``, as hyperopt
    users write it) or a function ``build(settings)`` that returns it (settings may shape it).
    ``objective(params)`` or ``objective(params, ctx)`` returns a hyperopt result dict (``loss``,
    ``status`` and any extra information); ``ctx`` (:class:`TrialContext`) reports epochs,
    answers "should I stop?" and stores files. Anything else is refused when the space is
    created, i.e. when its module is loaded, with one line.
    """

    name: str
    build: Callable[[Mapping[str, Any]], Any] | Any
    objective: Objective | PlainObjective
    settings: tuple[Setting, ...] = ()
    description: str = ""
    source: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(f"a SearchSpace needs a non-empty name, got {self.name!r}")
        if not callable(self.objective):
            raise ConfigError(
                f"space {self.name!r}: objective must be a function objective(params) or "
                f"objective(params, ctx), got {type(self.objective).__name__}"
            )
        arity = _required_positionals(self.objective)
        if arity is not None and not (arity[0] <= 2 and arity[1] >= 1):
            raise ConfigError(
                f"space {self.name!r}: objective {getattr(self.objective, '__name__', '?')} "
                f"takes {arity[0]} required arguments; write objective(params) or "
                "objective(params, ctx)"
            )
        if self._builds():
            arity = _required_positionals(self.build)
            if arity is not None and not (arity[0] <= 1 and arity[1] >= 1):
                raise ConfigError(
                    f"space {self.name!r}: build must take the settings (one argument), or "
                    "pass the hyperopt space itself"
                )

    def _builds(self) -> bool:
        """Whether ``build`` is a function of the settings (a pyll expression is callable too,
        but it is a space)."""
        return callable(self.build) and not isinstance(self.build, pyll.Apply)

    def _takes_ctx(self) -> bool:
        arity = _required_positionals(self.objective)
        return arity is None or arity[1] >= 2

    def run_objective(self, params: dict[str, Any], ctx: TrialContext) -> Any:
        """Call the objective the way it was written: with ``ctx`` or without."""
        if self._takes_ctx():
            return self.objective(params, ctx)  # type: ignore[call-arg]
        return self.objective(params)  # type: ignore[call-arg]

    def resolve_settings(self, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Defaults updated by ``overrides``; unknown names and bad values raise ConfigError."""
        known = {s.name: s for s in self.settings}
        resolved = {s.name: s.default for s in self.settings}
        for key, value in (overrides or {}).items():
            if key not in known:
                names = ", ".join(known) or "none"
                raise ConfigError(
                    f"unknown setting {key!r} for space {self.name!r} (its settings: {names}); "
                    "`hyperfleet spaces` lists them"
                )
            resolved[key] = known[key].parse(value)
        return resolved

    def hyperopt_space(self, settings: Mapping[str, Any]) -> Any:
        """The hyperopt space for ``settings`` (``build`` itself when it is not a function).

        A ``build`` that fails on these settings (hyperopt refusing ``low >= high``, an
        overflow) is a one-line :class:`SpaceError` naming the space and its settings."""
        if not self._builds():
            return self.build
        try:
            return self.build(settings)
        except (ValueError, TypeError, ArithmeticError, KeyError) as e:
            shown = ", ".join(f"{k}={v!r}" for k, v in settings.items()) or "none"
            reason = " ".join(str(e).split())[:200] or type(e).__name__
            raise SpaceError(
                f"space {self.name!r} cannot be built from its settings ({shown}): {reason}; "
                "change the --set value"
            ) from None

    def check(self, settings: Mapping[str, Any]) -> None:
        """Refuse with one :class:`SpaceError` line what a search of this space would die on
        after it started: a space hyperopt cannot read (two hyperparameters with one label,
        no ``hp.*`` expression at all, which hyperopt fails on with an ``IndexError``) or a
        hyperparameter it cannot draw (``hp.choice`` of nothing, ``hp.randint`` up to 0).

        The check reads the space as hyperopt's own ``Domain`` does and draws every
        hyperparameter once, unchosen branches included: ``spaces``, ``search`` and ``local``
        call it before they touch the database or start anything."""
        from hyperopt import base
        from hyperopt.exceptions import DuplicateLabel
        from hyperopt.pyll import stochastic

        space = self.hyperopt_space(settings)
        where = f"space {self.name!r}" + (f" ({self.source})" if self.source else "")
        try:
            domain = base.Domain(lambda params: 0.0, space)
        except DuplicateLabel as e:
            raise SpaceError(
                f"{where}: two hyperparameters are labelled {shown(str(e))}; give each hp.* "
                "expression its own label"
            ) from None
        except Exception as e:  # noqa: BLE001 - whatever hyperopt makes of user objects
            raise SpaceError(
                f"{where}: hyperopt cannot read it ({type(e).__name__}: "
                f"{shown(str(e), bare=True)}); build must give hp.* expressions, e.g. "
                "{'x': hp.uniform('x', -5, 5)}"
            ) from None
        rng = np.random.default_rng(0)
        for label, distribution in domain.params.items():
            try:
                stochastic.sample(distribution, rng=rng)
            except Exception as e:  # noqa: BLE001 - a user's distribution, drawn once
                raise SpaceError(
                    f"{where}: hyperparameter {shown(label)} cannot be drawn "
                    f"({type(e).__name__}: {shown(str(e), bare=True)}); an hp.choice needs "
                    "options, bounds need low < high"
                ) from None

    def fingerprint(self, settings: Mapping[str, Any]) -> str:
        """A short hash of the space's structure, to detect a changed space under one exp key."""
        text = str(pyll.as_apply(self.hyperopt_space(settings)))
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def parse_set_options(pairs: tuple[str, ...] | list[str]) -> dict[str, str]:
    """``["a=1", "b=x"]`` -> ``{"a": "1", "b": "x"}``; a pair without ``=`` raises ConfigError."""
    parsed: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {pair!r}: expected KEY=VALUE")
        parsed[key.strip()] = value.strip()
    return parsed
