"""What a Keras trial's ``fit`` is fed, kept per process, and how a trial is seeded.

Two per-trial costs live here (measured in docs/benchmarks.md, "Compile once per architecture"):

- **TensorFlow's global seed.** ``keras.utils.set_random_seed`` calls ``tf.random.set_seed``,
  which clears TensorFlow's kernel cache: the next call of every compiled function instantiates
  it again, about 0.1 s for a small model's train function and 0.05 s for its test function,
  *even when the compiled model is reused*. :func:`seed_trial` seeds Python, NumPy and Keras (the
  weights, dropout masks) and leaves TensorFlow's global seed alone where nothing of the trial
  draws from it.
- **The input pipeline.** ``fit`` on arrays converts them and traces a new ``tf.data`` pipeline
  per call. :class:`Feed` keeps one per (arrays, batch size) per process, all over one copy of
  the arrays: the training set shuffled each epoch from ``[trial seed, epoch]`` (a stateless
  shuffle whose seed is a variable, set by :class:`Feed`'s callback when the epoch begins), the
  validation set batched in order.
  So the order of the data is a function of the trial and the epoch alone: the same for a
  cached and a fresh model, and for a trial resumed at epoch k as for the uninterrupted one.

On TensorFlow with NumPy arrays only; anything else (JAX, torch, other data) is fed as arrays
through ``fit`` with Keras's own shuffle, seeded with ``keras.utils.set_random_seed``.
"""

from __future__ import annotations

import functools
import random
import zlib
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np

__all__ = ["Feed", "batch_is_shape", "seed_trial", "validation_batch", "validation_kwargs"]

#: validation runs at least this many images per call: fewer calls, the same loss up to float
#: rounding of the sum (measured in docs/benchmarks.md)
VALIDATION_BATCH = 1024
#: arrays kept per kind (training, validation), each as one copy in TensorFlow's memory: a
#: worker trains one data set at a time
_KEPT_ARRAYS = 2
#: pipelines kept per kept arrays, one per batch size (they share the arrays' copy)
_KEPT_BATCHES = 16


def validation_batch(batch_size: int) -> int:
    return max(int(batch_size), VALIDATION_BATCH)


def batch_is_shape() -> bool:
    """Whether a compiled train function depends on the batch size. Not on TensorFlow without
    XLA (Keras turns XLA on only where a GPU is visible): its functions are traced for a batch
    dimension of None, so models of one architecture share them across batch sizes. XLA (JAX,
    TensorFlow on a GPU) compiles per shape."""
    tf = _tensorflow()
    if tf is None:
        return True
    return any(d.device_type != "CPU" for d in tf.config.list_physical_devices())


def _tensorflow() -> Any | None:
    if keras.backend.backend() != "tensorflow":
        return None
    import tensorflow as tf

    return tf


def _arrays(pair: Any) -> bool:
    return (
        isinstance(pair, tuple)
        and len(pair) == 2
        and all(isinstance(a, np.ndarray) and a.flags.c_contiguous for a in pair)
        and len(pair[0]) == len(pair[1]) > 0
    )


def seed_trial(seed: int, *, tensorflow: bool = False) -> None:
    """Seed Python, NumPy and Keras's random streams with ``seed``; TensorFlow's global seed
    too where ``tensorflow`` is true or the backend is not TensorFlow (there it costs
    nothing). Keras layers draw from Keras's own seed generators, never from TensorFlow's."""
    if tensorflow or _tensorflow() is None:
        keras.utils.set_random_seed(seed)
        return
    try:
        from keras.src.backend.common import global_state
        from keras.src.random import seed_generator
        from keras.src.utils.rng_utils import GLOBAL_RANDOM_SEED
    except ImportError:  # another Keras layout: the public call, slower but the same seeds
        keras.utils.set_random_seed(seed)
        return
    global_state.set_global_attribute(GLOBAL_RANDOM_SEED, seed)
    global_state.set_global_attribute(seed_generator.GLOBAL_SEED_GENERATOR, None)
    random.seed(seed)
    np.random.seed(seed)


@dataclass
class _Kept:
    """What a trial is fed: a pipeline over a kept :class:`_Source`."""

    arrays: tuple[np.ndarray, np.ndarray]
    dataset: Any
    order: Any = None  #: the training shuffle's seed variable ``[trial seed, epoch]``


@dataclass
class _Source:
    """One pair of arrays as TensorFlow tensors (one copy), shared by the pipelines of every
    batch size made over it."""

    arrays: tuple[np.ndarray, np.ndarray]  #: held, so that their ids stay theirs
    sample: int  #: :func:`_sample` of the arrays when the tensors were made
    tensors: tuple[Any, Any] | None = None
    order: Any = None
    pipelines: dict[int, Any] = field(default_factory=dict)  #: batch size -> dataset, LRU last


#: elements of each array a kept pipeline compares before every trial
SAMPLED = 65_536


def _sample(pair: tuple[np.ndarray, np.ndarray]) -> int:
    """A checksum of up to :data:`SAMPLED` evenly spaced elements of each array (about 0.1 ms):
    a loader that refills the same arrays with new data gets a new pipeline. An edit of a few
    elements between the samples is not seen (a loader should return new arrays)."""
    total = 0
    for array in pair:
        flat = array.reshape(-1)  # a view: only C-contiguous arrays are kept (_arrays)
        step = max(1, flat.size // SAMPLED)
        total = zlib.crc32(np.ascontiguousarray(flat[::step]).tobytes(), total)
    return total


#: (kind, id of x, id of y) -> its source, least recently used first
_sources: OrderedDict[tuple[str, int, int], _Source] = OrderedDict()


def _source(tf: Any, kind: str, pair: tuple[np.ndarray, np.ndarray]) -> _Source:
    key = (kind, id(pair[0]), id(pair[1]))
    source = _sources.get(key)
    sample = _sample(pair)
    # ``is``: an id may be reused once its array was freed
    if (
        source is None
        or source.arrays[0] is not pair[0]
        or source.arrays[1] is not pair[1]
        or source.sample != sample
    ):
        _sources.pop(key, None)
        while sum(1 for k in _sources if k[0] == kind) >= _KEPT_ARRAYS:
            del _sources[next(k for k in _sources if k[0] == kind)]
        with tf.device("/CPU:0"):
            source = _Source(pair, sample, (tf.constant(pair[0]), tf.constant(pair[1])))
        _sources[key] = source
    _sources.move_to_end(key)
    return source


def _keep(tf: Any, kind: str, pair: tuple[np.ndarray, np.ndarray], batch: int, make: Any) -> _Kept:
    """The kept pipeline of ``pair`` in batches of ``batch``; ``make(source, batch)`` makes it
    over the source's tensors when there is none."""
    source = _source(tf, kind, pair)
    dataset = source.pipelines.pop(batch, None)
    if dataset is None:
        dataset = make(source, batch)
        while len(source.pipelines) >= _KEPT_BATCHES:
            del source.pipelines[next(iter(source.pipelines))]
    source.pipelines[batch] = dataset
    return _Kept(source.arrays, dataset, source.order)


def _training_set(tf: Any, source: _Source, batch: int) -> Any:
    """The source in batches of ``batch``, all of it each epoch, in the order a stateless
    shuffle seeded with the source's variable ``order`` makes (the last batch is the rest)."""
    x, y = source.tensors  # type: ignore[misc]
    count = len(source.arrays[1])
    full = count // batch
    if source.order is None:
        with tf.device("/CPU:0"):
            source.order = tf.Variable(
                [0, 0], dtype=tf.int64, trainable=False, name="hyperfleet_order"
            )
    order = source.order

    def batches(_: Any) -> Any:
        indices = tf.random.experimental.stateless_shuffle(
            tf.range(count, dtype=tf.int64), seed=order.read_value()
        )
        # ``batch`` keeps the batch dimension unknown (None) whatever ``count`` is: one traced
        # train function serves every batch size (see :func:`batch_is_shape`)
        return tf.data.Dataset.from_tensor_slices(indices).batch(batch)

    dataset = (
        tf.data.Dataset.range(1)
        .flat_map(batches)
        .map(lambda i: (tf.gather(x, i), tf.gather(y, i)), num_parallel_calls=tf.data.AUTOTUNE)
        .apply(tf.data.experimental.assert_cardinality(full + (1 if count % batch else 0)))
    )
    options = tf.data.Options()
    options.experimental_optimization.apply_default_optimizations = False  # as Keras does
    options.experimental_external_state_policy = tf.data.experimental.ExternalStatePolicy.IGNORE
    return dataset.with_options(options).prefetch(tf.data.AUTOTUNE)


def _validation_set(tf: Any, source: _Source, batch: int) -> Any:
    """The batches Keras makes from the arrays, in the same order: the same losses. Rows are
    gathered from the source's tensors (``from_tensor_slices`` would hold another copy)."""
    x, y = source.tensors  # type: ignore[misc]
    with tf.device("/CPU:0"):
        return (
            tf.data.Dataset.range(len(source.arrays[1]))
            .batch(batch)
            .map(lambda i: (tf.gather(x, i), tf.gather(y, i)))
        )


def validation_kwargs(pair: Any, batch_size: int) -> dict[str, Any]:
    """``fit``'s validation arguments: a kept batched dataset (TensorFlow, arrays), else the
    arrays at :func:`validation_batch`."""
    batch = validation_batch(batch_size)
    tf = _tensorflow()
    if tf is None or not _arrays(pair):
        return {"validation_data": pair, "validation_batch_size": batch}
    kept = _keep(tf, "val", pair, batch, functools.partial(_validation_set, tf))
    return {"validation_data": kept.dataset}


class Feed(keras.callbacks.Callback):
    """One trial's training data for ``fit`` (:meth:`fit_kwargs`), seeded from the trial's
    ``seed``: a callback that sets each epoch's shuffle to ``[seed, epoch]`` when the data is a
    kept pipeline, and seeds everything again with ``seed + initial_epoch`` when training
    begins (a model's first ``fit`` draws one batch to build its metrics and optimizer, on JAX
    a shuffle from NumPy; a reused model's does not)."""

    def __init__(
        self,
        pair: Any,
        batch_size: int,
        seed: int,
        initial_epoch: int = 0,
        *,
        tensorflow_seed: bool = False,
    ) -> None:
        super().__init__()
        self.seed = seed
        self.initial_epoch = initial_epoch
        self.batch_size = int(batch_size)
        tf = _tensorflow()
        self._kept = (
            _keep(tf, "train", pair, self.batch_size, functools.partial(_training_set, tf))
            if tf is not None and _arrays(pair)
            else None
        )
        self._pair = pair
        #: seed TensorFlow's global RNG too: for data fed through Keras's own shuffle, and for
        #: models that are never reused (a custom layer may draw from it)
        self.tensorflow_seed = tensorflow_seed or self._kept is None

    @property
    def kept(self) -> bool:
        """Whether the data is a kept pipeline (else arrays through Keras's own shuffle)."""
        return self._kept is not None

    def fit_kwargs(self) -> dict[str, Any]:
        if self._kept is not None:
            return {"x": self._kept.dataset, "shuffle": False}  # it shuffles itself
        x, y = self._pair
        return {"x": x, "y": y, "batch_size": self.batch_size}

    def on_train_begin(self, logs: Mapping[str, Any] | None = None) -> None:
        seed_trial(self.seed + self.initial_epoch, tensorflow=self.tensorflow_seed)

    def on_epoch_begin(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        if self._kept is not None:
            self._kept.order.assign([self.seed, epoch])
