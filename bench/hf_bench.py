"""hyperfleet's coordination benchmark: embedded server, N ``hyperfleet worker`` processes, the
coordinator in this process; ``quadratic`` with no sleep, so every second measured is overhead.

Figures: trials/s over the search (coordinator start to return, workers already idle and
registered), per-trial overhead, dispatch latency (``queued`` -> ``book_time``), server operations
per finished trial (the server's ``serverStatus`` opcounters over the same span: insert + query +
update + delete + getmore + command, all clients), and the coordinator's per-iteration cost
(refresh, suggest) as trials grow.
"""

from __future__ import annotations

import functools
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pymongo

from coordinator import search as search_module
from coordinator.search import Coordinator, SearchConfig
from coordinator.server import EmbeddedServer
from coordinator.states import TrialState
from coordinator.store import TrialStore, connect
from search_spaces import get_space


class _Timings:
    """Per-call durations of the coordinator's refresh and suggest, keyed by trials known."""

    def __init__(self) -> None:
        self.refresh: list[tuple[int, float]] = []
        self.suggest: list[tuple[int, float]] = []


def _instrument(timings: _Timings) -> Callable[[], None]:
    """Wrap the coordinator's Trials refresh and its algorithm with timers (bench only).

    The timers patch names in ``coordinator.search``; the coordinator is being rewritten, so a
    name that is gone is left alone (its figures are then empty) instead of failing the run.
    Returns the function that puts the real names back.
    """
    saved: dict[str, Any] = {}
    real_trials = getattr(search_module, "HyperfleetTrials", None)
    if real_trials is not None and hasattr(real_trials, "refresh_tids"):

        class TimedTrials(real_trials):  # type: ignore[misc, valid-type]
            def refresh_tids(self, tids: Any) -> None:
                started = time.perf_counter()
                super().refresh_tids(tids)
                timings.refresh.append((len(self._trials), time.perf_counter() - started))

        saved["HyperfleetTrials"] = real_trials
        search_module.HyperfleetTrials = TimedTrials  # type: ignore[misc]

    real_algo = getattr(search_module, "algo_function", None)
    if real_algo is not None:

        @functools.wraps(real_algo)
        def timed_algo(*args: Any, **kwargs: Any) -> Any:
            algo = real_algo(*args, **kwargs)

            def suggest(new_ids: list[int], domain: Any, trials: Any, seed: int, *more: Any) -> Any:
                started = time.perf_counter()
                out = algo(new_ids, domain, trials, seed, *more)
                per_id = (time.perf_counter() - started) / max(1, len(new_ids))
                timings.suggest.append((len(trials), per_id))
                return out

            return suggest

        saved["algo_function"] = real_algo
        search_module.algo_function = timed_algo

    def restore() -> None:
        for name, value in saved.items():
            setattr(search_module, name, value)

    return restore


OPCOUNTERS = ("insert", "query", "update", "delete", "getmore", "command")


class OpCounter:
    """Server operations over a span, from the server's ``serverStatus`` opcounters.

    The counters are the whole server's: every client's operations count (coordinator, workers,
    their connection monitors). The ``serverStatus`` calls made here are measured once and taken
    off, so the figure is what the search itself cost.
    """

    def __init__(self, uri: str) -> None:
        # no monitor chatter of its own during the span: a polling monitor (no streaming hello,
        # no round-trip-time thread) that polls once an hour
        self.client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
            uri,
            heartbeatFrequencyMS=3_600_000,
            serverMonitoringMode="poll",
            serverSelectionTimeoutMS=10_000,
        )
        # what one read() adds (serverStatus is itself a command): the least of three pairs,
        # so another client's operation that lands in between is not taken for ours
        pairs = []
        for _ in range(3):
            first, second = self.read(), self.read()
            pairs.append({k: second[k] - first[k] for k in OPCOUNTERS})
        self.own = min(pairs, key=lambda d: sum(d.values()))

    def read(self) -> dict[str, int]:
        counters = self.client.admin.command("serverStatus")["opcounters"]
        return {k: int(counters.get(k, 0)) for k in OPCOUNTERS}

    def since(self, before: dict[str, int]) -> dict[str, int]:
        after = self.read()
        return {k: after[k] - before[k] - self.own[k] for k in OPCOUNTERS}

    def close(self) -> None:
        self.client.close()


def _wait_workers(store: TrialStore, n: int, procs: list[subprocess.Popen[bytes]]) -> None:
    deadline = time.monotonic() + 120
    while len(store.live_workers(max_age_s=60)) < n:
        if any(p.poll() is not None for p in procs):
            raise RuntimeError("a benchmark worker exited during start; see its log")
        if time.monotonic() > deadline:
            raise RuntimeError("benchmark workers did not register within 120 s")
        time.sleep(0.05)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its live children (Linux /proc)."""
    total = 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except (OSError, IndexError, ValueError):
        return total
    return total + sum(cpu_seconds(int(c)) for c in children)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


def _cpu_snapshot(pids: dict[str, Any]) -> dict[str, float]:
    own = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "server": cpu_seconds(pids["server"]),
        "workers": sum(cpu_seconds(p) for p in pids["workers"]),
        "coordinator": own.ru_utime + own.ru_stime,
    }


def _cost_by_size(samples: list[tuple[int, float]], n: int) -> dict[str, float]:
    """Median cost (ms) of the calls made while the history held about 10/50/90% of ``n``."""
    out = {}
    for frac in (0.1, 0.5, 0.9):
        lo, hi = n * (frac - 0.05), n * (frac + 0.05)
        window = [d for size, d in samples if lo <= size <= hi]
        if window:
            out[f"{int(frac * n)}"] = round(statistics.median(window) * 1000, 2)
    return out


def run_hyperfleet(
    n: int,
    *,
    workers: int = 2,
    isolate: bool = True,
    queue_len: int | None = None,
    poll_s: float = 0.02,
    log_dir: Path | None = None,
    timeout_s: float | None = None,
) -> dict[str, Any]:
    log_dir = log_dir or Path(tempfile.mkdtemp(prefix="hf-bench-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    exp_key = f"bench-{n}-{int(time.time())}"
    server = EmbeddedServer(":memory:", log_path=log_dir / "server.log").start()
    procs: list[subprocess.Popen[bytes]] = []
    timings = _Timings()
    restore = _instrument(timings)
    ops: OpCounter | None = None
    try:
        store = connect(server.uri)
        store.create_jobs_indexes()
        for i in range(workers):
            cmd = [sys.executable, "-m", "coordinator", "worker", "--mongo", server.uri]
            cmd += ["--exp-key", exp_key, "--isolate" if isolate else "--no-isolate"]
            with open(log_dir / f"worker-{i}.log", "ab") as log:
                procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT))
        _wait_workers(store, workers, procs)
        space = get_space("quadratic")
        config = SearchConfig(
            space=space,
            settings=space.resolve_settings({}),
            exp_key=exp_key,
            max_evals=n,
            queue_len=queue_len,
            poll_s=poll_s,
            seed=1,
            timeout_s=timeout_s,
        )
        pids = {"server": server.process.pid, "workers": [p.pid for p in procs]}  # type: ignore[union-attr]
        ops = OpCounter(server.uri)
        cpu0 = _cpu_snapshot(pids)
        ops0 = ops.read()
        started = time.perf_counter()
        outcome = Coordinator(store, config).run()
        wall = time.perf_counter() - started
        server_ops = ops.since(ops0)
        cpu1 = _cpu_snapshot(pids)
        docs = store.trial_outcomes(exp_key)
    finally:
        restore()
        if ops is not None:
            ops.close()
        for proc in procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.terminate()
                proc.wait(10)
        server.stop()
    done = [d for d in docs if d["state"] == int(TrialState.DONE)]
    latency = [
        (d["book_time"] - d["queued"]).total_seconds()
        for d in done
        if d.get("queued") is not None and d.get("book_time") is not None
    ]
    objective = statistics.fmean(d.get("duration_s") or 0.0 for d in done) if done else 0.0
    return {
        "system": "hyperfleet" + ("" if isolate else " --no-isolate"),
        "n": n,
        "done": len(done),
        "seconds": round(wall, 3),
        "trials_per_s": round(len(done) / wall, 2),
        "overhead_ms": round((wall * workers / max(1, len(done)) - objective) * 1000, 2),
        "dispatch_median_ms": round(percentile(latency, 50) * 1000, 1),
        "dispatch_p95_ms": round(percentile(latency, 95) * 1000, 1),
        "refresh_ms_at": _cost_by_size(timings.refresh, n),
        "suggest_ms_at": _cost_by_size(timings.suggest, n),
        "cpu_ms_per_trial": {
            k: round((cpu1[k] - cpu0[k]) * 1000 / max(1, len(done)), 2) for k in cpu0
        },
        "server_ops_per_trial": round(sum(server_ops.values()) / max(1, len(done)), 2),
        "server_ops": server_ops,
        "counts": {getattr(s, "name", str(s)): c for s, c in outcome.counts.items() if c},
    }


if __name__ == "__main__":
    import json

    size = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    isolate = "--no-isolate" not in sys.argv
    print(json.dumps(run_hyperfleet(size, isolate=isolate), indent=1))
