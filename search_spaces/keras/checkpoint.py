"""A Keras trial's checkpoint: its model's variables, its optimizer's state and the epoch.

:func:`keras_state` packs them into one buffer: a JSON header, then the variables' raw bytes
(numbers only: nothing in a checkpoint is ever unpickled or run); :func:`restore_keras_state`
loads one into a model of the same architecture and refuses anything else with
:class:`~coordinator.errors.CheckpointRefused` (another architecture, another optimizer, a
truncated buffer). The model's variables include its layers' random seed state (dropout), so a
resumed trial draws the masks it would have drawn. On TensorFlow with array data the order of
an epoch's data is a function of the trial's seed and the epoch (:mod:`.feed`), so a resumed
trial sees the order the uninterrupted one would have seen; elsewhere Keras shuffles each epoch
from its own generator, and a resumed curve continues without repeating the uninterrupted one.

:class:`CheckpointEvery` is the callback: after every ``every`` epochs, at most once per
``min_interval_s`` seconds, a checkpoint of at most ``max_bytes`` (a bigger one is skipped with
one warning) through ``ctx.save_checkpoint``, after the epoch was reported (never for an epoch
whose report said stop, nor after the last epoch), written while the next epoch trains.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

import keras
import numpy as np

from coordinator.errors import CheckpointRefused
from coordinator.states import Verdict
from search_spaces.base import TrialContext

logger = logging.getLogger(__name__)

FORMAT = "hyperfleet-keras-checkpoint/1"
MAGIC = b"HFKERASC"


def _variables(model: keras.Model) -> tuple[list[Any], list[Any]]:
    optimizer = getattr(model, "optimizer", None)
    if optimizer is not None and not optimizer.built:
        optimizer.build(model.trainable_variables)
    return list(model.variables), list(optimizer.variables) if optimizer is not None else []


def _layout(variables: list[Any]) -> list[list[Any]]:
    """Shapes and dtypes in order (not names: Keras numbers them per process, e.g. dense_3)."""
    return [[list(v.shape), str(v.dtype)] for v in variables]


def keras_state(model: keras.Model, epoch: int) -> bytes:
    """``model``'s variables and optimizer state after ``epoch`` epochs, as bytes: ``MAGIC``,
    the JSON header's length (8 bytes, little-endian), the header, then each variable's raw
    bytes in order (no archive to build: packing costs about what copying the values does)."""
    model_vars, optimizer_vars = _variables(model)
    values = [np.ascontiguousarray(keras.ops.convert_to_numpy(v)) for v in model_vars]
    values += [np.ascontiguousarray(keras.ops.convert_to_numpy(v)) for v in optimizer_vars]
    header = json.dumps(
        {
            "format": FORMAT,
            "epoch": epoch,
            "model": _layout(model_vars),
            "optimizer": _layout(optimizer_vars),
            "nbytes": [int(v.nbytes) for v in values],
        }
    ).encode()
    return b"".join([MAGIC, len(header).to_bytes(8, "little"), header, *(v.data for v in values)])


def _header(data: bytes) -> tuple[dict[str, Any], int]:
    if not data.startswith(MAGIC) or len(data) < len(MAGIC) + 8:
        raise CheckpointRefused("not a Keras checkpoint (no hyperfleet checkpoint header)")
    size = int.from_bytes(data[len(MAGIC) : len(MAGIC) + 8], "little")
    start = len(MAGIC) + 8
    if size > min(len(data) - start, 2**24):
        raise CheckpointRefused("not a Keras checkpoint (its header runs past its end)")
    try:
        header = json.loads(data[start : start + size].decode())
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise CheckpointRefused(f"not a Keras checkpoint (header: {e!s:.80})") from e
    found = header.get("format") if isinstance(header, dict) else type(header).__name__
    if found != FORMAT:
        raise CheckpointRefused(f"format {str(found)[:40]!r}, not {FORMAT!r}")
    return header, start + size


def restore_keras_state(model: keras.Model, data: bytes) -> int:
    """Load a :func:`keras_state` buffer into ``model`` (built and compiled the same way);
    returns its epoch. Raises :class:`CheckpointRefused` saying why it does not fit, before
    anything is assigned."""
    header, offset = _header(data)
    model_vars, optimizer_vars = _variables(model)
    for part, variables in (("model", model_vars), ("optimizer", optimizer_vars)):
        if header.get(part) != _layout(variables):
            raise CheckpointRefused(
                f"its {part} variables do not match this trial's (another architecture)"
            )
    variables = model_vars + optimizer_vars
    sizes = header.get("nbytes")
    wanted = [
        int(np.prod(v.shape, dtype=np.int64)) * np.dtype(str(v.dtype)).itemsize for v in variables
    ]
    if sizes != wanted or offset + sum(wanted) != len(data):
        raise CheckpointRefused("its variables' bytes do not add up (truncated or altered)")
    epoch = header.get("epoch")
    if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
        raise CheckpointRefused(f"its epoch {str(epoch)[:20]!r} is not a whole number")
    for var, nbytes in zip(variables, wanted, strict=True):
        value = np.frombuffer(
            data,
            dtype=str(var.dtype),
            count=nbytes // np.dtype(str(var.dtype)).itemsize,
            offset=offset,
        )
        var.assign(value.reshape(tuple(var.shape)))
        offset += nbytes
    return epoch


class CheckpointEvery(keras.callbacks.Callback):
    """Save the trial's state through ``ctx`` after every ``every`` epochs (see the module).

    The state is packed in the training thread (values must be read between epochs) and written
    by a background thread while the next epoch trains; at most one write is in flight (the
    next waits for it), and the last is waited for when training ends. A write's error (a lost
    lease, an outage past its budget) is raised in the training thread at the next epoch's end.
    """

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
        self.seconds = 0.0  #: time training waited for them (packing, a previous write)
        self.write_s = 0.0  #: time the writes took in the background
        self.bytes = 0  #: the size of the last one
        self._last = -float("inf")
        self._warned = False
        self._pending: threading.Thread | None = None
        self._error: BaseException | None = None

    def on_epoch_end(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        """Checkpoint this epoch if it is due; always the epoch a rule paused the trial at
        (``--promote``: it is resumed from there when promoted)."""
        done = epoch + 1
        now = time.monotonic()
        if getattr(self.reporter, "verdict", None) is Verdict.PAUSE:
            if self.every <= 0:  # checkpoints are off: the trial is stopped for good
                return
        else:
            last = done >= int(self.params.get("epochs") or 0)  # the trial ends now: no resume
            stopped = getattr(self.reporter, "stopped", False)
            if self.every <= 0 or done % self.every or last or stopped:
                return
            if now - self._last < self.min_interval_s:
                return
        started = time.perf_counter()
        self._wait()
        data = keras_state(self.model, done)
        if len(data) > self.max_bytes:
            if not self._warned:
                logger.warning(
                    "trial %s: checkpoint of %.1f MB is over the %.1f MB bound; not saved (the "
                    "trial restarts from epoch 0 if it is lost): raise --checkpoint-max-mb",
                    self.ctx.tid,
                    len(data) / 2**20,
                    self.max_bytes / 2**20,
                )
                self._warned = True
            return
        self._pending = threading.Thread(
            target=self._write, args=(done, data), name="checkpoint", daemon=True
        )
        self._pending.start()
        self._last = now
        self.saved += 1
        self.bytes = len(data)
        self.seconds += time.perf_counter() - started

    def on_train_end(self, logs: Mapping[str, Any] | None = None) -> None:
        started = time.perf_counter()
        self._wait()
        self.seconds += time.perf_counter() - started

    def _write(self, epoch: int, data: bytes) -> None:
        started = time.perf_counter()
        try:
            self.ctx.save_checkpoint(epoch, data)
        except BaseException as e:  # noqa: BLE001 - raised in the training thread (_wait)
            self._error = e
        self.write_s += time.perf_counter() - started

    def _wait(self) -> None:
        if self._pending is not None:
            self._pending.join()
            self._pending = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error


def resume(ctx: TrialContext, model: keras.Model, epochs: int) -> int:
    """Load the trial's checkpoint into ``model`` (already built and compiled) for a trial of
    ``epochs`` epochs; the epoch to start from (0: none, or one that does not fit this model or
    leaves nothing to train, refused with a warning)."""

    def restore(checkpoint: Any) -> None:
        if checkpoint.epoch >= epochs:  # nothing left to train: not one this trial saved
            raise CheckpointRefused(
                f"its epoch {checkpoint.epoch} is not before the last, {epochs}"
            )
        epoch = restore_keras_state(model, checkpoint.data)
        if epoch != checkpoint.epoch:
            raise CheckpointRefused(f"it holds epoch {epoch}, its link says {checkpoint.epoch}")

    checkpoint = ctx.load_checkpoint(restore)
    return 0 if checkpoint is None else checkpoint.epoch
