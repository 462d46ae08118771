"""Keras spaces for the tests (loaded with ``--spaces``): a real Keras model whose loss is NaN
for some parameters, trained by the same runner as the built-in MNIST spaces."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hyperopt import hp

from search_spaces.keras import keras_space
from search_spaces.mnist import MNIST_SETTINGS, build_mlp, mnist_data


def _space(settings: Mapping[str, Any]) -> Any:
    return {
        "poison": hp.choice("poison", [False, True]),
        "layers": [{"units": 16, "dropout": 0.0}],
        "activation": "relu",
        "optimizer": {"name": "adam", "learning_rate": 1e-3},
        "batch_size": 64,
    }


def _build(params: Mapping[str, Any], settings: Mapping[str, Any]) -> Any:
    """The MLP, its outputs scaled by NaN when ``poison`` is drawn: the loss is NaN at once."""
    import keras

    mlp = build_mlp(params, settings)
    if not params["poison"]:
        return mlp
    return keras.Sequential(
        [keras.Input(shape=(784,)), *mlp.layers, keras.layers.Rescaling(float("nan"))],
        name="poisoned",
    )


keras_nan = keras_space(
    "keras_nan", _space, _build, mnist_data, MNIST_SETTINGS, "NaN loss when poison is drawn"
)
