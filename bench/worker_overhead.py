"""Worker overhead on Keras trials: a trial run by ``hyperfleet worker`` vs a bare ``model.fit``.

Both sides train the lecture's MNIST model (``mnist_lecture``: 784-64-64-10, RMSprop, batch 64)
on the same data for the same epochs with the same thread bound, warm (imports, data and a first
fit done before timing). The worker side is the whole trial as the database saw it: reserve ->
child process -> build, compile, fit with per-epoch reports to MongoDB -> save the model
(``--save-models``) -> result written (``ended - book_time``, server clock). The bare side is
``Sequential(...)``, ``compile``, ``fit(validation_data=...)`` in a plain process.

    .venv/bin/python bench/worker_overhead.py --repeats 3 --epochs 2 --threads 2

Prints both medians and their ratio (target: <= 1.05 on CPU).
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def bare(epochs: int, train_size: int, repeats: int, threads: int) -> list[float]:
    """Seconds per bare build+compile+fit, after one untimed warm-up fit."""
    from worker.environment import pin_devices

    pin_devices(None, threads)
    import keras
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    from search_spaces.keras.data import mnist_splits

    splits = mnist_splits((784,), train_size, 10_000)

    def fit_once() -> float:
        started = time.perf_counter()
        model = keras.Sequential(
            [
                keras.Input(shape=(784,)),
                keras.layers.Dense(64, activation="relu"),
                keras.layers.Dense(64, activation="relu"),
                keras.layers.Dense(10, activation="softmax"),
            ]
        )
        model.compile(
            optimizer=keras.optimizers.RMSprop(learning_rate=0.001),
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy"],
        )
        model.fit(
            *splits.train,
            batch_size=64,
            epochs=epochs,
            validation_data=splits.validation,
            verbose=0,
        )
        return time.perf_counter() - started

    fit_once()
    return [fit_once() for _ in range(repeats)]


def through_worker(
    epochs: int, train_size: int, repeats: int, threads: int, save_models: str
) -> list[dict[str, float]]:
    """Per-trial timings of ``repeats`` trials run by one warm worker (a first trial warms it)."""
    from coordinator.search import Coordinator, SearchConfig
    from coordinator.server import EmbeddedServer
    from coordinator.store import connect
    from search_spaces import get_space

    space = get_space("mnist_lecture")
    settings = space.resolve_settings({"epochs": epochs, "train_size": train_size})
    with tempfile.TemporaryDirectory(prefix="hf-bench-") as tmp, EmbeddedServer(tmp) as srv:
        store = connect(srv.uri, "bench")
        env = {k: v for k, v in os.environ.items() if not k.startswith("HYPERFLEET_")}
        worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "coordinator",
                "--log-level",
                "warning",
                "worker",
                "--mongo",
                srv.uri,
                "--db",
                "bench",
                "--exp-key",
                "bench",
                "--threads",
                str(threads),
                "--save-models",
                save_models,
            ],
            cwd=ROOT,
            env=env,
        )
        try:
            config = SearchConfig(
                space=space,
                settings=settings,
                exp_key="bench",
                max_evals=repeats + 1,
                queue_len=1,
                seed=0,
            )
            Coordinator(store, config).run()
            worker.wait(60)
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
        docs = store.trials("bench")
        return [
            {
                "wall": (d["ended"] - d["book_time"]).total_seconds(),
                "evaluate": d["duration_s"],
                "fit": d["result"]["train_seconds"],
            }
            for d in docs[1:]
        ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--train-size", type=int, default=50_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--save-models", default="best", choices=("best", "all", "none"))
    parser.add_argument("--bare-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare_only:
        print(json.dumps(bare(args.epochs, args.train_size, args.repeats, args.threads)))
        return

    trials = through_worker(
        args.epochs, args.train_size, args.repeats, args.threads, args.save_models
    )
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--bare-only",
            f"--epochs={args.epochs}",
            f"--train-size={args.train_size}",
            f"--repeats={args.repeats}",
            f"--threads={args.threads}",
        ],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    bare_s = json.loads(out.stdout.strip().splitlines()[-1])
    wall = [t["wall"] for t in trials]
    print(
        f"mnist_lecture, {args.epochs} epochs, train_size {args.train_size}, "
        f"{args.threads} threads, --save-models {args.save_models}, {args.repeats} timed runs each"
    )
    header = ("run", "worker trial s", "(in objective)", "(fit)", "bare fit s")
    print("{:>4} {:>15} {:>15} {:>8} {:>11}".format(*header))
    for i, (t, b) in enumerate(zip(trials, bare_s, strict=False), start=1):
        print(f"{i:>4} {t['wall']:>15.3f} {t['evaluate']:>15.3f} {t['fit']:>8.3f} {b:>11.3f}")
    ratio = statistics.median(wall) / statistics.median(bare_s)
    print(
        f"median: worker {statistics.median(wall):.3f} s, bare {statistics.median(bare_s):.3f} s, "
        f"ratio {ratio:.3f} (target <= 1.05)"
    )
    inside = statistics.median(t["wall"] / t["fit"] for t in trials)
    extra = statistics.median(t["wall"] - t["fit"] for t in trials)
    print(
        f"within each worker trial: {extra:.3f} s outside model.fit, trial/fit ratio {inside:.3f} "
        "(robust to load from other processes; the fit itself includes the per-epoch reports)"
    )


if __name__ == "__main__":
    main()
