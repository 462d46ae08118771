"""A trained Keras trial keeps its result whatever becomes of its model (found by a new user's
review): a model with a ``Lambda`` layer and value hyperparameters is saved (its plain copy is
rebuilt from this process's own config), a model Keras cannot pack is not saved and the trial
says why, and ``best --evaluate`` of a saved model that needs Keras's unsafe mode is refused in
one line instead of a traceback.

Real Keras trials (256 images, 1 epoch) in this process; the context is a small stand-in for the
worker's that keeps attachments in a dict (the worker path is tests/worker/)."""

from __future__ import annotations

from typing import Any

import pytest

keras = pytest.importorskip("keras")

from coordinator.cli.best import evaluate_model  # noqa: E402
from coordinator.errors import ConfigError  # noqa: E402
from search_spaces import get_space  # noqa: E402
from search_spaces.keras.training import run_trial  # noqa: E402
from search_spaces.mnist import mnist_data  # noqa: E402


class Ctx:
    def __init__(self, tid: int) -> None:
        self.tid, self.attempt, self.exp_key = tid, 0, "save"
        self.info: dict[str, Any] = {"save_models": "all"}
        self.settings = get_space("mnist_mlp").resolve_settings(
            {"epochs": 1, "train_size": 256, "val_size": 128}
        )
        self.attached: dict[str, bytes] = {}

    def report_epoch(self, metrics: dict) -> None:
        return None

    def should_stop(self) -> bool:
        return False

    def attach(self, name: str, data: bytes) -> None:
        self.attached[name] = data

    def best_loss(self) -> None:
        return None

    def drop_superseded_models(self, name: str, worse_than: float) -> int:
        return 0

    def load_checkpoint(self, restore: Any = None) -> None:
        return None

    def save_checkpoint(self, epoch: int, data: bytes) -> None:
        pass


PARAMS = {"optimizer": {"name": "adam", "learning_rate": 1e-3}, "batch_size": 64}


def _with_lambda(params: Any, settings: Any) -> Any:
    from search_spaces.keras import values

    return keras.Sequential(
        [
            keras.Input((784,)),
            keras.layers.Lambda(lambda x: x * 2.0),
            keras.layers.Dense(16, activation="relu"),
            values.Dropout(0.2),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )


class Unsavable(keras.layers.Layer):
    """A layer whose config Keras cannot write (an extra ``__init__`` argument, no
    ``get_config``): ``model.save`` raises."""

    def __init__(self, scale: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.scale = scale

    def call(self, x: Any) -> Any:
        return x * self.scale

    def get_config(self) -> dict:
        raise NotImplementedError("Unsavable has no config")


def _unsavable(params: Any, settings: Any) -> Any:
    return keras.Sequential(
        [keras.Input((784,)), Unsavable(0.5), keras.layers.Dense(10, activation="softmax")]
    )


def test_a_lambda_model_with_value_dropout_is_trained_and_saved() -> None:
    ctx = Ctx(1)
    result = run_trial(PARAMS, ctx, build_model=_with_lambda, data=mnist_data)
    assert result["status"] == "ok" and result["model_saved"] is True
    assert "model_save_error" not in result and ctx.attached
    assert result["compiled"]["reused"] is False and "Lambda" in result["compiled"]["why_not"]


def test_a_model_keras_cannot_save_keeps_its_result_and_says_why() -> None:
    ctx = Ctx(2)
    result = run_trial(PARAMS, ctx, build_model=_unsavable, data=mnist_data)
    assert result["status"] == "ok" and result["model_saved"] is False
    assert result["loss"] == result["val_loss"] and result["epochs_run"] == 1
    assert result["model_save_error"].startswith("NotImplementedError")
    assert not ctx.attached


def test_best_evaluate_refuses_a_model_that_needs_unsafe_mode_in_one_line() -> None:
    ctx = Ctx(3)
    run_trial(PARAMS, ctx, build_model=_with_lambda, data=mnist_data)
    (data,) = ctx.attached.values()
    exp = {"_id": "save", "space": "mnist_mlp", "settings": {"train_size": 256}}
    with pytest.raises(ConfigError) as refused:
        evaluate_model(None, exp, 3, data)  # type: ignore[arg-type] - the store is not read
    message = str(refused.value)
    assert "\n" not in message and "safe mode" in message and "trial 3" in message
