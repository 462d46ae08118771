"""Per-trial fixed cost of Keras trials: phases, worker sides, against a bare ``model.fit``.

One run, interleaved so that machine noise hits all sides alike. Each round runs

1. one trial on the first worker side,
2. the same model as a **bare** ``build + compile + fit`` in a warm plain process (plain Keras
   layers and optimizer, Keras's defaults: ``steps_per_execution`` 1, validation at the
   training batch size),
3. one trial on each other worker side,

all of ``--space`` (the same TPE draws, seed 0) on ``--train-size`` images for ``--epochs``
epochs, ``--threads`` threads each, ``--save-models best``. The workers serve databases of one
embedded server and never run at the same time as anything else here. Round 0 holds each
worker's *first* trial; medians are over the later rounds (with ``--after N``: over trials
N+1.., and the compiled-model cache's hit rate over them). A worker trial is
``ended - book_time`` (server clock: reservation to result written); its phases are the trial
document's ``timing``.

Sides (``--sides``): ``off`` (``--no-warm --steps-per-execution 1``, no compiled-model cache),
``on`` (``--warm --steps-per-execution 32``, no cache: issue 15's levers), ``reuse`` (``on``
plus the compiled-model cache, issue 20).

    .venv/bin/python bench/worker_overhead.py --rounds 8                      # issue 15
    .venv/bin/python bench/worker_overhead.py --space lecture_values --rounds 10
    .venv/bin/python bench/worker_overhead.py --space mnist_mlp --rounds 40 --after 30

``lecture_values`` (defined here, loaded with ``--spaces`` by the workers) is the lecture's model
(784-64-64-10 relu, RMSprop, batch 64) with its learning rate and rho searched: one
architecture, values varying. ``mlp_coarse`` (also here) is ``mnist_mlp`` with few shapes.
``KERAS_BACKEND=jax`` in the environment runs every side on JAX.

Targets: issue 15, on a warm worker the time outside steady-state training
(``trial - timing.steady_s``) <= 10 % of the trial (median); a cold worker's first trial no more
than 3 s slower than its later ones. Issue 20: ``lecture_values`` <= 10 % with ``reuse``;
``mnist_mlp`` after 30 trials, median share <= 25 %, the hit rate reported; no trial slower than
the bare fit of its model.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hyperopt import hp  # noqa: E402 - after the path: this file is also a --spaces file

from search_spaces.keras import keras_space  # noqa: E402
from search_spaces.mnist import MNIST_SETTINGS, build_mlp, mnist_data  # noqa: E402

#: worker options and environment per side. JAX's persistent compilation cache (on by default
#: for JAX workers) is off on every side: programs left by an earlier run would make misses
#: look cheap (bench/jax_compile_cache.py measures it)
_NO_DISK_CACHE = {"HYPERFLEET_COMPILE_CACHE": "off"}
SIDES: dict[str, tuple[tuple[str, ...], dict[str, str]]] = {
    "off": (
        ("--no-warm", "--steps-per-execution", "1"),
        {"HYPERFLEET_MODEL_CACHE": "0", **_NO_DISK_CACHE},
    ),
    "on": (
        ("--warm", "--steps-per-execution", "32"),
        {"HYPERFLEET_MODEL_CACHE": "0", **_NO_DISK_CACHE},
    ),
    "reuse": (("--warm", "--steps-per-execution", "32"), dict(_NO_DISK_CACHE)),
}


def _lecture_values(settings: Any) -> Any:
    return {
        "layers": [{"units": 64, "dropout": 0.0}, {"units": 64, "dropout": 0.0}],
        "activation": "relu",
        "optimizer": {
            "name": "rmsprop",
            "learning_rate": hp.loguniform("lr", -9.2, -4.6),
            "rho": hp.uniform("rho", 0.8, 0.99),
        },
        "batch_size": 64,
    }


def _mlp_coarse(settings: Any) -> Any:
    """The remedy docs/keras.md offers: shape choices few (2 depths x 3 widths, one batch size,
    2 optimizers: 12 architectures), values free."""
    width = hp.choice("units", [64, 128, 256])
    dropout = hp.uniform("dropout", 0.0, 0.5)
    return {
        "layers": hp.choice(
            "depth",
            [[{"units": width, "dropout": dropout}], [{"units": width, "dropout": dropout}] * 2],
        ),
        "activation": "relu",
        "optimizer": hp.choice(
            "optimizer",
            [
                {
                    "name": "adam",
                    "learning_rate": hp.loguniform("adam_lr", -9.2, -4.6),
                    "beta_1": hp.uniform("beta_1", 0.8, 0.95),
                },
                {
                    "name": "rmsprop",
                    "learning_rate": hp.loguniform("rmsprop_lr", -9.2, -4.6),
                    "rho": hp.uniform("rho", 0.8, 0.99),
                },
            ],
        ),
        "batch_size": 128,
    }


mlp_coarse = keras_space(
    "mlp_coarse",
    _mlp_coarse,
    build_mlp,
    mnist_data,
    MNIST_SETTINGS,
    "mnist_mlp with few shapes (12 architectures), values free: the reuse remedy",
)
lecture_values = keras_space(
    "lecture_values",
    _lecture_values,
    build_mlp,
    mnist_data,
    MNIST_SETTINGS,
    "the lecture's model with RMSprop's learning rate and rho searched (one architecture)",
)
PHASES = (
    "import_s",
    "data_s",
    "build_s",
    "first_step_s",
    "first_val_step_s",
    "validate_s",
    "compile_s",
    "steady_s",
    "save_s",
    "wait_child_s",
)


def bare_server(threads: int) -> None:
    """A warm plain process: for each JSON params line on stdin, build, compile and fit that
    model like a Keras user would (``steps_per_execution`` 1), print the seconds."""
    from worker.environment import pin_devices

    pin_devices(None, threads)
    import keras  # noqa: F401 - imported before timing starts

    from search_spaces.keras.values import plain_copy

    print("ready", flush=True)
    for line in sys.stdin:
        job = json.loads(line)
        params, settings = job["params"], job["settings"]
        started = time.perf_counter()
        # build_mlp's dropout is a value layer: the bare model is its plain-Keras copy
        model = plain_copy(
            build_mlp(params, settings),
            params["optimizer"],
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy"],
        )
        splits = mnist_data(tuple(model.input_shape[1:]), settings)
        model.fit(
            *splits.train,
            batch_size=int(params["batch_size"]),
            epochs=int(settings["epochs"]),
            validation_data=splits.validation,
            verbose=0,
        )
        print(json.dumps(time.perf_counter() - started), flush=True)


def start_worker(uri: str, db: str, threads: int, side: str) -> subprocess.Popen:
    levers, side_env = SIDES[side]
    env = {k: v for k, v in os.environ.items() if not k.startswith("HYPERFLEET_")}
    env.update(side_env, TF_CPP_MIN_LOG_LEVEL="2")
    cmd = [sys.executable, "-m", "coordinator", "--log-level", "warning", "worker"]
    cmd += ["--mongo", uri, "--db", db, "--threads", str(threads), "--save-models", "best"]
    cmd += ["--spaces", str(Path(__file__).resolve())]
    return subprocess.Popen([*cmd, *levers], cwd=ROOT, env=env)


def run(
    space_name: str, sides: list[str], rounds: int, epochs: int, train_size: int, threads: int
) -> dict[str, Any]:
    from coordinator.search import Coordinator, SearchConfig
    from coordinator.server import EmbeddedServer
    from coordinator.store import connect
    from search_spaces import get_space, load_spaces

    load_spaces(str(Path(__file__).resolve()))
    space = get_space(space_name)
    settings = space.resolve_settings({"epochs": epochs, "train_size": train_size})
    bare_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    bare = subprocess.Popen(
        [sys.executable, __file__, "--bare-server", f"--threads={threads}"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=bare_env,
    )
    assert bare.stdin is not None and bare.stdout is not None
    with tempfile.TemporaryDirectory(prefix="hf-bench-") as tmp, EmbeddedServer(tmp) as srv:
        stores = {side: connect(srv.uri, f"bench_{side}") for side in sides}
        # each worker starts when its first search does: a warming worker warms for the
        # running experiment (its space and settings) before it reserves the first trial
        workers: list[subprocess.Popen] = []
        bare.stdout.readline()  # "ready": imports done
        bare_s: list[float] = []
        try:
            for r in range(rounds):
                for side in sides:
                    config = SearchConfig(
                        space=space,
                        settings=settings,
                        exp_key="bench",
                        max_evals=r + 1,
                        queue_len=1,
                        seed=0,
                    )
                    if r == 0:
                        workers.append(start_worker(srv.uri, f"bench_{side}", threads, side))
                    Coordinator(stores[side], config).run()
                    if side == sides[0]:  # the bare fit sits between the workers' trials
                        params = stores[side].trials("bench")[-1]["params"]
                        bare.stdin.write(json.dumps({"params": params, "settings": settings}))
                        bare.stdin.write("\n")
                        bare.stdin.flush()
                        bare_s.append(json.loads(bare.stdout.readline()))
                print(f"round {r + 1}/{rounds} done", file=sys.stderr, flush=True)
        finally:
            for w in workers:
                w.terminate()
            for w in workers:
                w.wait(30)
            bare.stdin.close()
            bare.wait(30)
        trials = {side: stores[side].trials("bench") for side in sides}
    return {"bare": bare_s, "trials": trials}


def describe(trial: dict[str, Any]) -> dict[str, float]:
    timing = dict(trial["timing"])
    timing["wall_s"] = (trial["ended"] - trial["book_time"]).total_seconds()
    timing["outside_s"] = timing["wall_s"] - timing["steady_s"]
    return timing


def report(raw: dict[str, Any], args: argparse.Namespace, load: tuple[float, float]) -> None:
    """Print the table from ``raw``: ``bare`` seconds and each side's described trials."""
    med = statistics.median
    sides = [s for s in SIDES if s in raw]
    skip = max(args.after, 1)  # round 0 (first trials) is never in the medians
    rows = {side: raw[side] for side in sides}
    bare_later = raw["bare"][skip:]
    print(
        f"{args.space} (TPE seed 0), train_size {args.train_size}, {args.epochs} epochs, "
        f"{raw.get('backend', 'tensorflow')} CPU, {args.threads} threads, --save-models best, "
        f"{len(raw['bare'])} rounds (medians over rounds {skip + 1}-{len(raw['bare'])}); load "
        f"average before/after: {load[0]:.1f} / {load[1]:.1f} on {os.cpu_count()} cores"
    )
    names = ("wall_s", *PHASES, "outside_s", "compile_reused", "compile_cache_size")
    print(f"{'median s':>18} " + " ".join(f"{s:>9}" for s in sides))
    for name in names:
        cells = (med(r.get(name, 0.0) for r in rows[s][skip:]) for s in sides)
        print(f"{name:>18} " + " ".join(f"{c:>9.3f}" for c in cells))
    print(f"{'bare fit s':>18} {med(bare_later):>9.3f}")
    for side in sides:
        later = rows[side][skip:]
        ratios = [r["wall_s"] / b for r, b in zip(later, bare_later, strict=False)]
        outside = med(r["outside_s"] / r["wall_s"] for r in later)
        hits = sum(1 for r in later if r.get("compile_reused"))
        first = rows[side][0]
        # the first trial's extra fixed cost (outside steady training): robust to load swings
        # that slow its training; the wall-clock difference is printed beside it
        cold = first["outside_s"] - med(r["outside_s"] for r in later)
        wall = first["wall_s"] - med(r["wall_s"] for r in later)
        print(
            f"{side:>5}: trial/bare median {med(ratios):.3f}, max {max(ratios):.3f}; outside "
            f"steady training {outside:.1%} of the trial; compile reused in {hits}/{len(later)} "
            f"trials; first trial's fixed cost = later + {cold:.2f} s (wall "
            f"{first['wall_s']:.2f} s = later + {wall:.2f} s; import {first['import_s']:.2f} s, "
            f"data {first['data_s']:.2f} s, first step {first['first_step_s']:.2f} s)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--space", default="mnist_mlp")
    parser.add_argument("--sides", default="off,on", help="comma-separated: off, on, reuse")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument(
        "--after", type=int, default=1, help="medians and hit rate over the trials after N"
    )
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--train-size", type=int, default=10_000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the raw trial timings here")
    parser.add_argument(
        "--from-json", type=Path, help="only print the table of an earlier run's --json file"
    )
    parser.add_argument(
        "--model-cache",
        type=int,
        help="the reuse side's compiled-model cache size (HYPERFLEET_MODEL_CACHE; default 8)",
    )
    parser.add_argument("--bare-server", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.model_cache is not None:
        levers, _ = SIDES["reuse"]
        SIDES["reuse"] = (
            levers,
            {"HYPERFLEET_MODEL_CACHE": str(max(args.model_cache, 0)), **_NO_DISK_CACHE},
        )
    if args.bare_server:
        bare_server(args.threads)
        return
    if args.from_json is not None:
        raw = json.loads(args.from_json.read_text())
        report(raw, args, tuple(raw.get("load", (float("nan"), float("nan")))))
        return
    sides = [s.strip() for s in args.sides.split(",") if s.strip()]
    unknown = sorted(set(sides) - set(SIDES))
    if unknown or args.after >= args.rounds:
        parser.error(f"--sides: unknown {unknown}" if unknown else "--after must be < --rounds")
    before = os.getloadavg()[0]
    data = run(args.space, sides, args.rounds, args.epochs, args.train_size, args.threads)
    load = (before, os.getloadavg()[0])
    raw = {
        "bare": data["bare"],
        "load": load,
        "backend": os.environ.get("KERAS_BACKEND", "tensorflow"),
        **{s: [describe(t) for t in ts] for s, ts in data["trials"].items()},
    }
    report(raw, args, load)
    if args.json is not None:
        args.json.write_text(json.dumps(raw, indent=1))


if __name__ == "__main__":
    main()
