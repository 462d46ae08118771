"""JAX's persistent compilation cache shared by the workers of one machine (issue 20), on the CPU.

A worker process compiles every architecture it trains at least once; `hyperfleet worker
--compile-cache DIR` points JAX's persistent compilation cache (`JAX_COMPILATION_CACHE_DIR`) at
a directory the workers of a machine share, so a process loads the programs an earlier one
compiled. This measures what that saves. Each round starts, one after the other, one fresh
trial process per side, and each process trains the same ``--architectures`` ``mnist_mlp``
models (one trial each, ``--train-size`` images, ``--epochs`` epochs, ``--threads`` threads,
Keras on JAX, the compiled-model cache on: every trial is a new architecture for its process):

- ``none``: no persistent cache (each process compiles everything);
- ``shared``: one cache directory for all of this side's processes (round 0 fills it).

Reported per side, medians over rounds 1..: a trial's ``compile_s`` (its first step and first
validation call less their steady cost), its first step, and its wall time inside the process.
Round 0 is shown apart (the shared side's round 0 writes the cache).

    .venv/bin/python bench/jax_compile_cache.py --rounds 4
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

#: one fresh process: trains the architectures, prints one JSON line of per-trial timings
TRIALS = r"""
import json, sys, time
from worker.environment import pin_devices
pin_devices("none", THREADS)
from search_spaces import get_space
from search_spaces.mnist import build_mlp, mnist_data
from search_spaces.keras.training import run_trial

class Ctx:
    def __init__(self, tid):
        self.tid, self.attempt, self.exp_key = tid, 0, "jax-cache"
        self.info = {"save_models": "none"}
        self.settings = get_space("mnist_mlp").resolve_settings(
            {"epochs": EPOCHS, "train_size": TRAIN_SIZE, "val_size": 1000})
    def report_epoch(self, metrics): return None
    def should_stop(self): return False
    def attach(self, name, data): pass
    def best_loss(self): return None
    def drop_superseded_models(self, name, worse_than): return 0
    def load_checkpoint(self, restore=None): return None
    def save_checkpoint(self, epoch, data): pass

out = []
for tid, units in enumerate(ARCHITECTURES):
    params = {"layers": [{"units": u, "dropout": 0.2} for u in units], "activation": "relu",
              "optimizer": {"name": "adam", "learning_rate": 1e-3}, "batch_size": 64}
    clock = time.perf_counter()
    r = run_trial(params, Ctx(tid), build_model=build_mlp, data=mnist_data)
    t = r["timing"]
    out.append({"wall_s": time.perf_counter() - clock, "compile_s": t["compile_s"],
                "first_step_s": t["first_step_s"], "steady_s": t["steady_s"],
                "reused": t["compile_reused"]})
print(json.dumps(out))
"""

#: different widths and depths: each trial is a new architecture for its process
ARCHITECTURES = ((64,), (128, 64), (256,), (96, 48, 24))


def run_process(side: str, cache_dir: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HYPERFLEET_", "JAX_"))}
    env.update(KERAS_BACKEND="jax", PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL="2")
    if side == "shared":  # what `hyperfleet worker --compile-cache DIR` sets
        env.update(
            JAX_COMPILATION_CACHE_DIR=cache_dir, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0"
        )
    code = (
        TRIALS.replace("THREADS", str(args.threads))
        .replace("EPOCHS", str(args.epochs))
        .replace("TRAIN_SIZE", str(args.train_size))
        .replace("ARCHITECTURES", repr(ARCHITECTURES[: args.architectures]))
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=args.timeout,
        check=False,
    )
    if proc.returncode != 0:
        sys.exit(f"a {side} trial process failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _median(rows: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in rows) if rows else float("nan")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=4, help="round 0 plus the measured ones")
    parser.add_argument("--architectures", type=int, default=len(ARCHITECTURES))
    parser.add_argument("--train-size", type=int, default=5000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=600)
    args = parser.parse_args(argv)
    if args.rounds < 2:
        parser.error("--rounds must be at least 2 (round 0 fills the cache)")
    if not 1 <= args.architectures <= len(ARCHITECTURES):
        parser.error(f"--architectures must be 1..{len(ARCHITECTURES)}")
    sides = ("none", "shared")
    trials: dict[str, list[list[dict[str, Any]]]] = {s: [] for s in sides}
    with tempfile.TemporaryDirectory(prefix="hf-jax-cache-") as cache_dir:
        for round_ in range(args.rounds):
            for side in sides if round_ % 2 == 0 else reversed(sides):
                trials[side].append(run_process(side, cache_dir, args))
            print(f"round {round_ + 1}/{args.rounds} done", file=sys.stderr, flush=True)
        cached_files = sum(1 for p in Path(cache_dir).rglob("*") if p.is_file())
    print(
        f"mnist_mlp on JAX (CPU), {args.architectures} architectures per process, "
        f"train_size {args.train_size}, {args.epochs} epochs, {args.threads} threads, "
        f"{args.rounds} rounds (medians over rounds 2-{args.rounds}); "
        f"{cached_files} files in the shared cache"
    )
    print(f"{'median s per trial':>22} {'none':>8} {'shared':>8}")
    summary: dict[str, Any] = {"cached_files": cached_files}
    for key in ("compile_s", "first_step_s", "steady_s", "wall_s"):
        later = {s: [t for rnd in trials[s][1:] for t in rnd] for s in sides}
        first = {s: trials[s][0] for s in sides}
        print(
            f"{key:>22} {_median(later['none'], key):8.3f} {_median(later['shared'], key):8.3f}"
            f"   (round 1: {_median(first['none'], key):.3f} / {_median(first['shared'], key):.3f})"
        )
        summary[key] = {s: _median(later[s], key) for s in sides}
    return summary


if __name__ == "__main__":
    main()
