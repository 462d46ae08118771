"""Small analytic spaces: ``quadratic`` (tests, benchmarks) and ``branin`` (a classic 2-D test)."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any

from hyperopt import STATUS_OK, hp

from search_spaces.base import SearchSpace, Setting, TrialContext


def _quadratic_space(settings: Mapping[str, Any]) -> Any:
    return {"x": hp.uniform("x", -settings["bound"], settings["bound"])}


def _quadratic(params: dict[str, Any], ctx: TrialContext) -> dict[str, Any]:
    if ctx.settings["sleep"]:
        time.sleep(ctx.settings["sleep"])
    return {"loss": params["x"] ** 2, "status": STATUS_OK}


def _branin_space(settings: Mapping[str, Any]) -> Any:
    return {"x1": hp.uniform("x1", -5.0, 10.0), "x2": hp.uniform("x2", 0.0, 15.0)}


def branin(x1: float, x2: float) -> float:
    """The Branin-Hoo function; global minimum 0.397887 at three points."""
    b = 5.1 / (4 * math.pi**2)
    c = 5 / math.pi
    t = 1 / (8 * math.pi)
    return (x2 - b * x1**2 + c * x1 - 6) ** 2 + 10 * (1 - t) * math.cos(x1) + 10


def _branin(params: dict[str, Any], ctx: TrialContext) -> dict[str, Any]:
    if ctx.settings["sleep"]:
        time.sleep(ctx.settings["sleep"])
    return {"loss": branin(params["x1"], params["x2"]), "status": STATUS_OK}


quadratic = SearchSpace(
    name="quadratic",
    build=_quadratic_space,
    objective=_quadratic,
    settings=(
        Setting("sleep", 0.0, "seconds each trial sleeps, to simulate work", float, min=0.0),
        Setting("bound", 10.0, "x is searched in [-bound, bound]", float, min=1e-9),
    ),
    description="1-D: loss = x**2 (tests and benchmarks)",
)

branin_space = SearchSpace(
    name="branin",
    build=_branin_space,
    objective=_branin,
    settings=(Setting("sleep", 0.0, "seconds each trial sleeps", float, min=0.0),),
    description="2-D Branin-Hoo function, minimum 0.397887",
)
