"""Server operations per finished trivial trial, and who spent them.

Two runs on a fresh embedded server (``quadratic``, no sleep: every operation is coordination):

* ``queue`` (the worker's share): ``N`` trials are queued in one write before the window opens,
  then ``W`` real ``hyperfleet worker`` processes run them; no coordinator runs.
* ``search``: ``hyperfleet search quadratic --max-evals N`` with ``W`` workers, as
  ``bench/hf_bench.py`` runs it.

The total is the server's ``serverStatus`` opcounters over the window (insert + query + update +
delete + getmore + command; this script's own reads taken off). Every worker and coordinator
process runs under a pymongo ``CommandListener`` (``_count`` below) that records each command
it sends with the store method that sent it, so the total splits by process and by call; what
no listener saw is the trial child processes' (spawned by multiprocessing) and the connection
monitors'.

    .venv/bin/python bench/worker_ops.py [N=300] [--workers 2] [--mode queue|search|both]
"""

from __future__ import annotations

import argparse
import atexit
import collections
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

OPCOUNTERS = ("insert", "query", "update", "delete", "getmore", "command")


# -- the per-process listener (runs inside each worker/coordinator process) --------------------


def _caller() -> str:
    """Who sent a command: the outermost store method (``coordinator/store/``) on the stack and,
    when another store method below it sent it, that one too (``reserve_trials>_read_back``);
    else the innermost hyperfleet frame."""
    store_fns = []
    other = None
    for frame in traceback.extract_stack()[:-3]:
        path = frame.filename
        if "/coordinator/store/" in path:
            if frame.name not in ("wrapper", "call", "_retry") and not frame.name.startswith("<"):
                store_fns.append(frame.name)
        elif "/worker/" in path or "/coordinator/" in path:
            other = frame.name
    if store_fns:
        outer, inner = store_fns[0], store_fns[-1]
        return outer if outer == inner else f"{outer}>{inner}"
    return other or "?"


def _count(out: str, argv: list[str]) -> None:
    """Run the hyperfleet CLI with ``argv`` and record every command this process sends."""
    from pymongo import monitoring

    events: list[tuple[float, str, str]] = []

    class Listener(monitoring.CommandListener):
        def started(self, event: monitoring.CommandStartedEvent) -> None:
            events.append((time.time(), event.command_name, _caller()))

        def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
            pass

        def failed(self, event: monitoring.CommandFailedEvent) -> None:
            pass

    monitoring.register(Listener())
    hold_max = os.environ.get("HF_BENCH_HOLD_MAX")
    if hold_max:  # a bench-only knob: compare claim sizes without editing the worker
        import worker.worker

        worker.worker.HOLD_MAX = int(hold_max)

    def dump() -> None:
        Path(out).write_text(json.dumps(events))

    atexit.register(dump)
    sys.argv = ["hyperfleet", *argv]
    from coordinator.cli import run

    run()


# -- the benchmark ------------------------------------------------------------------------------


class OpCounter:
    """The server's opcounters; the reads made here are measured once and taken off."""

    def __init__(self, uri: str) -> None:
        import pymongo

        self.client: Any = pymongo.MongoClient(uri, heartbeatFrequencyMS=3_600_000)
        first, second = self.read(), self.read()
        self.own = {k: second[k] - first[k] for k in OPCOUNTERS}

    def read(self) -> dict[str, int]:
        counters = self.client.admin.command("serverStatus")["opcounters"]
        return {k: int(counters.get(k, 0)) for k in OPCOUNTERS}

    def since(self, before: dict[str, int], reads: int = 1) -> dict[str, int]:
        after = self.read()
        return {k: after[k] - before[k] - reads * self.own[k] for k in OPCOUNTERS}


def _counted(out: Path, *argv: str, log: Path) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "_count", str(out), *argv]
    env = {k: v for k, v in os.environ.items() if not k.startswith("HYPERFLEET_")}
    with open(log, "ab") as f:
        return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT)


def _queued_docs(exp_key: str, tids: list[int]) -> list[dict[str, Any]]:
    """Well-formed queued ``quadratic`` trials (hyperopt's job documents)."""
    import random

    rng = random.Random(1)
    docs = []
    for tid in tids:
        x = rng.uniform(-5, 5)
        docs.append(
            {
                "tid": tid,
                "state": 0,
                "exp_key": exp_key,
                "owner": None,
                "spec": None,
                "result": {"status": "new"},
                "misc": {
                    "tid": tid,
                    "cmd": None,
                    "idxs": {"x": [tid]},
                    "vals": {"x": [x]},
                },
                "space": "quadratic",
                "version": 0,
            }
        )
    return docs


def _breakdown(files: dict[str, Path], t0: float, t1: float) -> dict[str, collections.Counter]:
    """Commands each counted process sent inside the window, by ``command:caller``."""
    out = {}
    for name, path in files.items():
        counts: collections.Counter = collections.Counter()
        if path.exists():
            for at, command, caller in json.loads(path.read_text()):
                if t0 <= at <= t1:
                    counts[f"{command}:{caller}"] += 1
        out[name] = counts
    return out


def run(n: int, workers: int, mode: str, log_dir: Path) -> dict[str, Any]:
    from coordinator.server import EmbeddedServer
    from coordinator.states import TrialState
    from coordinator.store import connect

    exp_key = f"ops-{mode}"
    server = EmbeddedServer(":memory:", log_path=log_dir / f"server-{mode}.log").start()
    procs: list[subprocess.Popen[bytes]] = []
    files = {f"worker-{i}": log_dir / f"{mode}-worker-{i}.json" for i in range(workers)}
    try:
        store = connect(server.uri)
        store.create_jobs_indexes()
        store.create_experiment(
            {"_id": exp_key, "space": "quadratic", "settings": {}, "status": "running"}
        )
        for i, (_name, path) in enumerate(files.items()):
            procs.append(
                _counted(
                    path,
                    "worker",
                    "--mongo",
                    server.uri,
                    "--exp-key",
                    exp_key,
                    log=log_dir / f"{mode}-worker-{i}.log",
                )
            )
        deadline = time.monotonic() + 120
        while len(store.live_workers(max_age_s=60)) < workers:
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                raise RuntimeError(f"workers did not start; logs in {log_dir}")
            time.sleep(0.1)
        if mode == "queue":
            store.insert_trials(_queued_docs(exp_key, store.allocate_tids(n)))
        ops = OpCounter(server.uri)
        calibrate = ops.read()
        store.count(exp_key, [TrialState.DONE])
        poll_cost = ops.since(calibrate)  # what one of this script's polls adds
        polls = 0
        before = ops.read()
        t0 = time.time()
        if mode == "search":
            store.jobs.database.experiments.delete_one({"_id": exp_key})  # the search makes it
            files["coordinator"] = log_dir / "search-coordinator.json"
            search = _counted(
                files["coordinator"],
                "search",
                "quadratic",
                "--mongo",
                server.uri,
                "--exp-key",
                exp_key,
                "--max-evals",
                str(n),
                "--seed",
                "1",
                log=log_dir / "search-coordinator.log",
            )
            if search.wait(600) != 0:
                raise RuntimeError(f"the search failed; see {log_dir}/search-coordinator.log")
        else:
            while True:  # one count per poll, every 0.5 s: taken off below
                polls += 1
                if store.count(exp_key, [TrialState.DONE]) >= n:
                    break
                time.sleep(0.5)
        t1 = time.time()
        total = ops.since(before)
        total = {k: total[k] - polls * poll_cost[k] for k in OPCOUNTERS}
        done = store.count(exp_key, [TrialState.DONE])
        store.jobs.database.experiments.update_one({"_id": exp_key}, {"$set": {"status": "done"}})
        for p in procs:
            p.wait(60)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        server.stop()
    by_process = _breakdown(files, t0, t1)
    seen = sum(sum(c.values()) for c in by_process.values())
    all_ops = sum(total.values())
    return {
        "mode": mode,
        "n": n,
        "workers": workers,
        "done": done,
        "seconds": round(t1 - t0, 2),
        "server_ops": total,
        "server_ops_per_trial": round(all_ops / max(1, done), 3),
        "per_trial_by_process": {
            name: round(sum(c.values()) / max(1, done), 3) for name, c in by_process.items()
        },
        "unlisted_per_trial": round((all_ops - seen) / max(1, done), 3),
        "per_trial_by_call": {
            name: {k: round(v / max(1, done), 3) for k, v in c.most_common()}
            for name, c in by_process.items()
        },
    }


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_count":
        _count(sys.argv[2], sys.argv[3:])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("n", type=int, nargs="?", default=300)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--mode", choices=("queue", "search", "both"), default="both")
    parser.add_argument("--hold-max", type=int, help="override worker.worker.HOLD_MAX")
    args = parser.parse_args()
    if args.hold_max is not None:
        os.environ["HF_BENCH_HOLD_MAX"] = str(args.hold_max)
    log_dir = Path(tempfile.mkdtemp(prefix="hf-worker-ops-"))
    modes = ("queue", "search") if args.mode == "both" else (args.mode,)
    for mode in modes:
        print(json.dumps(run(args.n, args.workers, mode, log_dir), indent=1), flush=True)
    print(f"logs: {log_dir}", file=sys.stderr)


if __name__ == "__main__":
    main()
