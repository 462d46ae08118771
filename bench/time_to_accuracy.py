"""Time to accuracy: early stopping in hyperfleet against no stopping, Optuna and stock hyperopt.

    .venv/bin/python bench/time_to_accuracy.py                      # the recorded run (~30 min)
    .venv/bin/python bench/time_to_accuracy.py --seeds 1 --budget 20 --epochs 3 \\
        --train-size 2000 --systems hf-none,hf-asha                 # a quick check
    .venv/bin/python bench/time_to_accuracy.py --systems hf-none,hf-asha,ray-asha  # + Ray's ASHA

Every system searches ``mnist_mlp`` (bench/tta_objective.py: same space, model code, data and
Keras training) with 2 CPU worker processes of 1 thread each, for the same wall-clock budget
counted from the moment its first model is built (Keras imported and the data loaded: start-up is
excluded for every system alike). Systems run one after the other, interleaved
seed by seed in a rotating order, so the load of other processes on the machine hits all alike:

* ``hf-none``, ``hf-median``, ``hf-asha``, ``hf-hyperband``: ``hyperfleet local`` (embedded
  server, 2 workers, TPE) with ``--prune`` none/median/asha/hyperband, default rule parameters;
* ``hf-asha-promote``, ``hf-hyperband-promote``: the same with ``--promote`` (a trial below a
  rung's cut pauses with its checkpoint and is resumed when promoted); ``hf-asha-promote-wait``
  adds ``--promote-wait`` (a rung of fewer than η values promotes nobody);
* ``optuna-hyperband``, ``optuna-median``: Optuna's TPESampler with HyperbandPruner
  (min_resource 1, max_resource = epochs, reduction 3) or MedianPruner (5 start-up trials),
  2 processes sharing one SQLite study; like hyperfleet, a trial's last epoch is not pruned;
* ``stock``: stock hyperopt 0.3.0 ``MongoTrials`` + 2 ``hyperopt-mongo-worker``
  (bench/.venvs/stock, pymongo 3.13; ``--no-subprocesses``), no early stopping;
* ``ray-asha`` (the anchor, not in the default ``--systems``: it needs bench/.venvs/ray, ray[tune]
  2.60.0, created on first use): Ray Tune's ``ASHAScheduler`` (on ``training_iteration`` = epoch,
  grace 1, max = epochs, reduction 3) with ``HyperOptSearch`` (TPE, the same hyperopt space), at
  most 2 trials at once of 1 CPU each on a local ``ray.init(num_cpus=2)``, actors reused between
  trials (as the other systems' worker processes are). A trial at the max is not stopped.

Measured per run, on the runs' own per-epoch wall times: epochs trained (all, and until the
target), the time until the best validation accuracy of a fully trained trial reaches the target
(the median over seeds of ``hf-none``'s final best, minus 0.5 points), the final best validation
accuracy, and the test accuracy of that best trial's model (scored once when it finished, never
used to select). Writes bench/results/tta-<time>.json and .md and prints the table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"
SYSTEMS = (
    "hf-none",
    "hf-median",
    "hf-asha",
    "hf-hyperband",
    "hf-asha-promote",
    "hf-asha-promote-wait",
    "hf-hyperband-promote",
    "optuna-hyperband",
    "optuna-median",
    "stock",
    "ray-asha",
)
#: what runs without ``--systems``: the anchor ray-asha needs its own venv (ray[tune], ~630 MB)
DEFAULT_SYSTEMS = tuple(s for s in SYSTEMS if s != "ray-asha")
WORKERS = 2
TARGET_MARGIN = 0.005  #: the target is hf-none's median final best minus half a point


def settings_of(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "epochs": args.epochs,
        "objective": "val_error",  # the loss is 1 - val_accuracy; rules compare val_accuracy
        "train_size": args.train_size,
        "val_size": args.val_size,
    }


def clock_env(workdir: Path, budget: float) -> dict[str, str]:
    """The environment of every process of a run: its clock, 1 thread each, and this checkout
    first on the path (workers import this tree's hyperfleet, whatever else is installed)."""
    return {
        "PYTHONPATH": os.pathsep.join([str(BENCH), str(ROOT)]),
        "TTA_CLOCK": str(workdir / "clock"),
        "TTA_BUDGET": str(budget),
        "TF_NUM_INTRAOP_THREADS": "1",
        "TF_NUM_INTEROP_THREADS": "1",
        "OMP_NUM_THREADS": "1",
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }


def _wait_for_deadline(workdir: Path, budget: float, stop: threading.Event) -> bool:
    """Sleep until the run's clock (its first trial's start) plus ``budget``; False if
    ``stop`` was set first."""
    from tta_objective import clock_start

    while not stop.is_set():
        start = clock_start(str(workdir / "clock"))
        if start is not None and time.time() >= start + budget:
            return True
        stop.wait(0.2)
    return False


def _unix(value: Any) -> float | None:
    if isinstance(value, dt.datetime):
        return value.replace(tzinfo=dt.UTC).timestamp()
    return None


# -- one run of one system (each in its own process) --------------------------------------------


def run_hyperfleet(rule: str, seed: int, workdir: Path, args: argparse.Namespace) -> list[dict]:
    from coordinator.local import LocalConfig, LocalRun, local_worker_envs
    from coordinator.pruning import resolve_pruning
    from coordinator.search import SearchConfig
    from coordinator.store import TrialStore, connect
    from search_spaces import get_space, load_spaces

    load_spaces(str(BENCH / "tta_objective.py"))
    space = get_space("mnist_mlp_tta")
    settings = space.resolve_settings(settings_of(args))
    exp_key = f"tta-{rule}-{seed}"
    config = SearchConfig(
        space=space,
        settings=settings,
        exp_key=exp_key,
        max_evals=100_000,
        seed=seed,
        timeout_s=args.budget + 120,
        pruning=resolve_pruning(
            rule.split("-")[0],
            settings,
            promote="-promote" in rule,
            promote_wait=rule.endswith("-promote-wait"),
        ),
    )
    trials: list[dict] = []

    def collect(store: TrialStore, outcome: Any) -> None:
        for doc in store.trials(exp_key, with_spec=False):
            result = doc.get("result") or {}
            epochs = [
                {"epoch": e["epoch"], "t": e["t"], "val_accuracy": e.get("val_accuracy")}
                for e in doc.get("epochs") or []
                if "t" in e
            ]
            trials.append(
                {
                    "start": _unix(doc.get("book_time")),
                    "end": _unix(doc.get("ended")),
                    "epochs": epochs,
                    "pruned": bool(result.get("pruned")),
                    "complete": "test_accuracy" in result,
                    "val_accuracy": result.get("val_accuracy"),
                    "test_accuracy": result.get("test_accuracy"),
                }
            )

    os.environ.update(clock_env(workdir, args.budget))
    run = LocalRun(
        LocalConfig(
            search=config,
            workers=WORKERS,
            db_path=workdir / "db",
            worker_args=[f"--spaces={BENCH / 'tta_objective.py'}", "--save-models=none"],
            worker_envs=local_worker_envs(WORKERS, None, 1, 1),
            after=collect,
        )
    )
    stop = threading.Event()

    def cancel_at_deadline() -> None:
        if _wait_for_deadline(workdir, args.budget, stop):
            store = connect(run.server.uri)
            store.cancel_experiment(exp_key, settle_s=0.2)
            store.close()

    watcher = threading.Thread(target=cancel_at_deadline, daemon=True)
    watcher.start()
    try:
        run.run()
    finally:
        stop.set()
    return trials


def _optuna_process(
    storage: str, name: str, seed: int, settings: dict[str, Any], budget: float
) -> None:
    import logging

    import optuna
    from tta_objective import _deadline, optuna_objective

    optuna.logging.set_verbosity(logging.WARNING)
    study = optuna.load_study(
        study_name=name, storage=storage, sampler=optuna.samplers.TPESampler(seed=seed)
    )

    def stop_at_deadline(study: Any, trial: Any) -> None:
        if time.time() > _deadline():
            study.stop()

    study.optimize(
        lambda trial: optuna_objective(trial, settings),
        timeout=budget + 120,
        callbacks=[stop_at_deadline],
    )


def run_optuna(pruner_name: str, seed: int, workdir: Path, args: argparse.Namespace) -> list[dict]:
    import multiprocessing as mp

    import optuna

    settings = settings_of(args)
    os.environ.update(clock_env(workdir, args.budget))
    if pruner_name == "hyperband":
        pruner: Any = optuna.pruners.HyperbandPruner(
            min_resource=1, max_resource=args.epochs, reduction_factor=3
        )
    else:
        pruner = optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1)
    storage = f"sqlite:///{workdir / 'optuna.db'}"
    name = f"tta-{pruner_name}-{seed}"
    optuna.create_study(study_name=name, storage=storage, direction="maximize", pruner=pruner)
    ctx = mp.get_context("spawn")
    procs = [
        ctx.Process(
            target=_optuna_process, args=(storage, name, seed * 100 + i, settings, args.budget)
        )
        for i in range(WORKERS)
    ]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join()
    trials = []
    study = optuna.load_study(study_name=name, storage=storage)
    for t in study.get_trials(deepcopy=False):
        run = t.user_attrs.get("run") or {}
        epochs = run.get("epochs") or []
        trials.append(
            {
                "start": t.datetime_start.timestamp() if t.datetime_start else None,
                "end": epochs[-1]["t"] if epochs else None,
                "epochs": [
                    {"epoch": e["epoch"], "t": e["t"], "val_accuracy": e.get("val_accuracy")}
                    for e in epochs
                ],
                "pruned": run.get("stopped") == "pruned",
                "complete": "test_accuracy" in run,
                "val_accuracy": run.get("val_accuracy"),
                "test_accuracy": run.get("test_accuracy"),
            }
        )
    return trials


def run_stock(seed: int, workdir: Path, args: argparse.Namespace) -> list[dict]:
    """Runs in bench/.venvs/stock (hyperopt 0.3.0, pymongo 3.13)."""
    import numpy as np
    from hyperopt import tpe
    from hyperopt.base import Domain
    from hyperopt.fmin import FMinIter
    from hyperopt.mongoexp import MongoTrials
    from tta_objective import stock_objective

    import search_spaces.mnist as mnist

    settings = settings_of(args)
    env = {
        **os.environ,
        **clock_env(workdir, args.budget),
        "TTA_SETTINGS": json.dumps(settings),
    }
    os.environ.update(env)
    db, exp_key = f"stock_tta_{seed}_{int(time.time())}", "tta"
    worker = [str(Path(sys.executable).parent / "hyperopt-mongo-worker")]
    worker += [f"--mongo={args.mongo}/{db}", f"--exp-key={exp_key}", "--no-subprocesses"]
    worker += ["--poll-interval=0.1", "--reserve-timeout=3600"]
    procs = []
    for i in range(WORKERS):
        log = open(workdir / f"stock-worker-{i}.log", "ab")  # noqa: SIM115
        procs.append(subprocess.Popen(worker, env=env, stdout=log, stderr=subprocess.STDOUT))
    trials = MongoTrials(f"mongo://{args.mongo}/{db}/jobs", exp_key=exp_key)
    stop = threading.Event()

    def cancel_at_deadline() -> None:
        if _wait_for_deadline(workdir, args.budget, stop):
            trials._fmin_cancelled = True  # hyperopt's own flag: fmin stops queueing

    threading.Thread(target=cancel_at_deadline, daemon=True).start()
    try:
        FMinIter(
            tpe.suggest,
            Domain(stock_objective, mnist._mlp_space(settings)),
            trials,
            rstate=np.random.default_rng(seed),
            asynchronous=True,
            max_queue_len=WORKERS,
            poll_interval_secs=0.1,
            max_evals=100_000,
            timeout=args.budget + 120,
            show_progressbar=False,
        ).exhaust()
        trials.refresh()
    finally:
        stop.set()
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
    out = []
    for doc in trials.trials:
        run = (doc.get("result") or {}).get("run") or {}
        epochs = run.get("epochs") or []
        out.append(
            {
                "start": _unix(doc.get("book_time")),
                "end": epochs[-1]["t"] if epochs else None,
                "epochs": [
                    {"epoch": e["epoch"], "t": e["t"], "val_accuracy": e.get("val_accuracy")}
                    for e in epochs
                ],
                "pruned": False,
                "complete": "test_accuracy" in run,
                "val_accuracy": run.get("val_accuracy"),
                "test_accuracy": run.get("test_accuracy"),
            }
        )
    return out


def run_ray(seed: int, workdir: Path, args: argparse.Namespace) -> list[dict]:
    """Runs in bench/.venvs/ray (ray[tune] 2.60.0): ASHA + HyperOptSearch, 2 trials at a time."""
    # tta_objective first: it appends hyperfleet's venv (hyperopt, Keras) to the path
    from tta_objective import _deadline, ray_trainable

    import search_spaces.mnist as mnist

    settings = settings_of(args)
    os.environ.update(
        {
            **clock_env(workdir, args.budget),  # before ray.init: its workers inherit it
            "TTA_SETTINGS": json.dumps(settings),
            "RAY_USAGE_STATS_ENABLED": "0",
        }
    )
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, TrialScheduler
    from ray.tune.search import Searcher
    from ray.tune.search.hyperopt import HyperOptSearch

    records: dict[str, dict[str, Any]] = {}
    pruned: set[str] = set()

    class Search(HyperOptSearch):
        def suggest(self, trial_id: str) -> Any:
            if time.time() > _deadline():  # the budget is spent: start no more trials
                return Searcher.FINISHED
            return super().suggest(trial_id)

    class Asha(ASHAScheduler):
        def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
            decision = super().on_trial_result(tune_controller, trial, result)
            if decision == TrialScheduler.STOP and not result.get("final"):
                pruned.add(trial.trial_id)  # below its rung's cut (a final result is not)
            return decision

    class Collect(tune.Callback):
        def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            records.setdefault(trial.trial_id, {"start": time.time(), "results": []})

        def on_trial_result(
            self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
        ) -> None:
            keep = ("epoch", "t", "val_accuracy", "final", "test_accuracy")
            rec = records.setdefault(trial.trial_id, {"start": None, "results": []})
            rec["results"].append({k: result.get(k) for k in keep})

    ray.init(
        num_cpus=WORKERS,
        include_dashboard=False,
        object_store_memory=200 * 1024**2,
        log_to_driver=False,
    )
    try:
        tuner = tune.Tuner(
            tune.with_resources(ray_trainable, {"cpu": 1}),
            tune_config=tune.TuneConfig(
                search_alg=Search(
                    space=mnist._mlp_space(settings),
                    metric="val_accuracy",
                    mode="max",
                    random_state_seed=seed,
                ),
                scheduler=Asha(
                    time_attr="training_iteration",
                    metric="val_accuracy",
                    mode="max",
                    max_t=args.epochs,
                    grace_period=1,
                    reduction_factor=3,
                ),
                num_samples=-1,
                max_concurrent_trials=WORKERS,
                reuse_actors=True,
                time_budget_s=args.budget + 240,  # a safety net only: the searcher ends the run
            ),
            run_config=tune.RunConfig(
                name=f"tta-asha-{seed}",
                storage_path=str(workdir / "ray"),
                verbose=0,
                callbacks=[Collect()],
                failure_config=tune.FailureConfig(fail_fast=True),
            ),
        )
        grid = tuner.fit()
    finally:
        ray.shutdown()
    if grid.errors:
        raise RuntimeError(f"{len(grid.errors)} ray trials failed: {grid.errors[0]!r}")
    out = []
    for trial_id, rec in records.items():
        rows = rec["results"]
        final = next((r for r in rows if r.get("final")), None)
        epochs = [
            {"epoch": r["epoch"], "t": r["t"], "val_accuracy": r["val_accuracy"]}
            for r in rows
            if r.get("t") is not None
        ]
        out.append(
            {
                "start": rec["start"],
                "end": epochs[-1]["t"] if epochs else None,
                "epochs": epochs,
                "pruned": trial_id in pruned and final is None,
                "complete": final is not None and final.get("test_accuracy") is not None,
                "val_accuracy": epochs[-1]["val_accuracy"] if epochs else None,
                "test_accuracy": final.get("test_accuracy") if final else None,
            }
        )
    return out


def run_one(args: argparse.Namespace) -> None:
    workdir = Path(args.workdir)
    started = time.time()
    if args.system.startswith("hf-"):
        trials = run_hyperfleet(args.system.removeprefix("hf-"), args.seed, workdir, args)
    elif args.system.startswith("optuna-"):
        trials = run_optuna(args.system.removeprefix("optuna-"), args.seed, workdir, args)
    elif args.system == "ray-asha":
        trials = run_ray(args.seed, workdir, args)
    else:
        trials = run_stock(args.seed, workdir, args)
    from tta_objective import clock_start

    (workdir / "trials.json").write_text(
        json.dumps(
            {
                "system": args.system,
                "seed": args.seed,
                "clock": clock_start(str(workdir / "clock")),
                "budget": args.budget,
                "wall": time.time() - started,
                "trials": trials,
            }
        )
    )


# -- analysis --------------------------------------------------------------------------------


def summarize_run(run: dict[str, Any], target: float | None) -> dict[str, Any]:
    """One run's figures inside its budget window [clock, clock + budget]."""
    t0 = run["clock"] or 0.0
    end = t0 + run["budget"]
    epochs = sorted(e["t"] for t in run["trials"] for e in t["epochs"] if e["t"] <= end)
    done = sorted(
        (t["end"], t["val_accuracy"], t.get("test_accuracy"))
        for t in run["trials"]
        if t["complete"] and t["end"] is not None and t["end"] <= end
    )
    best = best_test = None
    reached = None
    for t_end, acc, test in done:
        if best is None or acc > best:
            best, best_test = acc, test
        if target is not None and reached is None and best >= target:
            reached = t_end - t0
    stopped = [t for t in run["trials"] if t["pruned"] and t["end"] and t["end"] <= end]
    steps = [
        b["t"] - a["t"]
        for t in run["trials"]
        for a, b in zip(t["epochs"], t["epochs"][1:], strict=False)
        if b["t"] <= end
    ]
    epoch_s = statistics.median(steps) if steps else None  # this run's speed (the load)
    return {
        "epochs": len(epochs),
        "epochs_to_target": (
            sum(1 for t in epochs if t <= t0 + reached) if reached is not None else None
        ),
        "time_to_target": reached,
        "epoch_s": epoch_s,
        # the time to target in epochs of this run's median length: less sensitive to the load
        # of other processes, which changes from run to run
        "norm_time_to_target": reached / epoch_s if reached is not None and epoch_s else None,
        "best": best,
        "test": best_test,
        "complete": len(done),
        "pruned": len(stopped),
    }


def _median(values: list[float | None]) -> float | None:
    """Median, where ``None`` (target never reached) counts as larger than any number."""
    if not values:
        return None
    ordered = sorted(values, key=lambda v: (v is None, v or 0.0))
    mid = ordered[len(ordered) // 2]
    if len(ordered) % 2 or None in ordered[len(ordered) // 2 - 1 : len(ordered) // 2 + 1]:
        return mid
    return (ordered[len(ordered) // 2 - 1] + mid) / 2  # type: ignore[operator]


def analyse(runs: list[dict[str, Any]]) -> dict[str, Any]:
    base = [summarize_run(r, None)["best"] for r in runs if r["system"] == "hf-none"]
    base = [b for b in base if b is not None]
    target = statistics.median(base) - TARGET_MARGIN if base else None
    table: dict[str, Any] = {}
    for system in dict.fromkeys(r["system"] for r in runs):
        per_seed = [summarize_run(r, target) for r in runs if r["system"] == system]
        table[system] = {
            "seeds": len(per_seed),
            "per_seed": per_seed,
            **{
                key: _median([s[key] for s in per_seed])
                for key in (
                    "epochs",
                    "epochs_to_target",
                    "time_to_target",
                    "norm_time_to_target",
                    "epoch_s",
                    "best",
                    "test",
                )
            },
            "reached": sum(s["time_to_target"] is not None for s in per_seed),
            "complete": sum(s["complete"] for s in per_seed),
            "pruned": sum(s["pruned"] for s in per_seed),
        }
    return {"target": target, "systems": table}


#: what results files pooled by ``--analyse`` must share
POOLED_SETTINGS = ("budget_s", "epochs", "train_size", "val_size", "workers", "cpus")


def pooled(paths: list[str]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The runs of the results files ``paths`` as one list, each tagged with its file
    (``source``), and their common settings; ValueError if the settings differ."""
    runs: list[dict[str, Any]] = []
    metas = []
    seen: dict[tuple[Any, Any], str] = {}
    for i, path in enumerate(paths):
        data = json.loads(Path(path).read_text())
        if isinstance(data, list):  # the first runs' files: runs only
            data = {"runs": data}
        metas.append(data.get("meta") or {})
        for run in data["runs"]:
            pair = (run.get("system"), run.get("seed"))
            if len(paths) > 1 and pair in seen:  # one seed counted twice
                raise ValueError(
                    f"{pair[0]} seed {pair[1]} is in {seen[pair]} and {path}: pool runs of "
                    "other seeds (time_to_accuracy.py --first-seed)"
                )
            seen[pair] = path
            runs.append({**run, "source": i})
    for name in POOLED_SETTINGS:
        values = {json.dumps(meta.get(name)) for meta in metas}
        if len(values) > 1:
            raise ValueError(f"the files differ in {name} ({', '.join(sorted(values))})")
    if len(metas) == 1:
        return runs, metas[0]
    meta = {name: metas[0].get(name) for name in POOLED_SETTINGS}
    meta["pooled"] = [
        {"started": m.get("started"), "seeds": m.get("seeds"), "first_seed": m.get("first_seed", 0)}
        for m in metas
    ]
    return runs, meta


def _fmt(value: Any, kind: str) -> str:
    if value is None:
        return "not reached"
    if kind == "s":
        return f"{value:.0f} s"
    if kind == "acc":
        return f"{100 * value:.2f} %"
    if kind == "ep":
        return f"{value:.2f} s"
    return f"{value:.0f}"


def markdown(summary: dict[str, Any], meta: dict[str, Any]) -> str:
    target = summary["target"]
    lines = [
        f"Target: {_fmt(target, 'acc')} validation accuracy (hf-none's median final best "
        "minus 0.5 points). Medians over seeds; per-seed values in the JSON.",
        "",
        "| system | epochs to target | time to target | (in epoch lengths) | reached | "
        "epochs in budget | median epoch | final best val acc | test acc of best | "
        "trials done / stopped early |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for system, row in summary["systems"].items():
        lines.append(
            f"| {system} | {_fmt(row['epochs_to_target'], 'n')} | "
            f"{_fmt(row['time_to_target'], 's')} | {_fmt(row['norm_time_to_target'], 'n')} | "
            f"{row['reached']}/{row['seeds']} | {_fmt(row['epochs'], 'n')} | "
            f"{_fmt(row['epoch_s'], 'ep')} | {_fmt(row['best'], 'acc')} | "
            f"{_fmt(row['test'], 'acc')} | {row['complete']} / {row['pruned']} |"
        )
    lines += ["", targets(summary), "", "Run: " + json.dumps(meta)]
    return "\n".join(lines) + "\n"


def targets(summary: dict[str, Any]) -> str:
    """The issue's targets, each met or missed, for the best hyperfleet rule."""
    rows = summary["systems"]
    none = rows.get("hf-none")
    rules = {k: v for k, v in rows.items() if k.startswith("hf-") and k != "hf-none"}
    if none is None or not rules:
        return "targets: need hf-none and at least one hf rule"

    def key(item: tuple[str, dict[str, Any]]) -> tuple[bool, float]:
        t = item[1]["time_to_target"]
        return (t is None, t or 0.0)

    name, best = min(rules.items(), key=key)
    out = [f"Best rule by time to target: {name}."]

    def ratio(a: float | None, b: float | None) -> str:
        if a is None or b is None or b == 0:
            return "n/a"
        return f"{a / b:.2f}x"

    e = ratio(none["epochs_to_target"], best["epochs_to_target"])
    t = ratio(none["time_to_target"], best["time_to_target"])
    n = ratio(none["norm_time_to_target"], best["norm_time_to_target"])
    gap = None if none["best"] is None or best["best"] is None else none["best"] - best["best"]
    oh = rows.get("optuna-hyperband")
    out.append(f"- epochs to target, hf-none / {name}: {e} (target >= 2x)")
    out.append(f"- time to target, hf-none / {name}: {t} (target >= 1.7x; in epoch lengths: {n})")
    out.append(
        f"- final best, hf-none minus {name}: "
        + ("n/a" if gap is None else f"{100 * gap:+.2f} points")
        + " (target <= 0.5)"
    )
    if oh is not None:
        out.append(
            f"- time to target, optuna-hyperband / {name}: "
            f"{ratio(oh['time_to_target'], best['time_to_target'])} (target >= 1x)"
        )
    ray_asha = rows.get("ray-asha")
    if ray_asha is not None:
        out.append(
            f"- time to target, ray-asha / {name}: "
            f"{ratio(ray_asha['time_to_target'], best['time_to_target'])} (the anchor)"
        )
    return "\n".join(out)


# -- the driver ------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument(
        "--first-seed", type=int, default=0, help="run seeds FIRST..FIRST+SEEDS-1 (default 0)"
    )
    parser.add_argument("--budget", type=float, default=50.0, help="seconds per run")
    parser.add_argument("--epochs", type=int, default=9)
    parser.add_argument("--train-size", type=int, default=5_000)
    parser.add_argument("--val-size", type=int, default=1_000)
    parser.add_argument(
        "--systems",
        default=",".join(DEFAULT_SYSTEMS),
        help=f"comma-separated, of: {', '.join(SYSTEMS)} (default: all but ray-asha)",
    )
    parser.add_argument(
        "--analyse",
        metavar="JSON",
        nargs="+",
        help="only print the table of earlier runs' results files (several: their runs pooled, "
        "e.g. one run of seeds 0-4 and one of --first-seed 5; their settings must match)",
    )
    parser.add_argument("--run", dest="system", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    parser.add_argument("--mongo", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.system:
        run_one(args)
        return
    if args.analyse:
        try:
            runs, meta = pooled(args.analyse)
        except ValueError as e:
            parser.error(str(e))
        print(markdown(analyse(runs), meta))
        return
    systems = [s for s in args.systems.split(",") if s]
    unknown = set(systems) - set(SYSTEMS)
    if unknown:
        parser.error(f"unknown systems: {', '.join(sorted(unknown))}")
    drive(systems, args)


def drive(systems: list[str], args: argparse.Namespace) -> None:
    import baselines

    from coordinator.server import EmbeddedServer

    venv_python = {  # the systems that run in their own venv (created on first use)
        system: str(baselines.ensure_venv(name))
        for system, name in (("stock", "stock"), ("ray-asha", "ray"))
        if system in systems
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    runs: list[dict[str, Any]] = []
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="tta-") as tmp:
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            shift = seed % len(systems)
            for system in systems[shift:] + systems[:shift]:  # a rotating order per seed
                workdir = Path(tmp) / f"{system}-{seed}"
                workdir.mkdir()
                common = [
                    f"--run={system}",
                    f"--seed={seed}",
                    f"--workdir={workdir}",
                    f"--budget={args.budget}",
                    f"--epochs={args.epochs}",
                    f"--train-size={args.train_size}",
                    f"--val-size={args.val_size}",
                ]
                server = None
                python = venv_python.get(system, sys.executable)
                if system == "stock":
                    server = EmbeddedServer(workdir / "mongo").start()
                    common.append(f"--mongo={server.uri.removeprefix('mongodb://').rstrip('/')}")
                t = time.time()
                try:
                    proc = subprocess.run(
                        [python, str(Path(__file__).resolve()), *common],
                        cwd=workdir,
                        capture_output=True,
                        text=True,
                        timeout=args.budget + 300,
                    )
                finally:
                    if server is not None:
                        server.stop()
                out = workdir / "trials.json"
                if proc.returncode != 0 or not out.exists():
                    print(f"{system} seed {seed} failed:\n{proc.stderr[-3000:]}", file=sys.stderr)
                    continue
                run = json.loads(out.read_text())
                runs.append(run)
                s = summarize_run(run, None)
                print(
                    f"[{time.time() - started:6.0f} s] {system} seed {seed}: {time.time() - t:.0f}"
                    f" s wall, {s['epochs']} epochs, {s['complete']} complete, {s['pruned']} "
                    f"stopped early, best {s['best']}, load {os.getloadavg()[0]:.1f}",
                    file=sys.stderr,
                    flush=True,
                )
    summary = analyse(runs)
    meta = {
        "seeds": args.seeds,
        "first_seed": args.first_seed,
        "budget_s": args.budget,
        "epochs": args.epochs,
        "train_size": args.train_size,
        "val_size": args.val_size,
        "workers": WORKERS,
        "cpus": os.cpu_count(),
        "wall_s": round(time.time() - started),
        "started": stamp,
    }
    text = markdown(summary, meta)
    (RESULTS / f"tta-{stamp}.json").write_text(
        json.dumps({"meta": meta, "summary": summary, "runs": runs}, default=str)
    )
    (RESULTS / f"tta-{stamp}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    sys.path[:0] = [str(BENCH), str(ROOT)]
    main()
