"""Objectives for bench/fleet_sim.py: a space, a loss, its known minimum and a trial duration.

* ``branin`` (2-D) and ``hartmann6`` (6-D): the usual test functions, trial durations drawn from a
  log-normal distribution (median 1, sigma 0.5), independent of the point.
* ``mlp``: the conditional space of ``search_spaces/mnist.py``'s ``mnist_mlp`` (1-3 dense layers,
  each with its units and dropout; activation; a nested optimizer choice with its own learning-rate
  range and parameters; batch size) with a cheap, deterministic surrogate of the validation error
  (minimum 0.02) and a duration that grows with the network's width and shrinks with the batch.
* ``replay``: a recorded search (``hyperfleet export -f json``); see :func:`replay_objective`.

Written for the simulation, not imported from ``search_spaces`` (which loads Keras lazily and may
move): the ``mlp`` space copies the shape of ``mnist_mlp``, its labels and ranges.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from hyperopt import hp

Duration = Callable[[Mapping[str, Any], np.random.Generator], float]


@dataclass(frozen=True)
class Objective:
    name: str
    space: Any
    loss: Callable[[Mapping[str, Any]], float]
    minimum: float  #: the known (or, for a replay, the best recorded) loss: regret = best - minimum
    duration: Duration


def lognormal_duration(params: Mapping[str, Any], rng: np.random.Generator) -> float:
    return float(rng.lognormal(0.0, 0.5))


# -- Branin, Hartmann-6 ----------------------------------------------------------------------------

BRANIN_MIN = 0.397887357729738


def branin(p: Mapping[str, Any]) -> float:
    x, y = p["x"], p["y"]
    b, c, t = 5.1 / (4 * math.pi**2), 5 / math.pi, 1 / (8 * math.pi)
    return (y - b * x**2 + c * x - 6) ** 2 + 10 * (1 - t) * math.cos(x) + 10


_H6_ALPHA = np.array([1.0, 1.2, 3.0, 3.2])
_H6_A = np.array(
    [
        [10, 3, 17, 3.5, 1.7, 8],
        [0.05, 10, 17, 0.1, 8, 14],
        [3, 3.5, 1.7, 10, 17, 8],
        [17, 8, 0.05, 10, 0.1, 14],
    ]
)
_H6_P = 1e-4 * np.array(
    [
        [1312, 1696, 5569, 124, 8283, 5886],
        [2329, 4135, 8307, 3736, 1004, 9991],
        [2348, 1451, 3522, 2883, 3047, 6650],
        [4047, 8828, 8732, 5743, 1091, 381],
    ]
)
HARTMANN6_MIN = -3.322368011415515


def hartmann6(p: Mapping[str, Any]) -> float:
    x = np.array([p[f"x{i}"] for i in range(6)])
    return float(-np.sum(_H6_ALPHA * np.exp(-np.sum(_H6_A * (x - _H6_P) ** 2, axis=1))))


# -- a conditional space shaped like mnist_mlp -----------------------------------------------------

UNITS = (32, 64, 128, 256, 512)
BATCH_SIZES = (32, 64, 128, 256)
ACTIVATIONS = ("relu", "tanh", "elu")
MLP_MIN = 0.02


def _loguniform(label: str, low: float, high: float) -> Any:
    return hp.loguniform(label, math.log(low), math.log(high))


def mlp_space() -> Any:
    layers = [
        [
            {
                "units": hp.choice(f"units_{d}_{i}", UNITS),
                "dropout": hp.uniform(f"dropout_{d}_{i}", 0.0, 0.5),
            }
            for i in range(1, d + 1)
        ]
        for d in (1, 2, 3)
    ]
    optimizer = hp.choice(
        "optimizer",
        [
            {
                "name": "rmsprop",
                "learning_rate": _loguniform("rmsprop_lr", 1e-4, 1e-2),
                "rho": hp.uniform("rmsprop_rho", 0.8, 0.99),
            },
            {
                "name": "adam",
                "learning_rate": _loguniform("adam_lr", 1e-4, 1e-2),
                "beta_1": hp.uniform("adam_beta_1", 0.8, 0.95),
            },
            {
                "name": "sgd",
                "learning_rate": _loguniform("sgd_lr", 1e-3, 3e-1),
                "momentum": hp.uniform("sgd_momentum", 0.0, 0.95),
                "nesterov": hp.choice("sgd_nesterov", [False, True]),
            },
        ],
    )
    return {
        "layers": hp.choice("layers", layers),
        "activation": hp.choice("activation", ACTIVATIONS),
        "optimizer": optimizer,
        "batch_size": hp.choice("batch_size", BATCH_SIZES),
    }


#: per optimizer: offset, best learning rate at batch 64, and the best value of its own parameter
_OPTIMIZERS = {
    "rmsprop": (0.002, 1e-3, ("rho", 0.9)),
    "adam": (0.0, 2e-3, ("beta_1", 0.9)),
    "sgd": (0.006, 5e-2, ("momentum", 0.9)),
}
_DEPTH = {1: 0.012, 2: 0.0, 3: 0.003}
_ACTIVATION = {"relu": 0.0, "elu": 0.002, "tanh": 0.008}
_BATCH = {32: 0.004, 64: 0.0, 128: 0.002, 256: 0.006}


def mlp_loss(p: Mapping[str, Any]) -> float:
    """A smooth, non-separable stand-in for the validation error of ``mnist_mlp`` (min 0.02).

    The best learning rate grows with the batch size; wide layers want more dropout.
    """
    opt = p["optimizer"]
    offset, best_lr, (name, best_value) = _OPTIMIZERS[opt["name"]]
    best_lr *= p["batch_size"] / 64
    loss = MLP_MIN + offset + _DEPTH[len(p["layers"])] + _ACTIVATION[p["activation"]]
    loss += _BATCH[p["batch_size"]]
    loss += 0.03 * math.log10(opt["learning_rate"] / best_lr) ** 2
    loss += 0.2 * (opt[name] - best_value) ** 2
    if opt["name"] == "sgd" and not opt["nesterov"]:
        loss += 0.001
    for layer in p["layers"]:
        width = math.log2(layer["units"] / 256)
        loss += 0.004 * width**2 / len(p["layers"])
        loss += 0.05 * (layer["dropout"] - 0.2 - 0.05 * width) ** 2
    return loss


def mlp_duration(p: Mapping[str, Any], rng: np.random.Generator) -> float:
    """Bigger networks and smaller batches take longer (mean about 1)."""
    units = sum(layer["units"] for layer in p["layers"])
    cost = 0.3 + 0.7 * (units / 400) * math.sqrt(64 / p["batch_size"])
    return float(cost * rng.lognormal(0.0, 0.3))


OBJECTIVES: dict[str, Objective] = {
    "branin": Objective(
        "branin",
        {"x": hp.uniform("x", -5, 10), "y": hp.uniform("y", 0, 15)},
        branin,
        BRANIN_MIN,
        lognormal_duration,
    ),
    "hartmann6": Objective(
        "hartmann6",
        {f"x{i}": hp.uniform(f"x{i}", 0, 1) for i in range(6)},
        hartmann6,
        HARTMANN6_MIN,
        lognormal_duration,
    ),
    "mlp": Objective("mlp", mlp_space(), mlp_loss, MLP_MIN, mlp_duration),
}


# -- replay of a recorded search -------------------------------------------------------------------


def flat(value: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}, "c": [2]}`` -> ``{"a.b": 1, "c.0": 2}`` (the export's column names)."""
    if isinstance(value, Mapping):
        items: Sequence[tuple[Any, Any]] = list(value.items())
    elif isinstance(value, (list, tuple)):
        items = list(enumerate(value))
    else:
        return {prefix: value}
    out: dict[str, Any] = {}
    for key, item in items:
        out.update(flat(item, f"{prefix}.{key}" if prefix else str(key)))
    return out


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


@dataclass(frozen=True)
class _Column:
    name: str
    numeric: bool
    log: bool
    low: float
    high: float
    choices: tuple[Any, ...]

    def unit(self, value: Any) -> float | Any:
        if not self.numeric:
            return value
        x = math.log(value) if self.log else float(value)
        return (x - self.low) / (self.high - self.low) if self.high > self.low else 0.0


def _column(name: str, values: list[Any]) -> _Column:
    if all(_is_number(v) for v in values):
        lo, hi = min(values), max(values)
        log = lo > 0 and hi / lo > 20
        integer = all(float(v).is_integer() for v in values)
        distinct = sorted(set(values))
        if integer and len(distinct) <= 8:
            return _Column(name, False, False, 0.0, 0.0, tuple(distinct))
        if log:
            return _Column(name, True, True, math.log(lo), math.log(hi), ())
        return _Column(name, True, False, float(lo), float(hi), ())
    distinct = sorted(set(values), key=repr)
    return _Column(name, False, False, 0.0, 0.0, tuple(distinct))


def replay_objective(path: Path, k: int = 3) -> Objective:
    """A recorded search as an objective for the simulation. What replay means, exactly:

    * rows are those of ``hyperfleet export -f json`` with a finite ``loss``; parameters are the
      ``params.*`` columns, durations ``duration_s``;
    * the **space** is flat, one dimension per ``params.*`` column: numbers become a uniform range
      over the recorded ones (log-uniform when positive and spanning more than 20x), integers with
      at most 8 distinct values and anything else a choice among the recorded values. Conditional
      structure is not rebuilt: a column only some rows have is searched always;
    * the **loss** of a suggested point is a k-nearest-neighbour surrogate (k=3, weights 1/d) of
      the recorded losses: numbers compared on the [0, 1] scale of their range, choices as 0/1,
      averaged over the columns both have;
    * its **duration** is the recorded duration of the nearest recorded row (so slow regions stay
      slow), or the median duration when a row has none;
    * regret is measured against the best recorded loss.
    """
    rows = [r for r in json.loads(Path(path).read_text()) if _is_number(r.get("loss"))]
    if len(rows) < 5:
        raise ValueError(f"{path}: {len(rows)} rows with a loss; a replay needs at least 5")
    names = sorted({c for r in rows for c in r if c.startswith("params.")})
    if not names:
        raise ValueError(f"{path}: no params.* columns (write it with `hyperfleet export -f json`)")
    columns = [_column(n, [r[n] for r in rows if r.get(n) is not None]) for n in names]
    space: dict[str, Any] = {}
    for i, col in enumerate(columns):
        label = f"p{i}"
        if not col.numeric:
            space[col.name] = hp.choice(label, list(col.choices))
        elif col.log:
            space[col.name] = hp.loguniform(label, col.low, col.high)
        else:
            space[col.name] = hp.uniform(label, col.low, col.high)
    losses = np.array([float(r["loss"]) for r in rows])
    durations = [r.get("duration_s") for r in rows]
    known = [float(d) for d in durations if _is_number(d)]
    median = float(np.median(known)) if known else 1.0
    row_durations = np.array([float(d) if _is_number(d) else median for d in durations])
    recorded = [
        [col.unit(r[col.name]) if r.get(col.name) is not None else None for col in columns]
        for r in rows
    ]

    def distances(p: Mapping[str, Any]) -> np.ndarray:
        point = [col.unit(p[col.name]) if p.get(col.name) is not None else None for col in columns]
        out = np.empty(len(recorded))
        for j, row in enumerate(recorded):
            parts = [
                abs(a - b) if col.numeric else float(a != b)
                for col, a, b in zip(columns, point, row, strict=True)
                if a is not None and b is not None
            ]
            out[j] = float(np.mean(parts)) if parts else 1.0
        return out

    def loss(p: Mapping[str, Any]) -> float:
        d = distances(p)
        near = np.argsort(d, kind="stable")[:k]
        w = 1.0 / np.maximum(d[near], 1e-9)
        return float(np.sum(w * losses[near]) / np.sum(w))

    def duration(p: Mapping[str, Any], rng: np.random.Generator) -> float:
        return float(row_durations[int(np.argmin(distances(p)))])

    return Objective(f"replay:{Path(path).name}", space, loss, float(losses.min()), duration)
