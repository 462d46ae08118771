"""Train one Keras trial: compile, fit, report each epoch, keep the best model.

Imported lazily by Keras spaces' objectives, so Keras loads in the worker's long-lived trial
process once and stays loaded with the data (:mod:`search_spaces.keras.data`) across trials.

Everything the runner needs from the worker goes through the ``ctx`` it is given
(:class:`search_spaces.base.TrialContext`). :class:`EpochReporter` is a thin adapter: it forwards
each epoch's metrics to ``ctx.report_epoch`` and stops training when the verdict it answers (or
``ctx.should_stop()``) says so; whether to stop — a pruning rule, a cancel, a lost lease — is the
context's decision. A pruned trial's model is never saved.
Divergence is Keras's own ``TerminateOnNaN``; the result then says STATUS_FAIL with the reason.

Where the time goes: :class:`PhaseClock` times the first training and validation steps (tracing
and compiling the new model's functions), and :func:`run_trial` returns the phases under the
result's ``timing`` key, which the worker stores as the trial's ``timing`` (docs/schema.md).
Levers the worker passes in ``ctx.info``: ``steps_per_execution`` (``--steps-per-execution``).
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

import search_spaces.keras.values as values
from coordinator.defaults import MODEL_ATTACHMENT, SAVE_MODE
from coordinator.states import Verdict
from search_spaces.base import TrialContext
from search_spaces.keras.checkpoint import CheckpointEvery, resume
from search_spaces.keras.compiled import (
    Prepared,
    build_lazily,
    cache,
    prepare,
    settle,
    trial_config,
    trial_seed,
)
from search_spaces.keras.feed import (
    Feed,
    batch_is_shape,
    seed_trial,
    validation_batch,
    validation_kwargs,
)

if TYPE_CHECKING:
    from search_spaces.keras.space import BuildModel, LoadData

logger = logging.getLogger(__name__)


class _ExpectedRetracing(logging.Filter):
    """Drops TensorFlow's "N out of the last N calls to <function> triggered tf.function
    retracing" warning: a worker builds a new model per trial, so every trial traces anew (its
    cost is in the trial's ``timing``); the advice in that warning does not apply."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "triggered tf.function retracing" not in record.getMessage()


logging.getLogger("tensorflow").addFilter(_ExpectedRetracing())

__all__ = [
    "COMPILE_ARGS",
    "EpochReporter",
    "PhaseClock",
    "devices",
    "compiled_model",
    "make_optimizer",
    "model_bytes",
    "run_trial",
    "warm_up",
]


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
        verdict = self.ctx.report_epoch(metrics)  # None: a context without verdicts, go on
        self.verdict = Verdict.CONTINUE if verdict is None else Verdict(verdict)
        if self.verdict is not Verdict.CONTINUE or self.ctx.should_stop():
            self.stopped = True
            self.model.stop_training = True


class PhaseClock(keras.callbacks.Callback):
    """Time the fit's phases: the first compiled training call (trace + compile + its
    ``steps_per_execution`` steps), the first validation call (the same for the test function),
    all validation passes, and each epoch (:attr:`compile_s` compares the first with the rest).

    Only ``*_begin`` hooks: Keras keeps batch-end dispatch asynchronous for callbacks without
    ``*_batch_end`` hooks, so the clock adds no synchronisation to training."""

    def __init__(self) -> None:
        super().__init__()
        self.first_step_s = 0.0
        self.first_val_step_s = 0.0
        self.validate_s = 0.0
        self._train_started = 0.0
        self._train_batches = 0
        self._test_started = 0.0
        self._test_batches = 0
        self._tests = 0
        self._epoch_started = 0.0
        self.epoch_s: list[float] = []

    def on_epoch_begin(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        self._epoch_started = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        self.epoch_s.append(time.perf_counter() - self._epoch_started)

    @property
    def compile_s(self) -> float:
        """What the first epoch cost beyond a steady one (tracing and compiling this model's
        train and test functions): the first epoch less the median later epoch; with one epoch,
        the first training and validation calls (an upper bound)."""
        if len(self.epoch_s) >= 2:
            later = sorted(self.epoch_s[1:])
            return max(self.epoch_s[0] - later[len(later) // 2], 0.0)
        return self.first_step_s + self.first_val_step_s

    def on_train_begin(self, logs: Mapping[str, Any] | None = None) -> None:
        self._train_started = time.perf_counter()

    def on_train_batch_begin(self, batch: int, logs: Mapping[str, Any] | None = None) -> None:
        self._train_batches += 1
        if self._train_batches == 2:  # the first step (and its compilation) is done
            self.first_step_s = time.perf_counter() - self._train_started

    def on_test_begin(self, logs: Mapping[str, Any] | None = None) -> None:
        self._tests += 1
        self._test_batches = 0
        self._test_started = time.perf_counter()

    def on_test_batch_begin(self, batch: int, logs: Mapping[str, Any] | None = None) -> None:
        self._test_batches += 1
        if self._tests == 1 and self._test_batches == 2:
            self.first_val_step_s = time.perf_counter() - self._test_started

    def on_test_end(self, logs: Mapping[str, Any] | None = None) -> None:
        self.validate_s += time.perf_counter() - self._test_started


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


def _has_values(model: Any) -> bool:
    layers = [layer for layer in model.layers if isinstance(layer, values.Dropout)]
    return (
        bool(layers)
        or type(model.optimizer).__module__ == values.__name__
        or any(
            not isinstance(getattr(model.optimizer, k, None), (int, float, type(None)))
            for k in ("beta_1", "beta_2", "rho", "epsilon", "weight_decay")
        )
    )


def _divergence(history: Mapping[str, list[float]]) -> str | None:
    for key in ("loss", "val_loss"):
        for epoch, value in enumerate(history.get(key, []), start=1):
            if not math.isfinite(value):
                return (
                    f"training diverged: {key} became {value} in epoch {epoch}; "
                    "lower the learning rate or pick another optimizer"
                )
    return None


def _save_model(
    model: Any,
    ctx: TrialContext,
    loss: float,
    optimizer: Mapping[str, Any],
    architecture: tuple[Any, Mapping[str, str]] | None = None,
) -> tuple[bool, str]:
    """Attach the model per ``--save-models``: ``best`` keeps only the best so far. A model
    with value hyperparameters (:mod:`.values`), or one whose trial's architecture is
    ``architecture`` (a cached widths-free model: :func:`.compiled.trial_config`), is saved as
    its plain-Keras copy. Returns (saved, why not): a model Keras cannot pack is not saved, and
    the trial keeps its result; the store's errors (a lost lease, an outage) are not caught
    here."""
    mode = ctx.info.get("save_models", SAVE_MODE)
    if mode == "none":
        return False, ""
    if mode == "best":
        best = ctx.best_loss()
        if best is not None and loss >= best:
            return False, ""
    try:
        if architecture is not None or _has_values(model):
            model = values.plain_copy(model, optimizer, architecture=architecture, **COMPILE_ARGS)
        packed = model_bytes(model)
    except Exception as e:  # noqa: BLE001 - Keras raises many types; the result must survive
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        why = f"{type(e).__name__}: {first}"[:500]
        logger.warning(
            "tid %s: its model was not saved (%s); the result is kept. "
            "Use --save-models none for models Keras cannot save",
            ctx.tid,
            why,
        )
        return False, why
    ctx.attach(MODEL_ATTACHMENT, packed)
    if mode == "best":
        ctx.drop_superseded_models(MODEL_ATTACHMENT, worse_than=loss)
    return True, ""


#: what every trial compiles with (the runner's loss and metrics)
COMPILE_ARGS: dict[str, Any] = {
    "loss": "sparse_categorical_crossentropy",
    "metrics": ["accuracy"],
}
#: the worker's ``--steps-per-execution`` default: the warm-up compiles with it, so that its
#: model is the first trial's compiled model when the architecture is the same
WORKER_STEPS_PER_EXECUTION = 32


def build_training_state(model: Any, train: tuple[Any, Any], batch_size: int) -> None:
    """Create a compiled model's optimizer and metric variables before ``fit`` traces its step.

    On TensorFlow without a distribution strategy Keras defers them to the first trace of the
    train step, and TensorFlow traces a function that created variables a second time: a new
    architecture's step was traced twice (measured: ~0.25 s of a 2-epoch ``mnist_mlp``
    trial on this machine's CPU, ``tests/search_spaces/test_compiled.py`` counts the traces).
    Keras's ``fit`` does this build itself on JAX and under a strategy; it is a private method
    (``Trainer._symbolic_build``), so any failure here leaves the build to ``fit`` as before,
    and so do models it could build wrongly: one with its own ``train_step`` (it may update
    only some variables) and one with a layer still unbuilt (one only training calls).
    """
    build = getattr(model, "_symbolic_build", None)
    if build is None or keras.backend.backend() != "tensorflow":
        return
    if type(model).train_step is not keras.Model.train_step:
        return  # its own train step may update some variables only: their slots, not all
    layers = getattr(model, "_flatten_layers", None)
    if layers is None or not all(layer.built for layer in layers()):
        # a layer only training calls (built at the first train trace): the symbolic build
        # runs inference, and an optimizer built before it would refuse its variables
        return
    try:
        sample = keras.tree.map_structure(lambda part: part[:batch_size], tuple(train))
        build(data_batch=sample)
    except Exception as exc:  # noqa: BLE001 - a private Keras API: fit builds lazily instead
        logger.debug("building %s's training state ahead of fit failed: %r", model.name, exc)


def compiled_model(
    build_model: BuildModel,
    params: dict[str, Any],
    settings: Mapping[str, Any],
    *,
    seed: int,
    steps_per_execution: int = 1,
    reuse: bool = True,
) -> Prepared:
    """Build ``params``' model with ``seed`` and return it compiled, or the cached compiled
    model of its architecture set to its state (:mod:`search_spaces.keras.compiled`)."""

    def build(never_reused: bool = False) -> Any:
        # a real build after a lazy one draws the same initial values. TensorFlow's global
        # seed too for a model that is never reused (a custom layer may draw from it); a
        # reused model keeps TensorFlow's kernel cache (search_spaces/keras/feed.py)
        seed_trial(seed, tensorflow=never_reused)
        return build_model(params, settings)

    models = cache()
    reusing = bool(reuse and models.size)
    lazy = build_lazily(build) if reusing else None
    batch_sizes = (
        {
            "batch_size": int(params["batch_size"]),
            "validation_batch_size": validation_batch(params["batch_size"]),
        }
        if batch_is_shape()
        else {}  # one compiled model serves every batch size
    )
    return prepare(
        # a build the stateless scope refused is unusual: seeded as if never reused
        lazy if lazy is not None else build(never_reused=True),
        params["optimizer"],
        {**COMPILE_ARGS, "steps_per_execution": steps_per_execution},
        models,
        reuse,
        rebuild=build,
        steps_per_execution=steps_per_execution,
        **batch_sizes,
    )


def run_trial(
    params: dict[str, Any],
    ctx: TrialContext,
    *,
    build_model: BuildModel,
    data: LoadData,
    reuse: bool = True,
) -> dict[str, Any]:
    """Train ``build_model(params)`` on ``data`` and return the hyperopt result."""
    settings = ctx.settings
    seed = trial_seed(ctx.exp_key, ctx.tid)
    clock = time.perf_counter()
    prepared = compiled_model(
        build_model,
        params,
        settings,
        seed=seed,
        steps_per_execution=int(ctx.info.get("steps_per_execution") or 1),
        reuse=reuse,
    )
    model = prepared.model
    build_s = time.perf_counter() - clock
    clock = time.perf_counter()
    splits = data(tuple(model.input_shape[1:]), settings)
    data_s = time.perf_counter() - clock
    reporter = EpochReporter(ctx)
    phases = PhaseClock()
    checkpoints = CheckpointEvery(
        ctx,
        reporter,
        every=int(ctx.info.get("checkpoint_every", 1)),
        min_interval_s=float(ctx.info.get("checkpoint_interval_s", 0.0)),
        max_bytes=int(ctx.info.get("checkpoint_max_bytes", 256 * 2**20)),
    )
    # an earlier attempt's checkpoint (killed, pre-empted, handed back): go on from there
    initial_epoch = resume(ctx, model, int(settings["epochs"]))
    # the data's order: the same whether reused or not, resumed or not
    training = Feed(
        splits.train,
        int(params["batch_size"]),
        seed,
        initial_epoch,
        tensorflow_seed=prepared.key is None,  # never reused: seed TensorFlow's RNG too
    )
    clock = time.perf_counter()
    build_training_state(model, splits.train, int(params["batch_size"]))
    settle(prepared, cache())
    build_s += time.perf_counter() - clock
    seed_trial(seed, tensorflow=training.tensorflow_seed)
    started = time.perf_counter()
    try:
        fitted = model.fit(
            **training.fit_kwargs(),
            epochs=int(settings["epochs"]),
            initial_epoch=initial_epoch,
            **validation_kwargs(splits.validation, int(params["batch_size"])),
            callbacks=[
                training,
                keras.callbacks.TerminateOnNaN(),
                reporter,
                checkpoints,
                phases,
            ],
            verbose=0,
        )
    except BaseException:
        cache().discard(prepared.key)
        raise
    train_s = time.perf_counter() - started
    timing = {
        "data_s": data_s,
        "build_s": build_s,
        "first_step_s": phases.first_step_s,
        "first_val_step_s": phases.first_val_step_s,
        "validate_s": phases.validate_s,
        "fit_s": train_s,
        "compile_s": phases.compile_s,
        # training at its steady rate: the fit less what compiling the model's functions cost
        "steady_s": max(train_s - phases.compile_s, 0.0),
        "save_s": 0.0,
        "compile_reused": 1 if prepared.reused else 0,
        "compile_cache_size": len(cache()),
        # inside fit_s: what training waited for checkpoints (packing; a write still going)
        "checkpoint_s": checkpoints.seconds,
        "checkpoint_write_s": checkpoints.write_s,  # the writes, beside the next epochs
    }
    history = {k: [float(v) for v in values] for k, values in fitted.history.items()}
    result: dict[str, Any] = {
        "history": history,
        "epochs_run": initial_epoch + len(history.get("loss", [])),
        "resumed_from_epoch": initial_epoch,
        "checkpoints": checkpoints.saved,
        "checkpoint_bytes": checkpoints.bytes,
        "stopped_early": reporter.stopped,
        "train_seconds": round(train_s, 4),
        "train_size": len(splits.train[1]),
        "val_size": len(splits.validation[1]),
        "params": params,
        "seed": seed,
        "compiled": {
            "reused": prepared.reused,
            "architecture": prepared.key,
            "cache_size": len(cache()),
            "widths_free": prepared.widths_free,
            **({"why_not": prepared.reason} if prepared.reason else {}),
        },
        "backend": keras.backend.backend(),
        "keras_version": keras.__version__,
        "devices": list(devices()),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "threads": ctx.info.get("threads") or os.cpu_count(),
        "objective": settings["objective"],
        "eval_time": time.time(),
        "timing": timing,
    }
    failure = _divergence(history)
    if failure is None and not result["epochs_run"]:
        failure = "stopped before the first epoch ended"
    if failure is not None:
        return {**result, "status": STATUS_FAIL, "failure": failure, "model_saved": False}
    val_loss, val_accuracy = history["val_loss"][-1], history["val_accuracy"][-1]
    loss = val_loss if settings["objective"] == "val_loss" else 1.0 - val_accuracy
    clock = time.perf_counter()
    saved = False
    if reporter.verdict not in (Verdict.PRUNE, Verdict.PAUSE):
        saved, unsaved = _save_model(model, ctx, loss, params["optimizer"], trial_config(prepared))
        if unsaved:
            result["model_save_error"] = unsaved
    timing["save_s"] = time.perf_counter() - clock
    result.update(
        loss=loss, status=STATUS_OK, val_loss=val_loss, val_accuracy=val_accuracy, model_saved=saved
    )
    return result


def warm_up(
    build_model: BuildModel, data: LoadData, params: dict[str, Any], settings: Mapping[str, Any]
) -> None:
    """Make this process's first trial a warm one: build and compile ``params``' model (it stays
    in the compiled-model cache), load its data and fit it for one step with one validation
    pass, so the framework's first-use costs (thread pools, kernels, the first trace) and the
    dataset are paid before any trial is reserved."""
    spe = int(os.environ.get("HYPERFLEET_STEPS_PER_EXECUTION") or WORKER_STEPS_PER_EXECUTION)
    prepared = compiled_model(build_model, params, settings, seed=1, steps_per_execution=spe)
    model = prepared.model
    splits = data(tuple(model.input_shape[1:]), settings)
    batch = int(params["batch_size"])
    training = Feed(splits.train, batch, seed=1)
    build_training_state(model, splits.train, batch)
    settle(prepared, cache())
    model.fit(
        # one step of the data as trials get it: the same input pipeline, the same traced step
        **training.fit_kwargs(),
        steps_per_epoch=1,
        epochs=1,
        # the whole validation split, as trials see it: its input pipeline is kept warm too
        **validation_kwargs(splits.validation, batch),
        verbose=0,
    )
