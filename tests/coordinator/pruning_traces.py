"""Per-epoch traces for the pruning tests: what a fleet of workers reports, in the order it
reports it, fed alike to hyperfleet's rules and to Optuna's pruners.

A trace is a list of events: ``("epoch", tid, epoch, value)`` (trial ``tid`` reports ``value``
of the rule's metric at 1-based ``epoch``) and ``("finish", tid)`` (it trained its last epoch
and ends as a finished trial). Events of a trial that was stopped are skipped by the runners.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

Event = tuple
RECORDED = Path(__file__).with_name("pruning_traces.json")


def sequential(curves: list[list[float]]) -> list[Event]:
    """Trials one after the other, each to its last epoch."""
    events: list[Event] = []
    for tid, curve in enumerate(curves):
        events += [("epoch", tid, e, v) for e, v in enumerate(curve, start=1)]
        events.append(("finish", tid))
    return events


def scheduled(curves: list[list[float]], workers: int, seed: int) -> list[Event]:
    """Trials taken in tid order by ``workers`` workers whose epochs take random times: the
    reports interleave as in a fleet."""
    rng = random.Random(seed)
    timed: list[tuple[float, int, Event]] = []
    free = [0.0] * workers
    for tid, curve in enumerate(curves):
        w = min(range(workers), key=free.__getitem__)
        t = free[w] + rng.uniform(0.0, 0.5)
        per_epoch = rng.uniform(0.5, 2.0)
        for e, v in enumerate(curve, start=1):
            t += per_epoch * rng.uniform(0.8, 1.2)
            timed.append((t, len(timed), ("epoch", tid, e, v)))
        timed.append((t + 1e-6, len(timed), ("finish", tid)))
        free[w] = t
    return [event for *_, event in sorted(timed)]


def random_curves(n: int, epochs: int, seed: int, *, accuracy: bool = False) -> list[list[float]]:
    """Learning curves: each trial decays toward its own floor at its own rate, with noise."""
    rng = random.Random(seed)
    curves = []
    for _ in range(n):
        floor, start, rate = rng.uniform(0.05, 0.6), rng.uniform(1.0, 2.5), rng.uniform(0.2, 1.2)
        curve = [
            floor + (start - floor) * math.exp(-rate * e) + rng.gauss(0, 0.02)
            for e in range(epochs)
        ]
        curves.append([round(1.0 - v / 3 if accuracy else v, 4) for v in curve])
    return curves


def ties() -> list[Event]:
    """Eight trials reporting exactly the same values, interleaved."""
    return scheduled([[0.5, 0.4, 0.4, 0.3, 0.3, 0.2, 0.2, 0.2, 0.1]] * 8, workers=3, seed=1)


def nan_values() -> list[Event]:
    """NaN at the first epoch, at a rung, mid-curve, and a trial that is NaN throughout; a
    trial whose metric is infinite for two epochs."""
    nan = math.nan
    curves = random_curves(10, 9, seed=3)
    curves[2][0] = nan
    curves[4][2] = nan
    curves[5][4] = nan
    curves[7] = [nan] * 9
    curves[8][8] = nan
    curves[9][1] = curves[9][2] = math.inf  # infinities are numbers: they compare
    return scheduled(curves, workers=2, seed=3)


def single() -> list[Event]:
    """One trial alone: nothing to compare with."""
    return sequential(random_curves(1, 9, seed=4))


def late_arrivals() -> list[Event]:
    """Six trials finish before four more start; trial 0 reports its first epoch only after
    every other trial has finished (a worker that was paused)."""
    curves = random_curves(11, 9, seed=5)
    events = [(k, t + 1, *rest) for k, t, *rest in sequential(curves[1:7])]
    late = scheduled(curves[7:], workers=2, seed=5)
    events += [(k, t + 7, *rest) for k, t, *rest in late]
    events += [("epoch", 0, e, v) for e, v in enumerate(curves[0], start=1)] + [("finish", 0)]
    return events


def fleet(direction: str) -> list[Event]:
    """Forty trials, four workers."""
    curves = random_curves(40, 9, seed=6, accuracy=direction == "max")
    return scheduled(curves, workers=4, seed=6)


def recorded() -> dict[str, list[Event]]:
    """Traces recorded from real ``mnist_mlp`` searches (validation accuracy per epoch, in the
    order the epochs ended; see tests/coordinator/pruning_traces.json for where they came from)."""
    data = json.loads(RECORDED.read_text())
    return {name: [tuple(e) for e in trace] for name, trace in data["traces"].items()}


def n_trials(events: list[Event]) -> int:
    return 1 + max(e[1] for e in events)


def from_benchmark_run(run: dict) -> list[Event]:
    """A trace from one run of bench/time_to_accuracy.py (its results JSON, ``runs[i]``): every
    epoch's validation accuracy in the order the epochs ended, and a ``finish`` for each trial
    that trained all its epochs; tids renumbered by start."""
    trials = sorted((t for t in run["trials"] if t["epochs"]), key=lambda t: t["epochs"][0]["t"])
    timed: list[tuple[float, int, Event]] = []
    for tid, trial in enumerate(trials):
        for e in trial["epochs"]:
            timed.append((e["t"], len(timed), ("epoch", tid, e["epoch"], e["val_accuracy"])))
        if trial["complete"]:
            timed.append((trial["epochs"][-1]["t"] + 1e-6, len(timed), ("finish", tid)))
    return [event for *_, event in sorted(timed)]


def record(results: list[str], out: Path = RECORDED) -> None:
    """Write tests/coordinator/pruning_traces.json from benchmark results files (one trace
    per run; ``python -m tests.coordinator.pruning_traces bench/results/tta-*.json``)."""
    traces, sources = {}, []
    for path in results:
        data = json.loads(Path(path).read_text())
        sources.append(f"{Path(path).name}: {json.dumps(data['meta'])}")
        for run in data["runs"]:
            events = from_benchmark_run(run)
            if events:
                traces[f"{run['system']}-seed{run['seed']}"] = events
    out.write_text(json.dumps({"sources": sources, "traces": traces}, indent=0) + "\n")


if __name__ == "__main__":
    import sys

    record(sys.argv[1:])
