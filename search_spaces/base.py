"""What a search space is: a hyperopt space, an objective and named, typed settings."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from hyperopt import pyll

from coordinator.errors import ConfigError
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


Objective = Callable[[dict[str, Any], TrialContext], dict[str, Any]]

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
        except (ValueError, KeyError, TypeError):
            raise ConfigError(
                f"setting {self.name}={value!r} is not a valid {self.type.__name__}"
            ) from None
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

    ``build(settings)`` returns the hyperopt space (settings may shape it); ``objective(params,
    ctx)`` returns a hyperopt result dict (``loss``, ``status`` and any extra information).
    """

    name: str
    build: Callable[[Mapping[str, Any]], Any]
    objective: Objective
    settings: tuple[Setting, ...] = ()
    description: str = ""
    source: str = field(default="", compare=False)

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
        return self.build(settings)

    def fingerprint(self, settings: Mapping[str, Any]) -> str:
        """A short hash of the space's structure, to detect a changed space under one exp key."""
        text = str(pyll.as_apply(self.build(settings)))
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
