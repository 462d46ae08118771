"""Stock hyperopt 0.3.0 + pymongo 3.13 on the same server: the baseline hyperfleet replaces.

Runs in bench/.venvs/stock (never in hyperfleet's venv). Starts 2 stock ``hyperopt-mongo-worker``
processes, then fmin's own FMinIter over ``MongoTrials``; prints one JSON line.

``--mode tuned``: workers ``--no-subprocesses --poll-interval=0.1``, fmin poll 0.05 s, queue 8.
``--mode default``: worker and fmin defaults (poll 1 s, queue 1; workers poll up to 5 s).
Stock workers write ``book_time`` from their own clock and no queued time, so no dispatch latency.
``--timeout``: stop queueing after that many seconds (then the rate is over the trials done).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from hyperopt import STATUS_OK, hp, tpe
from hyperopt.base import JOB_STATE_DONE, Domain
from hyperopt.fmin import FMinIter
from hyperopt.mongoexp import MongoTrials
from records import print_rate  # bench/, this script's directory


def objective(params: dict[str, Any]) -> dict[str, Any]:
    return {"loss": params["x"] ** 2, "status": STATUS_OK}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mongo", required=True, help="host:port")
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--mode", choices=("tuned", "default"), default="tuned")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=None)
    parser.add_argument("--log-dir", default=".")
    args = parser.parse_args()

    db = f"stock_{args.mode}_{args.n}_{int(time.time())}"
    exp_key = "bench"
    worker_cmd = [str(Path(sys.executable).parent / "hyperopt-mongo-worker")]
    worker_cmd += [f"--mongo={args.mongo}/{db}", f"--exp-key={exp_key}"]
    if args.mode == "tuned":
        worker_cmd += ["--no-subprocesses", "--poll-interval=0.1"]
    worker_cmd += ["--reserve-timeout=3600"]
    procs = []
    for i in range(args.workers):
        log = open(Path(args.log_dir) / f"stock-{args.mode}-worker-{i}.log", "ab")  # noqa: SIM115
        procs.append(subprocess.Popen(worker_cmd, stdout=log, stderr=subprocess.STDOUT))
    time.sleep(2.0)  # let the workers import and connect before the clock starts
    try:
        trials = MongoTrials(f"mongo://{args.mongo}/{db}/jobs", exp_key=exp_key)
        tuned = args.mode == "tuned"
        if args.timeout is not None:
            # fmin checks its timeout only between polls, and its enqueue loop never ends while
            # workers drain the queue as fast as it fills: cancel through hyperopt's own flag
            timer = threading.Timer(args.timeout, setattr, (trials, "_fmin_cancelled", True))
            timer.daemon = True
            timer.start()
        started = time.perf_counter()
        FMinIter(
            tpe.suggest,
            Domain(objective, {"x": hp.uniform("x", -10.0, 10.0)}),
            trials,
            rstate=np.random.default_rng(1),
            asynchronous=True,
            max_queue_len=8 if tuned else 1,
            poll_interval_secs=0.05 if tuned else 1.0,
            max_evals=args.n,
            timeout=args.timeout,
            show_progressbar=False,
        ).exhaust()
        wall = time.perf_counter() - started
        trials.refresh()
        done = trials.count_by_state_unsynced(JOB_STATE_DONE)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    print_rate(f"stock hyperopt ({args.mode})", args.n, done, wall, args.workers)


if __name__ == "__main__":
    main()
