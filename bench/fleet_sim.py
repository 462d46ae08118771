"""Asynchronous parallel search simulated in one process: how search algorithms fare on a fleet.

    nice -n 19 .venv/bin/python bench/fleet_sim.py run                      # the full grid
    nice -n 19 .venv/bin/python bench/fleet_sim.py run --seeds 3 --workers 1,32 --trials 100
    nice -n 19 .venv/bin/python bench/fleet_sim.py run --replay export.json  # a recorded search
    .venv/bin/python bench/fleet_sim.py report --plot docs/algorithms-regret.png

No database and no processes: W simulated workers share a hyperopt ``Trials``; each trial lasts a
random simulated time (see bench/fleet_objectives.py); a worker that finishes reports its result
and takes the next suggestion at once (``--queue Q`` keeps Q more queued, as hyperfleet's
coordinator does). The first W(+Q) suggestions are one batch call. A run stops when ``--trials``
results are in; regret after n trials is the best loss among the first n *results* minus the
objective's minimum.

Algorithms (``--algos``): ``rand``; ``tpe-hyperopt`` (hyperopt's ``tpe.suggest`` unchanged; at
W = 1 it is sequential TPE); ``tpe-<liar>`` (coordinator/fleet_tpe.py with that liar);
``-rsplit`` (good group sized on results only) and ``-r<n>`` (start-up ends with n results once
pending trials fill it) add fleet_tpe's options. Runs are
appended to a JSON-lines file, one line per (objective, algorithm, W, seed); runs already there
are skipped, so an interrupted grid resumes. ``report`` reads it and prints the tables.
"""

from __future__ import annotations

import argparse
import functools
import heapq
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from fleet_objectives import OBJECTIVES, Objective, replay_objective
from hyperopt import Trials, base, rand, space_eval, tpe

from coordinator import fleet_tpe

BENCH = Path(__file__).resolve().parent
DEFAULT_OUT = BENCH / "results" / "fleet_sim.jsonl"
ALGOS = ("rand", "tpe-hyperopt", *(f"tpe-{liar}" for liar in fleet_tpe.LIARS))
#: relative (unit-scale) distance under which two suggestions count as near-duplicates
NEAR = 1e-3

Algo = Callable[..., list[dict[str, Any]]]


def algorithm(name: str) -> Algo:
    if name == "rand":
        return rand.suggest
    if name == "tpe-hyperopt":
        return functools.partial(tpe.suggest, verbose=False)
    parts = name.split("-")
    if parts[0] == "tpe" and len(parts) >= 2 and parts[1] in fleet_tpe.LIARS:
        options: dict[str, Any] = {"liar": parts[1], "verbose": False}
        for part in parts[2:]:
            if part == "rsplit":
                options["split_on_results"] = True
            elif part.startswith("r") and part[1:].isdigit():
                options["min_results"] = int(part[1:])
            else:
                raise ValueError(f"unknown algorithm {name!r}")
        return functools.partial(fleet_tpe.suggest, **options)
    raise ValueError(
        f"unknown algorithm {name!r}: {', '.join(ALGOS)} or tpe-<liar>[-rsplit][-r<min results>]"
    )


# -- near-duplicates -------------------------------------------------------------------------------


class NearDuplicates:
    """Counts suggestions within ``NEAR`` (max over continuous coordinates on their [0, 1] scale)
    of an earlier suggestion with the same active parameters and the same discrete choices."""

    def __init__(self, domain: base.Domain) -> None:
        self.scales: dict[str, Callable[[float], float] | None] = {}
        for label, node in domain.params.items():
            args = [getattr(a, "obj", None) for a in node.pos_args]
            if node.name in ("uniform", "quniform"):
                lo, hi = float(args[0]), float(args[1])
                self.scales[label] = functools.partial(_unit, lo=lo, hi=hi, log=False)
            elif node.name in ("loguniform", "qloguniform"):
                lo, hi = float(args[0]), float(args[1])
                self.scales[label] = functools.partial(_unit, lo=lo, hi=hi, log=True)
            elif node.name in ("normal", "qnormal", "lognormal", "qlognormal"):
                mu, sigma = float(args[0]), float(args[1])
                log = node.name.endswith("lognormal")
                lo, hi = mu - 3 * sigma, mu + 3 * sigma
                self.scales[label] = functools.partial(_unit, lo=lo, hi=hi, log=log)
            else:  # randint, categorical: discrete
                self.scales[label] = None
        self.seen: dict[tuple[Any, ...], list[np.ndarray]] = {}
        self.count = 0
        self.total = 0

    def add(self, vals: Mapping[str, list[Any]]) -> bool:
        active = sorted(label for label, v in vals.items() if v)
        key = tuple(
            (label, vals[label][0]) if self.scales[label] is None else label for label in active
        )
        coords = np.array(
            [scale(vals[label][0]) for label in active if (scale := self.scales[label])]
        )
        earlier = self.seen.setdefault(key, [])
        dup = any(
            coords.size == 0 or float(np.max(np.abs(coords - other))) < NEAR for other in earlier
        )
        earlier.append(coords)
        self.count += dup
        self.total += 1
        return dup


def _unit(x: float, *, lo: float, hi: float, log: bool) -> float:
    v = math.log(x) if log else x
    return (v - lo) / (hi - lo)


# -- one simulated search --------------------------------------------------------------------------


def simulate(
    objective: Objective, algo_name: str, workers: int, n_trials: int, seed: int, queue: int = 0
) -> dict[str, Any]:
    """One asynchronous search; returns the losses in the order results came in, and more."""
    algo = algorithm(algo_name)
    domain = base.Domain(objective.loss, objective.space)
    trials = Trials()
    algo_rng = np.random.default_rng([seed, 1])
    duration_rng = np.random.default_rng([seed, 2])
    dups = NearDuplicates(domain)
    by_tid: dict[int, dict[str, Any]] = {}
    params: dict[int, Any] = {}
    finish: list[tuple[float, int]] = []  # (time, tid) of running trials
    queued: list[int] = []
    losses: list[float] = []
    batches: list[int] = []
    now = 0.0
    issued = 0
    started = time.process_time()

    def refill() -> None:
        nonlocal issued
        wanted = min(workers + queue - len(finish) - len(queued), n_trials - issued)
        if wanted <= 0:
            return
        new_ids = trials.new_trial_ids(wanted)
        docs = algo(new_ids, domain, trials, int(algo_rng.integers(2**31 - 1)))
        if len(docs) != wanted:
            raise RuntimeError(f"{algo_name} returned {len(docs)} trials for {wanted} ids")
        trials.insert_trial_docs(docs)
        trials.refresh()
        batches.append(wanted)
        for doc in trials._dynamic_trials[-wanted:]:
            by_tid[doc["tid"]] = doc
            queued.append(doc["tid"])
            dups.add(doc["misc"]["vals"])
        issued += wanted

    def dispatch() -> None:
        while queued and len(finish) < workers:
            doc = by_tid[queued.pop(0)]
            doc["state"] = base.JOB_STATE_RUNNING
            point = space_eval(objective.space, base.spec_from_misc(doc["misc"]))
            params[doc["tid"]] = point
            heapq.heappush(finish, (now + objective.duration(point, duration_rng), doc["tid"]))

    refill()
    dispatch()
    refill()
    while finish and len(losses) < n_trials:
        now, tid = heapq.heappop(finish)
        doc = by_tid[tid]
        loss = float(objective.loss(params.pop(tid)))
        doc["state"] = base.JOB_STATE_DONE
        doc["result"] = {"status": base.STATUS_OK, "loss": loss}
        trials.refresh()
        losses.append(loss)
        dispatch()
        refill()
        dispatch()
    return {
        "objective": objective.name,
        "algo": algo_name,
        "workers": workers,
        "queue": queue,
        "seed": seed,
        "trials": n_trials,
        "losses": losses,
        "minimum": objective.minimum,
        "near_duplicates": dups.count,
        "suggestions": dups.total,
        "max_batch": max(batches),
        "sim_time": now,
        "cpu_s": round(time.process_time() - started, 3),
    }


# -- the grid --------------------------------------------------------------------------------------


def _key(run: Mapping[str, Any]) -> tuple[Any, ...]:
    return (
        run["objective"],
        run["algo"],
        run["workers"],
        run.get("queue", 0),
        run["seed"],
        run["trials"],
    )


def grid(args: argparse.Namespace) -> Iterator[tuple[str, str, int, int, int, int]]:
    """Random search and the fleet-aware TPE at W = 1 run once per seed (they do not depend on W,
    resp. equal hyperopt's TPE there); every other algorithm at every W."""
    for objective in args.objectives:
        for seed in range(args.seed0, args.seed0 + args.seeds):
            for algo in args.algos:
                for w in args.workers:
                    if algo == "rand" and w != min(args.workers):
                        continue
                    fleet = algo.startswith("tpe-") and algo != "tpe-hyperopt"
                    if fleet and w == 1 and algo != f"tpe-{fleet_tpe.DEFAULT_LIAR}":
                        continue
                    yield objective, algo, w, args.queue, seed, args.trials


def _run_one(spec: tuple[str, str, int, int, int, int], replay: str | None) -> dict[str, Any]:
    logging.getLogger("hyperopt").setLevel(logging.WARNING)
    objective_name, algo, w, queue, seed, n = spec
    objective = replay_objective(Path(replay)) if replay else OBJECTIVES[objective_name]
    return simulate(objective, algo, w, n, seed, queue)


def run_grid(args: argparse.Namespace) -> None:
    out: Path = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    done = set()
    if out.exists():
        done = {_key(json.loads(line)) for line in out.read_text().splitlines() if line.strip()}
    if args.replay:
        args.objectives = [f"replay:{Path(args.replay).name}"]
    todo = [s for s in grid(args) if s not in done]
    print(f"{len(todo)} runs to do ({len(done)} already in {out})", flush=True)
    started = time.monotonic()
    with out.open("a") as f:
        if args.processes > 1:
            pool = ProcessPoolExecutor(args.processes)
            results = pool.map(_run_one, todo, [args.replay] * len(todo), chunksize=1)
        else:
            results = (_run_one(s, args.replay) for s in todo)
        for i, run in enumerate(results, 1):
            f.write(json.dumps(run) + "\n")
            f.flush()
            if i % 10 == 0 or i == len(todo):
                elapsed = time.monotonic() - started
                print(f"{i}/{len(todo)} runs, {elapsed:.0f} s", flush=True)
        if args.processes > 1:
            pool.shutdown()


def _csv(kind: Callable[[str], Any]) -> Callable[[str], list[Any]]:
    return lambda text: [kind(x) for x in text.split(",") if x]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="simulate searches, append them to --out")
    r.add_argument("--seeds", type=int, default=20)
    r.add_argument("--seed0", type=int, default=0, help="first seed")
    r.add_argument("--workers", type=_csv(int), default=[1, 8, 32, 128])
    r.add_argument("--objectives", type=_csv(str), default=list(OBJECTIVES))
    r.add_argument("--algos", type=_csv(str), default=list(ALGOS))
    r.add_argument("--trials", type=int, default=300)
    r.add_argument("--queue", type=int, default=0, help="suggestions kept queued beyond W")
    r.add_argument("--replay", help="a `hyperfleet export -f json` file to replay")
    r.add_argument("--processes", type=int, default=1)
    r.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p = sub.add_parser("report", help="tables (markdown) and a plot from --out")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--at", type=_csv(int), default=[100, 300])
    p.add_argument("--plot", type=Path, help="write the regret plot here (png)")
    args = parser.parse_args(argv)
    if args.command == "run":
        for name in args.algos:
            algorithm(name)
        unknown = set(args.objectives) - set(OBJECTIVES)
        if unknown and not args.replay:
            parser.error(f"unknown objective(s) {sorted(unknown)}: choose from {list(OBJECTIVES)}")
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        run_grid(args)
        return 0
    import fleet_report

    runs = [json.loads(line) for line in args.out.read_text().splitlines() if line.strip()]
    print(fleet_report.targets(runs, f"tpe-{fleet_tpe.DEFAULT_LIAR}", max(args.at)))
    print()
    print(fleet_report.markdown(runs, args.at))
    if args.plot:
        fleet_report.plot(runs, args.plot)
        print(f"plot: {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
