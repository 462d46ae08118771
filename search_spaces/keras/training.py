"""Train one Keras trial: compile, fit, report each epoch, keep the best model.

Imported lazily by Keras spaces' objectives, so Keras loads in the worker's long-lived trial
process once and stays loaded with the data (:mod:`search_spaces.keras.data`) across trials.

Everything the runner needs from the worker goes through the ``ctx`` it is given
(:class:`search_spaces.base.TrialContext`). :class:`EpochReporter` is a thin adapter: it forwards
each epoch's metrics to ``ctx.report_epoch`` and stops training when the verdict it answers (or
``ctx.should_stop()``) says so; whether to stop — a pruning rule, a cancel, a lost lease — is the
context's decision. A pruned trial's model is never saved.
Divergence is Keras's own ``TerminateOnNaN``; the result then says STATUS_FAIL with the reason.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import keras
from hyperopt import STATUS_FAIL, STATUS_OK

from coordinator.defaults import MODEL_ATTACHMENT, SAVE_MODE
from coordinator.states import Verdict
from search_spaces.base import TrialContext

if TYPE_CHECKING:
    from search_spaces.keras.space import BuildModel, LoadData

logger = logging.getLogger(__name__)

__all__ = ["EpochReporter", "devices", "make_optimizer", "model_bytes", "run_trial"]


def _bound_tensorflow_threads() -> None:
    """Apply ``--threads`` (TF_NUM_*_THREADS, set by ``pin_devices``) to TensorFlow's pools."""
    if keras.backend.backend() != "tensorflow":
        return  # JAX/XLA and torch read XLA_FLAGS / OMP_NUM_THREADS themselves
    import tensorflow as tf

    intra = os.environ.get("TF_NUM_INTRAOP_THREADS")
    inter = os.environ.get("TF_NUM_INTEROP_THREADS")
    try:
        if intra:
            tf.config.threading.set_intra_op_parallelism_threads(int(intra))
        if inter:
            tf.config.threading.set_inter_op_parallelism_threads(int(inter))
    except RuntimeError:
        logger.warning("TensorFlow was already initialised; --threads applies to new processes")


_bound_tensorflow_threads()


class EpochReporter(keras.callbacks.Callback):
    """Forward each epoch's metrics to ``ctx``; stop training when ``ctx`` says so."""

    def __init__(self, ctx: TrialContext) -> None:
        super().__init__()
        self.ctx = ctx
        self.stopped = False
        self.verdict = Verdict.CONTINUE  #: the last verdict ``ctx.report_epoch`` answered
        self._started = 0.0

    def on_epoch_begin(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        self._started = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        metrics: dict[str, Any] = {"epoch": epoch + 1}
        metrics.update({k: float(v) for k, v in (logs or {}).items()})
        metrics["seconds"] = round(time.perf_counter() - self._started, 4)
        self.verdict = self.ctx.report_epoch(metrics)
        if self.verdict is not Verdict.CONTINUE or self.ctx.should_stop():
            self.stopped = True
            self.model.stop_training = True


def make_optimizer(spec: Mapping[str, Any]) -> Any:
    """``{"name": "adam", "learning_rate": 1e-3, ...}`` -> a Keras optimizer."""
    kwargs = {k: v for k, v in spec.items() if k != "name"}
    return type(keras.optimizers.get(spec["name"]))(**kwargs)


@functools.lru_cache(maxsize=1)
def devices() -> tuple[str, ...]:
    """The accelerators this process sees (``"GPU:0 NVIDIA H100 ..."``), or ``("CPU",)``."""
    backend = keras.backend.backend()
    names: list[str] = []
    if backend == "tensorflow":
        import tensorflow as tf

        for gpu in tf.config.list_physical_devices("GPU"):
            names.append(tf.config.experimental.get_device_details(gpu).get("device_name", "GPU"))
    elif backend == "jax":
        import jax

        names = [d.device_kind for d in jax.devices() if d.platform == "gpu"]
    elif backend == "torch":
        import torch

        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return tuple(f"GPU:{i} {name}" for i, name in enumerate(names)) or ("CPU",)


def model_bytes(model: Any) -> bytes:
    """``model`` in Keras's ``.keras`` format (architecture, weights, optimizer state)."""
    with tempfile.TemporaryDirectory(prefix="hyperfleet-model-") as tmp:
        path = Path(tmp) / MODEL_ATTACHMENT
        model.save(path)
        return path.read_bytes()


def _divergence(history: Mapping[str, list[float]]) -> str | None:
    for key in ("loss", "val_loss"):
        for epoch, value in enumerate(history.get(key, []), start=1):
            if not math.isfinite(value):
                return (
                    f"training diverged: {key} became {value} in epoch {epoch}; "
                    "lower the learning rate or pick another optimizer"
                )
    return None


def _save_model(model: Any, ctx: TrialContext, loss: float) -> bool:
    """Attach the model per ``--save-models``: ``best`` keeps only the best so far."""
    mode = ctx.info.get("save_models", SAVE_MODE)
    if mode == "none":
        return False
    if mode == "best":
        best = ctx.best_loss()
        if best is not None and loss >= best:
            return False
    ctx.attach(MODEL_ATTACHMENT, model_bytes(model))
    if mode == "best":
        ctx.drop_superseded_models(MODEL_ATTACHMENT, worse_than=loss)
    return True


def run_trial(
    params: dict[str, Any],
    ctx: TrialContext,
    *,
    build_model: BuildModel,
    data: LoadData,
) -> dict[str, Any]:
    """Train ``build_model(params)`` on ``data`` and return the hyperopt result."""
    settings = ctx.settings
    model = build_model(params, settings)
    splits = data(tuple(model.input_shape[1:]), settings)
    model.compile(
        optimizer=make_optimizer(params["optimizer"]),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    reporter = EpochReporter(ctx)
    started = time.perf_counter()
    fitted = model.fit(
        *splits.train,
        batch_size=int(params["batch_size"]),
        epochs=int(settings["epochs"]),
        validation_data=splits.validation,
        callbacks=[keras.callbacks.TerminateOnNaN(), reporter],
        verbose=0,
    )
    train_s = time.perf_counter() - started
    history = {k: [float(v) for v in values] for k, values in fitted.history.items()}
    result: dict[str, Any] = {
        "history": history,
        "epochs_run": len(history.get("loss", [])),
        "stopped_early": reporter.stopped,
        "train_seconds": round(train_s, 4),
        "train_size": len(splits.train[1]),
        "val_size": len(splits.validation[1]),
        "params": params,
        "backend": keras.backend.backend(),
        "keras_version": keras.__version__,
        "devices": list(devices()),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "threads": ctx.info.get("threads") or os.cpu_count(),
        "objective": settings["objective"],
        "eval_time": time.time(),
    }
    failure = _divergence(history)
    if failure is None and not result["epochs_run"]:
        failure = "stopped before the first epoch ended"
    if failure is not None:
        return {**result, "status": STATUS_FAIL, "failure": failure, "model_saved": False}
    val_loss, val_accuracy = history["val_loss"][-1], history["val_accuracy"][-1]
    loss = val_loss if settings["objective"] == "val_loss" else 1.0 - val_accuracy
    result.update(
        loss=loss,
        status=STATUS_OK,
        val_loss=val_loss,
        val_accuracy=val_accuracy,
        model_saved=reporter.verdict is not Verdict.PRUNE and _save_model(model, ctx, loss),
    )
    return result
