"""Issue 21: a Keras trial's checkpoint holds its model's variables (seed state included), its
optimizer's state and the epoch; it restores into a model of the same architecture only, and
never unpickles anything."""

from __future__ import annotations

import io
import pickle

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from coordinator.errors import CheckpointRefused  # noqa: E402
from search_spaces.keras.checkpoint import keras_state, restore_keras_state  # noqa: E402


def _model(width: int = 8, seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(width, activation="relu"),
            keras.layers.Dropout(0.3),
            keras.layers.Dense(1),
        ]
    )
    model.compile(keras.optimizers.Adam(1e-2), "mse")
    return model


def _data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype("float32")
    return x, (x.sum(axis=1, keepdims=True) > 0).astype("float32")


def _values(variables) -> list[np.ndarray]:
    return [np.array(keras.ops.convert_to_numpy(v)) for v in variables]


def test_a_restored_model_continues_exactly_where_the_saved_one_was() -> None:
    x, y = _data()
    trained = _model(seed=1)
    trained.fit(x, y, epochs=2, batch_size=16, verbose=0, shuffle=False)
    data = keras_state(trained, 2)

    fresh = _model(seed=2)  # other initial weights, an unbuilt optimizer
    assert restore_keras_state(fresh, data) == 2
    for a, b in zip(_values(trained.variables), _values(fresh.variables), strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(
        _values(trained.optimizer.variables), _values(fresh.optimizer.variables), strict=True
    ):
        np.testing.assert_array_equal(a, b)
    # one more epoch of each, same data order: the same weights (the optimizer's moments and
    # step count came along, and so did the dropout layer's seed state)
    trained.fit(x, y, epochs=1, batch_size=16, verbose=0, shuffle=False)
    fresh.fit(x, y, epochs=1, batch_size=16, verbose=0, shuffle=False)
    for a, b in zip(_values(trained.weights), _values(fresh.weights), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_another_architecture_or_junk_is_refused_and_changes_nothing() -> None:
    data = keras_state(_model(width=8), 1)
    other = _model(width=16)
    before = _values(other.variables)
    with pytest.raises(CheckpointRefused, match="another architecture"):
        restore_keras_state(other, data)
    for a, b in zip(before, _values(other.variables), strict=True):
        np.testing.assert_array_equal(a, b)

    same = _model(width=8, seed=3)
    before = _values(same.variables)
    for junk, reason in (
        (b"", "not a Keras checkpoint"),
        (b"PK\x03\x04" + b"\0" * 100, "not a Keras checkpoint"),
        (data[:20], "header runs past its end"),
        (data[: len(data) // 2], "do not add up"),
        (data + b"\0", "do not add up"),
        (keras_state(_model(width=8), -1), "epoch"),
    ):
        with pytest.raises(CheckpointRefused, match=reason):
            restore_keras_state(same, junk)
    for a, b in zip(before, _values(same.variables), strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_checkpoint_holding_a_pickle_is_refused_without_running_it() -> None:
    class Boom:
        def __reduce__(self):
            return (pytest.fail, ("the checkpoint ran code",))

    buffer = io.BytesIO()
    np.savez(buffer, header=np.array([Boom()], dtype=object))
    with pytest.raises(CheckpointRefused, match="not a Keras checkpoint"):
        restore_keras_state(_model(), buffer.getvalue())
    assert pickle  # the payload above is a real pickle: np.load refuses it (allow_pickle=False)
