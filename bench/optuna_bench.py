"""Optuna on the same objective: N processes sharing one storage (SQLite, PostgreSQL or a journal).

``--storage`` is a SQLAlchemy URL (``sqlite:///...``, ``postgresql+psycopg2://...``) or
``journal:PATH``: Optuna's ``JournalStorage(JournalFileBackend(PATH))``, one append-only file
that all processes share (Optuna's recommended storage for many processes without a database
server). Runs in bench/.venvs/optuna (or any interpreter with optuna 5). Each process runs
``study.optimize`` with the default TPE sampler until the study holds ``--n`` complete trials;
the clock runs from the moment all processes are connected (a barrier) to the last one's return.
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing as mp
import time
from typing import Any

import optuna
from optuna.study import MaxTrialsCallback
from optuna.trial import TrialState
from records import print_rate  # bench/, this script's directory

JOURNAL = "journal:"


def objective(trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", -10.0, 10.0)
    return x**2


def open_storage(storage: str) -> str | optuna.storages.BaseStorage:
    """The storage ``--storage`` names: a journal file for ``journal:PATH``, else the URL."""
    if storage.startswith(JOURNAL):
        backend = optuna.storages.journal.JournalFileBackend(storage[len(JOURNAL) :])
        return optuna.storages.JournalStorage(backend)
    return storage


def _worker(
    storage: str, name: str, n: int, timeout: float | None, barrier: Any, seed: int
) -> tuple[float, float]:
    optuna.logging.set_verbosity(logging.WARNING)
    study = optuna.load_study(
        study_name=name,
        storage=open_storage(storage),
        sampler=optuna.samplers.TPESampler(seed=seed),
    )
    barrier.wait()
    started = time.time()
    study.optimize(
        objective,
        callbacks=[MaxTrialsCallback(n, states=(TrialState.COMPLETE,))],
        timeout=timeout,
    )
    return started, time.time()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--storage", required=True, help="SQLAlchemy URL or journal:PATH")
    parser.add_argument("--label", default="sqlite")
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=None)
    args = parser.parse_args()
    optuna.logging.set_verbosity(logging.WARNING)
    name = f"bench-{args.n}-{time.time_ns()}"
    optuna.create_study(study_name=name, storage=open_storage(args.storage))
    ctx = mp.get_context("spawn")
    barrier = ctx.Manager().Barrier(args.procs)
    with ctx.Pool(args.procs) as pool:
        spans = pool.starmap(
            _worker,
            [(args.storage, name, args.n, args.timeout, barrier, i) for i in range(args.procs)],
        )
    wall = max(end for _, end in spans) - min(start for start, _ in spans)
    study = optuna.load_study(study_name=name, storage=open_storage(args.storage))
    done = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    print_rate(
        f"optuna {optuna.__version__} ({args.label}, {args.procs} processes)",
        args.n,
        done,
        wall,
        args.procs,
    )


if __name__ == "__main__":
    main()
