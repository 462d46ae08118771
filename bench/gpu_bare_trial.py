"""One bare-Keras trial in a fresh process: the lecture's MLP, ``--epochs`` epochs, no hyperfleet.

The GPU-packing baseline of bench/gpu.sh starts one of these per trial (imports, data and XLA
compilation included, as a script-per-trial search would pay them). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time

started = time.perf_counter()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    import keras

    from search_spaces.keras.data import mnist_splits

    splits = mnist_splits((784,), 50_000, 10_000)
    model = keras.Sequential(
        [
            keras.Input((784,)),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile("rmsprop", "sparse_categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(
        *splits.train,
        batch_size=64,
        epochs=args.epochs,
        validation_data=splits.validation,
        verbose=0,
    )
    print(
        json.dumps(
            {
                "seconds": round(time.perf_counter() - started, 2),
                "val_loss": float(history.history["val_loss"][-1]),
            }
        )
    )


if __name__ == "__main__":
    main()
