"""A Keras trial's checkpoint: its model's variables, its optimizer's state and the epoch.

:func:`keras_state` packs them into one ``.npz`` buffer (arrays only, plus a JSON header: read
back with ``allow_pickle=False``, so a checkpoint can never run code); :func:`restore_keras_state`
loads one into a model of the same architecture and refuses anything else with
:class:`~coordinator.errors.CheckpointRefused` (another architecture, another optimizer, a
truncated buffer). The model's variables include its layers' random seed state (dropout), so a
resumed trial draws the masks it would have drawn; the order of the data in later epochs is not
restored (Keras shuffles each epoch from its own generator), so a resumed curve continues but is
not bit-for-bit the uninterrupted one.

:class:`CheckpointEvery` is the callback: after every ``every`` epochs, at most once per
``min_interval_s`` seconds, a checkpoint of at most ``max_bytes`` (a bigger one is skipped with
one warning) through ``ctx.save_checkpoint``, after the epoch was reported (never for an epoch
whose report said stop).
"""

from __future__ import annotations

import io
import json
import logging
import time
import zipfile
from collections.abc import Mapping
from typing import Any

import keras
import numpy as np

from coordinator.errors import CheckpointRefused
from search_spaces.base import TrialContext

logger = logging.getLogger(__name__)

FORMAT = "hyperfleet-keras-checkpoint/1"


def _variables(model: keras.Model) -> tuple[list[Any], list[Any]]:
    optimizer = getattr(model, "optimizer", None)
    if optimizer is not None and not optimizer.built:
        optimizer.build(model.trainable_variables)
    return list(model.variables), list(optimizer.variables) if optimizer is not None else []


def _layout(variables: list[Any]) -> list[list[Any]]:
    """Shapes and dtypes in order (not names: Keras numbers them per process, e.g. dense_3)."""
    return [[list(v.shape), str(v.dtype)] for v in variables]


def keras_state(model: keras.Model, epoch: int) -> bytes:
    """``model``'s variables and optimizer state after ``epoch`` epochs, as bytes."""
    model_vars, optimizer_vars = _variables(model)
    header = {
        "format": FORMAT,
        "epoch": epoch,
        "model": _layout(model_vars),
        "optimizer": _layout(optimizer_vars),
    }
    arrays = {f"m{i}": np.asarray(keras.ops.convert_to_numpy(v)) for i, v in enumerate(model_vars)}
    arrays.update(
        {f"o{i}": np.asarray(keras.ops.convert_to_numpy(v)) for i, v in enumerate(optimizer_vars)}
    )
    buffer = io.BytesIO()
    header_bytes = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    np.savez(buffer, header=header_bytes, **arrays)
    return buffer.getvalue()


def restore_keras_state(model: keras.Model, data: bytes) -> int:
    """Load a :func:`keras_state` buffer into ``model`` (built and compiled the same way);
    returns its epoch. Raises :class:`CheckpointRefused` saying why it does not fit."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            header = json.loads(npz["header"].tobytes().decode())
            arrays = {name: npz[name] for name in npz.files if name != "header"}
    except (
        OSError,
        EOFError,
        ValueError,
        KeyError,
        TypeError,
        AttributeError,
        zipfile.BadZipFile,
    ) as e:
        raise CheckpointRefused(f"not a Keras checkpoint ({type(e).__name__}: {e})") from e
    found = header.get("format") if isinstance(header, dict) else type(header).__name__
    if found != FORMAT:
        raise CheckpointRefused(f"format {str(found)[:40]!r}, not {FORMAT!r}")
    model_vars, optimizer_vars = _variables(model)
    for part, variables, prefix in (("model", model_vars, "m"), ("optimizer", optimizer_vars, "o")):
        if header.get(part) != _layout(variables):
            raise CheckpointRefused(
                f"its {part} variables do not match this trial's (another architecture)"
            )
        for i, var in enumerate(variables):
            value = arrays.get(f"{prefix}{i}")
            if value is None or list(value.shape) != list(var.shape):
                raise CheckpointRefused(f"its {part} variable {var.path} is missing or reshaped")
    for variables, prefix in ((model_vars, "m"), (optimizer_vars, "o")):
        for i, var in enumerate(variables):
            var.assign(arrays[f"{prefix}{i}"])
    epoch = header.get("epoch")
    if not isinstance(epoch, int) or epoch < 0:
        raise CheckpointRefused(f"its epoch {str(epoch)[:20]!r} is not a whole number")
    return epoch


class CheckpointEvery(keras.callbacks.Callback):
    """Save the trial's state through ``ctx`` after every ``every`` epochs (see the module)."""

    def __init__(
        self,
        ctx: TrialContext,
        reporter: Any,
        *,
        every: int = 1,
        min_interval_s: float = 0.0,
        max_bytes: int = 256 * 2**20,
    ) -> None:
        super().__init__()
        self.ctx = ctx
        self.reporter = reporter  #: the EpochReporter: no checkpoint of an epoch that said stop
        self.every = every
        self.min_interval_s = min_interval_s
        self.max_bytes = max_bytes
        self.saved = 0  #: checkpoints written
        self.seconds = 0.0  #: time spent packing and writing them
        self._last = -float("inf")
        self._warned = False

    def on_epoch_end(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        done = epoch + 1
        last = done >= int(self.params.get("epochs") or 0)  # the trial ends now: no resume
        if self.every <= 0 or done % self.every or last or getattr(self.reporter, "stopped", False):
            return
        now = time.monotonic()
        if now - self._last < self.min_interval_s:
            return
        started = time.perf_counter()
        data = keras_state(self.model, done)
        if len(data) > self.max_bytes:
            if not self._warned:
                logger.warning(
                    "trial %s: checkpoint of %.1f MiB is over the %.1f MiB bound; not saved",
                    self.ctx.tid,
                    len(data) / 2**20,
                    self.max_bytes / 2**20,
                )
                self._warned = True
            return
        self.ctx.save_checkpoint(done, data)
        self._last = now
        self.saved += 1
        self.seconds += time.perf_counter() - started


def resume(ctx: TrialContext, model: keras.Model) -> int:
    """Load the trial's checkpoint into ``model`` (already built and compiled); the epoch to
    start from (0: none, or one that does not fit this model, refused with a warning)."""

    def restore(checkpoint: Any) -> None:
        epoch = restore_keras_state(model, checkpoint.data)
        if epoch != checkpoint.epoch:
            raise CheckpointRefused(f"it holds epoch {epoch}, its link says {checkpoint.epoch}")

    checkpoint = ctx.load_checkpoint(restore)
    return 0 if checkpoint is None else checkpoint.epoch
