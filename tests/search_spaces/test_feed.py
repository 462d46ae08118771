"""Issue 20: what a Keras trial is fed and how it is seeded (search_spaces/keras/feed.py), and
the lazy build a cache hit uses (search_spaces/keras/compiled.py).

- The kept training pipeline's order is a function of the trial's seed and the epoch alone:
  the same for two trials of one seed, other for another seed or epoch, the same for epoch k
  of a resumed trial as of the uninterrupted one; every image once per epoch.
- Seeding a trial leaves TensorFlow's global seed alone (setting it clears TensorFlow's kernel
  cache, which made every reused model re-instantiate its functions).
- A lazily built model's initial values are a real build's, bit for bit; a build a stateless
  scope refuses is built for real.

In-process, on the backend the suite runs with (TensorFlow here); the whole-trial equality on
TensorFlow and JAX is tests/search_spaces/test_compiled.py.
"""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from search_spaces.keras.compiled import build_lazily  # noqa: E402
from search_spaces.keras.feed import Feed, seed_trial  # noqa: E402

tensorflow_only = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow", reason="the kept pipeline is TensorFlow's"
)


def _pair(count: int = 100) -> tuple[np.ndarray, np.ndarray]:
    x = np.arange(count * 3, dtype=np.float32).reshape(count, 3)
    return x, np.arange(count, dtype=np.int64)


def _epoch(feed: Feed, epoch: int) -> list[list[int]]:
    """The labels of each batch ``feed`` gives in ``epoch`` (labels are the row numbers)."""
    feed.on_epoch_begin(epoch)
    return [[int(v) for v in y.numpy()] for _, y in feed.fit_kwargs()["x"]]


@tensorflow_only
def test_the_training_order_is_the_trials_seed_and_the_epoch() -> None:
    pair = _pair(100)
    first = Feed(pair, 32, seed=7)
    assert first.kept and first.fit_kwargs()["shuffle"] is False
    epoch0, epoch1 = _epoch(first, 0), _epoch(first, 1)
    assert [len(b) for b in epoch0] == [32, 32, 32, 4]
    assert sorted(v for b in epoch0 for v in b) == list(range(100))  # every image, once
    assert epoch0 != epoch1
    assert _epoch(Feed(pair, 32, seed=7), 0) == epoch0  # another trial, the same seed
    assert _epoch(Feed(pair, 32, seed=8), 0) != epoch0
    # a trial resumed at epoch 1 sees the order the uninterrupted one saw
    assert _epoch(Feed(pair, 32, seed=7, initial_epoch=1), 1) == epoch1


@tensorflow_only
def test_one_pipeline_per_arrays_and_batch_other_data_goes_through_keras() -> None:
    pair = _pair(64)
    assert Feed(pair, 16, seed=1).fit_kwargs()["x"] is Feed(pair, 16, seed=2).fit_kwargs()["x"]
    assert Feed(pair, 32, seed=1).fit_kwargs()["x"] is not Feed(pair, 16, seed=1).fit_kwargs()["x"]
    lists = (pair[0].tolist(), pair[1].tolist())
    plain = Feed(lists, 16, seed=1)
    assert not plain.kept
    assert plain.fit_kwargs() == {"x": lists[0], "y": lists[1], "batch_size": 16}


@tensorflow_only
def test_every_batch_size_shares_one_copy_of_the_arrays_and_stays_kept() -> None:
    """A pipeline per batch size, over one copy of the arrays in TensorFlow's memory (it was
    a copy per batch size, and a fifth batch size dropped them all); orders are unchanged."""
    from search_spaces.keras import feed

    pair = _pair(96)
    sizes = (8, 12, 16, 24, 32, 48)
    first = {b: Feed(pair, b, seed=3).fit_kwargs()["x"] for b in sizes}
    assert all(Feed(pair, b, seed=4).fit_kwargs()["x"] is first[b] for b in sizes)  # all kept
    sources = [v for k, v in feed._sources.items() if k[0] == "train" and v.arrays[0] is pair[0]]
    assert len(sources) == 1 and len(sources[0].pipelines) == len(sizes)
    for b in sizes:
        batches = _epoch(Feed(pair, b, seed=3), 2)
        assert sorted(v for batch in batches for v in batch) == list(range(96))
        assert [len(batch) for batch in batches] == [b] * (96 // b)
    # other arrays take their own copy; an old one goes only past the bound
    others = [_pair(96) for _ in range(feed._KEPT_ARRAYS)]
    for other in others:
        Feed(other, 8, seed=1)
    assert not any(v.arrays[0] is pair[0] for v in feed._sources.values())
    assert sum(1 for k in feed._sources if k[0] == "train") == feed._KEPT_ARRAYS


@tensorflow_only
def test_seeding_a_trial_leaves_tensorflows_global_seed_and_kernel_cache_alone() -> None:
    from tensorflow.python.eager import context

    keras.utils.set_random_seed(123)
    seed_trial(99)
    assert context.global_seed() == 123
    drawn = np.random.randint(1 << 30)
    np.random.seed(99)
    assert drawn == np.random.randint(1 << 30)  # NumPy (and Python, Keras) are seeded
    seed_trial(99, tensorflow=True)  # data fed through Keras's own shuffle needs it
    assert context.global_seed() == 99


def _mlp() -> keras.Model:
    return keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(5, activation="relu"),
            keras.layers.BatchNormalization(),
            keras.layers.Dropout(0.2, seed=None),
            keras.layers.Dense(3),
        ]
    )


def test_a_lazy_build_has_a_real_builds_initial_values_bit_for_bit() -> None:
    seed_trial(11)
    real = _mlp()
    seed_trial(11)
    lazy = build_lazily(_mlp)
    assert lazy is not None and len(lazy.variables) == len(real.variables)
    for built, deferred in zip(real.variables, lazy.variables, strict=True):
        value = deferred._initializer(deferred.shape, dtype=deferred.dtype)
        assert np.array_equal(keras.ops.convert_to_numpy(built), keras.ops.convert_to_numpy(value))
    seed_trial(12)
    other = build_lazily(_mlp)
    kernel = other.variables[0]
    assert not np.array_equal(
        keras.ops.convert_to_numpy(real.variables[0]),
        keras.ops.convert_to_numpy(kernel._initializer(kernel.shape, dtype=kernel.dtype)),
    )


def test_a_build_that_a_stateless_scope_refuses_is_built_for_real() -> None:
    def with_a_constant_variable() -> keras.Model:
        model = _mlp()
        model.extra = keras.Variable(np.ones(3, dtype=np.float32))  # not deferrable
        return model

    def raising() -> keras.Model:
        raise ValueError("a bad layer size")

    assert build_lazily(with_a_constant_variable) is None
    assert build_lazily(raising) is None


# --- found by the attacker's review -------------------------------------------------------


def test_a_build_that_sets_weights_is_built_for_real() -> None:
    """``set_weights`` / ``load_weights`` / ``adapt`` inside a stateless scope are recorded and
    dropped: such a build must not be taken lazily, or a hit trains from random weights."""

    def with_set_weights() -> keras.Model:
        model = _mlp()
        model.layers[0].set_weights([np.full((6, 5), 0.5, "float32"), np.zeros(5, "float32")])
        return model

    assert build_lazily(with_set_weights) is None
    assert build_lazily(_mlp) is not None


def test_lazy_builds_leave_no_pending_variables_behind() -> None:
    from keras.src.backend.common import global_state

    build_lazily(_mlp)
    before = len(global_state.get_global_attribute("uninitialized_variables") or [])
    for _ in range(5):
        assert build_lazily(_mlp) is not None
    assert len(global_state.get_global_attribute("uninitialized_variables") or []) == before


@tensorflow_only
def test_arrays_refilled_in_place_get_a_new_pipeline() -> None:
    pair = _pair(64)
    old = _epoch(Feed(pair, 64, seed=1), 0)
    pair[1][:] = 7  # the same array objects, new contents
    assert _epoch(Feed(pair, 64, seed=1), 0) == [[7] * 64]
    assert old != [[7] * 64]


NOISY = r"""
import json, tensorflow as tf, keras
from search_spaces import get_space
from search_spaces.keras.training import run_trial
from search_spaces.mnist import mnist_data

class Noisy(keras.layers.Layer):
    def call(self, x):
        return x + tf.random.normal(tf.shape(x), stddev=0.5)

def build(params, settings):
    return keras.Sequential(
        [keras.Input((784,)), Noisy(), keras.layers.Dense(10, activation="softmax")])

class Ctx:
    tid, attempt, exp_key, info = 4, 0, "noisy", {"save_models": "none"}
    settings = get_space("mnist_mlp").resolve_settings(
        {"epochs": 1, "train_size": 256, "val_size": 128})
    def report_epoch(self, metrics): return None
    def should_stop(self): return False
    def load_checkpoint(self, restore=None): return None
    def save_checkpoint(self, epoch, data): pass

params = {"optimizer": {"name": "adam", "learning_rate": 1e-3}, "batch_size": 32}
result = run_trial(params, Ctx(), build_model=build, data=mnist_data)
print(json.dumps([result["compiled"]["architecture"], result["history"]]))
"""


@tensorflow_only
def test_a_model_that_is_never_reused_seeds_tensorflows_rng_too() -> None:
    """A custom layer drawing from TensorFlow's global RNG (no op seed) gets no cache key; its
    trial seeds TensorFlow as before, so the trial rerun in another process repeats its
    losses."""
    from tests.conftest import run_keras_script

    runs = [run_keras_script(NOISY, "tensorflow", timeout=300) for _ in range(2)]
    assert runs[0][0] is None  # a custom layer: no key, never reused
    assert runs[0][1] == runs[1][1]
