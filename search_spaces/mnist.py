"""Keras MNIST spaces: the lecture's dense network made searchable, a small conv net, and the
lecture's exact model as a one-point space (a baseline and a reproduction check).

All three share the data (``search_spaces.keras.data``) and the training
(``search_spaces.keras.training``); they differ only in their hyperopt space and ``build_model``.
Validation is the last 10,000 training images, as in the lecture; the test set only evaluates the
best model (``hyperfleet best --evaluate``), it never selects one. Keras is imported in the
process that runs trials, not here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from hyperopt import hp

from search_spaces.base import Setting
from search_spaces.keras import TRAINING_SETTINGS, keras_space

MNIST_SETTINGS = (
    *TRAINING_SETTINGS,
    Setting(
        "train_size",
        50_000,
        "train on the first N of the 50,000 training images",
        int,
        min=1,
        max=50_000,
    ),
    Setting(
        "val_size",
        10_000,
        "validate on the last N of the 10,000 validation images (the lecture: all)",
        int,
        min=1,
        max=10_000,
    ),
)

ACTIVATIONS = ("relu", "tanh", "elu")
BATCH_SIZES = (32, 64, 128, 256)
UNITS = (32, 64, 128, 256, 512)

#: the lecture's model: 784 -> Dense 64 relu -> Dense 64 relu -> Dense 10 softmax, RMSprop, batch 64
LECTURE_PARAMS: dict[str, Any] = {
    "layers": [{"units": 64, "dropout": 0.0}, {"units": 64, "dropout": 0.0}],
    "activation": "relu",
    "optimizer": {"name": "rmsprop", "learning_rate": 0.001, "rho": 0.9},
    "batch_size": 64,
}


def _loguniform(label: str, low: float, high: float) -> Any:
    return hp.loguniform(label, math.log(low), math.log(high))


def optimizer_space() -> Any:
    """A nested choice: each optimizer with its own learning-rate range and parameters."""
    return hp.choice(
        "optimizer",
        [
            {
                "name": "rmsprop",
                "learning_rate": _loguniform("rmsprop_lr", 1e-4, 1e-2),
                "rho": hp.uniform("rmsprop_rho", 0.8, 0.99),
            },
            {
                "name": "adam",
                "learning_rate": _loguniform("adam_lr", 1e-4, 1e-2),
                "beta_1": hp.uniform("adam_beta_1", 0.8, 0.95),
            },
            {
                "name": "sgd",
                "learning_rate": _loguniform("sgd_lr", 1e-3, 3e-1),
                "momentum": hp.uniform("sgd_momentum", 0.0, 0.95),
                "nesterov": hp.choice("sgd_nesterov", [False, True]),
            },
        ],
    )


def _dense_layers(depth: int) -> list[dict[str, Any]]:
    return [
        {
            "units": hp.choice(f"units_{depth}_{i}", UNITS),
            "dropout": hp.uniform(f"dropout_{depth}_{i}", 0.0, 0.5),
        }
        for i in range(1, depth + 1)
    ]


def _mlp_space(settings: Mapping[str, Any]) -> Any:
    return {
        "layers": hp.choice("layers", [_dense_layers(d) for d in (1, 2, 3)]),
        "activation": hp.choice("activation", ACTIVATIONS),
        "optimizer": optimizer_space(),
        "batch_size": hp.choice("batch_size", BATCH_SIZES),
    }


def _cnn_space(settings: Mapping[str, Any]) -> Any:
    return {
        "conv": hp.choice(
            "conv",
            [
                [{"filters": hp.choice("filters_1_1", (16, 32, 64))}],
                [
                    {"filters": hp.choice("filters_2_1", (16, 32))},
                    {"filters": hp.choice("filters_2_2", (32, 64))},
                ],
            ],
        ),
        "dense_units": hp.choice("dense_units", (64, 128, 256)),
        "dropout": hp.uniform("dropout", 0.0, 0.5),
        "activation": hp.choice("activation", ACTIVATIONS),
        "optimizer": optimizer_space(),
        "batch_size": hp.choice("batch_size", BATCH_SIZES),
    }


def _lecture_space(settings: Mapping[str, Any]) -> Any:
    return hp.choice("model", [LECTURE_PARAMS])


def build_mlp(params: Mapping[str, Any], settings: Mapping[str, Any]) -> Any:
    """Dense layers on the flattened 784 pixels (the lecture's architecture family). Shape:
    depth, units, activation; value: dropout rates (a rate of 0 is no dropout layer)."""
    import keras

    from search_spaces.keras.values import Dropout

    layers: list[Any] = [keras.Input(shape=(784,))]
    for layer in params["layers"]:
        layers.append(keras.layers.Dense(int(layer["units"]), activation=params["activation"]))
        if layer["dropout"] > 0:
            layers.append(Dropout(layer["dropout"]))
    layers.append(keras.layers.Dense(10, activation="softmax"))
    return keras.Sequential(layers, name="mnist_mlp")


def build_cnn(params: Mapping[str, Any], settings: Mapping[str, Any]) -> Any:
    """1-2 conv+pool blocks, one dense layer, softmax. Shape: blocks, filters, units,
    activation; value: the dropout rate (0 is no dropout layer)."""
    import keras

    from search_spaces.keras.values import Dropout

    layers: list[Any] = [keras.Input(shape=(28, 28, 1))]
    for block in params["conv"]:
        layers.append(
            keras.layers.Conv2D(int(block["filters"]), 3, activation=params["activation"])
        )
        layers.append(keras.layers.MaxPooling2D(2))
    layers.append(keras.layers.Flatten())
    if params["dropout"] > 0:
        layers.append(Dropout(params["dropout"]))
    layers.append(keras.layers.Dense(int(params["dense_units"]), activation=params["activation"]))
    layers.append(keras.layers.Dense(10, activation="softmax"))
    return keras.Sequential(layers, name="mnist_cnn")


def mnist_data(input_shape: tuple[int, ...], settings: Mapping[str, Any]) -> Any:
    """The MNIST splits shaped for a model with ``input_shape`` (cached per worker process)."""
    from search_spaces.keras.data import mnist_splits

    return mnist_splits(tuple(input_shape), settings["train_size"], settings["val_size"])


mnist_mlp = keras_space(
    "mnist_mlp",
    _mlp_space,
    build_mlp,
    mnist_data,
    MNIST_SETTINGS,
    "Keras MLP on MNIST: 1-3 dense layers, units, activation, dropout, optimizer, batch size",
)
mnist_cnn = keras_space(
    "mnist_cnn",
    _cnn_space,
    build_cnn,
    mnist_data,
    MNIST_SETTINGS,
    "Keras conv net on MNIST: 1-2 conv blocks, dense units, dropout, optimizer, batch size",
)
mnist_lecture = keras_space(
    "mnist_lecture",
    _lecture_space,
    build_mlp,
    mnist_data,
    MNIST_SETTINGS,
    "a fixed reference MNIST model (one point: 64-64 relu, RMSprop, batch 64), a baseline",
)
