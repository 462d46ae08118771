"""What a shape-free train step costs in steady training (issue 20: widths as values).

    python bench/shape_free_step.py [--repeats 3] [--train-size 10000] [--epochs 4]

On TensorFlow without XLA the compiled-model cache makes a cached MLP's weights and optimizer
slots variables of unknown shape (``search_spaces.keras.compiled.settle``), so one traced step
serves every width. This measures whether such a step trains slower than the usual fixed-shape
one: for each of four MLPs (widths, batch size), the same model with the same seed is built,
compiled and fitted with fixed shapes and shape-free, alternately, ``--repeats`` times on random
data; it prints the fastest steady epoch (epochs after the first) of each and their ratio.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

#: (widths, batch size): small and wide, one and three layers
MODELS = (((64, 64), 64), ((512, 256), 128), ((256,), 32), ((32, 128, 512), 256))


def steady_epoch_s(widths: tuple[int, ...], batch: int, free: bool, args: argparse.Namespace):
    import keras
    import numpy as np

    from search_spaces.keras import values
    from search_spaces.keras.compiled import CompiledModels, Prepared, settle

    rng = np.random.default_rng(0)
    x = rng.random((args.train_size, 784), dtype=np.float32)
    y = rng.integers(0, 10, args.train_size)
    keras.utils.set_random_seed(1)
    hidden = [keras.layers.Dense(u, activation="relu") for u in widths]
    model = keras.Sequential(
        [keras.Input((784,)), *hidden, keras.layers.Dense(10, activation="softmax")]
    )
    optimizer, _ = values.make_optimizer({"name": "adam", "learning_rate": 1e-3})
    model.compile(
        optimizer=optimizer,
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
        steps_per_execution=32,
    )
    model._symbolic_build(data_batch=(x[:batch], y[:batch]))
    if free:
        prepared = Prepared(model, False, "bench", "", unsettled=True)
        settle(prepared, CompiledModels(1))
        if not prepared.widths_free or prepared.reason:
            raise SystemExit(f"the model was not made shape-free: {prepared.reason}")
    epochs: list[float] = []

    class Clock(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: object = None) -> None:
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: object = None) -> None:
            epochs.append(time.perf_counter() - self.started)

    model.fit(
        x, y, batch_size=batch, epochs=args.epochs, verbose=0, shuffle=False, callbacks=[Clock()]
    )
    return min(epochs[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--train-size", type=int, default=10_000)
    parser.add_argument("--epochs", type=int, default=4, help="at least 2")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if args.epochs < 2 or args.repeats < 1 or args.train_size < 256:
        parser.error("--epochs >= 2, --repeats >= 1 and --train-size >= 256")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras

    if keras.backend.backend() != "tensorflow":
        parser.error("shape-free steps are a TensorFlow thing: run with KERAS_BACKEND=tensorflow")
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    load = os.getloadavg()[0]
    print(
        f"{args.train_size} images, {args.epochs} epochs, {args.threads} threads, load {load:.1f}"
    )
    print(f"{'model':>26}  {'fixed s':>8}  {'free s':>8}  free/fixed")
    for widths, batch in MODELS:
        best = {False: float("inf"), True: float("inf")}
        for _ in range(args.repeats):
            for free in (False, True):
                best[free] = min(best[free], steady_epoch_s(widths, batch, free, args))
        name = f"{'-'.join(map(str, widths))}, batch {batch}"
        print(f"{name:>26}  {best[False]:8.4f}  {best[True]:8.4f}  {best[True] / best[False]:.3f}")
    print(f"load after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
