"""The Keras MNIST spaces: lazy imports, settings, the real MNIST data and the models they build."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hyperopt import space_eval
from hyperopt.pyll import stochastic

from coordinator.errors import ConfigError
from search_spaces import get_space
from search_spaces.keras.data import load_mnist, mnist_splits
from tests.conftest import ROOT, cli_env, hyperfleet

SPACES = ("mnist_mlp", "mnist_cnn", "mnist_lecture")
LECTURE_VAL_ACCURACY = 0.9593  # the lecture's second-epoch validation accuracy


def test_importing_the_spaces_does_not_import_keras() -> None:
    code = (
        "import sys; from search_spaces import available_spaces; available_spaces(); "
        "print(sorted(m for m in ('keras', 'tensorflow', 'jax') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=cli_env()
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_spaces_are_listed_with_their_settings() -> None:
    out = hyperfleet("spaces", timeout=60)
    assert out.returncode == 0, out.stderr
    for name in SPACES:
        assert f"{name}: " in out.stdout
    assert "--set epochs=2 [int]" in out.stdout
    assert "--set objective='val_loss' [str] (one of val_loss, val_error)" in out.stdout


def test_settings_defaults_and_bad_values() -> None:
    space = get_space("mnist_mlp")
    assert space.resolve_settings() == {
        "epochs": 2,
        "objective": "val_loss",
        "train_size": 50_000,
        "val_size": 10_000,
    }
    assert space.resolve_settings({"train_size": "1000"})["train_size"] == 1000
    with pytest.raises(ConfigError, match="objective='accuracy' must be one of"):
        space.resolve_settings({"objective": "accuracy"})
    with pytest.raises(ConfigError, match="train_size=.* must be <= 50000"):
        space.resolve_settings({"train_size": "60000"})
    # an int MongoDB cannot store is refused here, not as an OverflowError when it is saved
    with pytest.raises(ConfigError, match="epochs=.* does not fit in a 64-bit integer"):
        space.resolve_settings({"epochs": str(2**63)})
    assert space.resolve_settings({"epochs": str(2**63 - 1)})["epochs"] == 2**63 - 1


def test_mnist_in_keras_format_and_the_lecture_split() -> None:
    (x_train, y_train), (x_test, y_test) = load_mnist()
    assert x_train.shape == (60_000, 28, 28) and x_train.dtype == np.uint8
    assert y_train.shape == (60_000,) and y_train.dtype == np.uint8
    assert x_test.shape == (10_000, 28, 28) and y_test.shape == (10_000,)
    assert x_train.max() == 255 and set(np.unique(y_train)) == set(range(10))
    assert load_mnist() is load_mnist()  # loaded once per process

    splits = mnist_splits((784,), 1000, 10_000)
    x_fit, y_fit = splits.train
    x_val, y_val = splits.validation
    assert x_fit.shape == (1000, 784) and x_fit.dtype == np.float32
    assert x_fit.min() >= 0.0 and x_fit.max() <= 1.0
    np.testing.assert_array_equal(y_val, y_train[-10_000:])  # validation: the last 10,000
    np.testing.assert_array_equal(x_val[0], x_train[-10_000].reshape(784) / np.float32(255))
    assert mnist_splits((28, 28, 1), 10, 5).validation[0].shape == (5, 28, 28, 1)
    with pytest.raises(ConfigError, match="train_size=0"):
        mnist_splits((784,), 0, 10)


def test_sampled_params_decode_and_build_models() -> None:
    rng = np.random.default_rng(0)
    for name in SPACES:
        space = get_space(name)
        settings = space.resolve_settings()
        hp_space = space.hyperopt_space(settings)
        for _ in range(3):
            params = stochastic.sample(hp_space, rng=rng)
            assert params["optimizer"]["name"] in ("rmsprop", "adam", "sgd")
            assert params["batch_size"] in (32, 64, 128, 256)
            model = space.build_model(params, settings)
            assert model.output_shape == (None, 10)
            x, _ = space.data(tuple(model.input_shape[1:]), {**settings, "train_size": 4}).train
            assert model.predict(x, verbose=0).shape == (4, 10)
    lecture = get_space("mnist_lecture")
    params = space_eval(lecture.hyperopt_space({}), {"model": 0})
    model = lecture.build_model(params, lecture.resolve_settings())
    assert [layer.units for layer in model.layers] == [64, 64, 10]
    assert model.count_params() == 784 * 64 + 64 + 64 * 64 + 64 + 64 * 10 + 10


@pytest.mark.slow
def test_lecture_model_reproduces_the_lecture(tmp_path: Path) -> None:
    """The lecture's exact model, full MNIST, 2 epochs, through a worker: val accuracy ~0.9593."""
    out = hyperfleet(
        "local",
        "mnist_lecture",
        "--workers",
        "1",
        "--max-evals",
        "1",
        "--exp-key",
        "lecture",
        "--db-path",
        str(tmp_path / "db"),
        "--evaluate",
        timeout=600,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    val = float(re.search(r"validation accuracy: (\S+)", out.stdout)[1])
    test = float(re.search(r"test accuracy: (\S+)", out.stdout)[1])
    assert abs(val - LECTURE_VAL_ACCURACY) <= 0.01, out.stdout
    assert test > 0.94, out.stdout


def test_tensorflows_retracing_warning_is_dropped(caplog: pytest.LogCaptureFixture) -> None:
    """Every trial builds a new model, so every trial retraces: TensorFlow's warning about it
    (two per trial in worker logs, new-user review) says nothing a user can act on."""
    import logging

    import search_spaces.keras.training  # noqa: F401 - installs the filter

    tf_logger = logging.getLogger("tensorflow")
    with caplog.at_level(logging.WARNING, logger="tensorflow"):
        tf_logger.warning(
            "5 out of the last 5 calls to <function f> triggered tf.function retracing. "
            "Tracing is expensive"
        )
        tf_logger.warning("something else")
    assert [r.getMessage() for r in caplog.records] == ["something else"]
