"""Compile once per architecture (issue 20): the architecture key, the cache, and a trial run
from the cache giving the same losses as a freshly built model with the same seed.

The loss checks run real Keras trials (256 images, 2 epochs) in a fresh interpreter per backend:
TensorFlow, and JAX where ``keras``'s JAX backend is installed. The context is a small stand-in
for the worker's (no store is needed to train a model; the worker path is covered by
tests/worker/test_trial_phases.py).
"""

from __future__ import annotations

import importlib.util

import pytest

from tests.conftest import run_keras_script

#: the cached trial, the freshly built one, and plain Keras constants: what must agree
CHECK = r"""
import json, sys
from search_spaces import get_space
from search_spaces.mnist import build_mlp, mnist_data
from search_spaces.keras.training import run_trial
from search_spaces.keras.compiled import cache

class Ctx:
    def __init__(self, tid):
        self.tid, self.attempt, self.exp_key, self.info = tid, 0, "same", {"save_models": "none"}
        self.settings = get_space("mnist_mlp").resolve_settings(
            {"epochs": 2, "train_size": 256, "val_size": 128})
    def report_epoch(self, metrics): return None
    def should_stop(self): return False
    def attach(self, name, data): pass
    def best_loss(self): return None
    def drop_superseded_models(self, name, worse_than): return 0
    def load_checkpoint(self, restore=None): return None
    def save_checkpoint(self, epoch, data): pass

def params(name, lr, x, dropout, batch=32):
    extra = {"adam": {"beta_1": x}, "sgd": {"momentum": x, "nesterov": True},
             "rmsprop": {"rho": x}}[name]
    return {"layers": [{"units": 32, "dropout": dropout}], "activation": "relu",
            "optimizer": {"name": name, "learning_rate": lr, **extra}, "batch_size": batch}

def trial(p, tid, reuse=True):
    r = run_trial(p, Ctx(tid), build_model=build_mlp, data=mnist_data, reuse=reuse)
    return {"reused": r["compiled"]["reused"], "key": r["compiled"]["architecture"],
            "history": r["history"], "timing": r["timing"]}

out = {}
for name in ("adam", "sgd", "rmsprop"):
    cache().clear()
    first = trial(params(name, 1e-3, 0.9, 0.2), 1)
    cached = trial(params(name, 3e-3, 0.85, 0.3), 2)
    cache().clear()
    fresh = trial(params(name, 3e-3, 0.85, 0.3), 2)
    plain = trial(params(name, 3e-3, 0.85, 0.3), 2, reuse=False)
    out[name] = {"first": first, "cached": cached, "fresh": fresh, "plain": plain}
# another batch size: the same compiled model on TensorFlow without XLA, a new one on JAX
cache().clear()
trial(params("adam", 1e-3, 0.9, 0.2, batch=32), 1)
other_batch = trial(params("adam", 3e-3, 0.85, 0.3, batch=64), 2)
cache().clear()
other_fresh = trial(params("adam", 3e-3, 0.85, 0.3, batch=64), 2)
from search_spaces.keras.feed import batch_is_shape
print(json.dumps({"runs": out, "batch": {"cached": other_batch, "fresh": other_fresh},
                  "batch_is_shape": batch_is_shape()}))
"""

#: plain Keras (floats traced as constants) against values in variables: float32 rounding of
#: e.g. ``1 - beta_1`` differs, and two epochs of training amplify it (Adam: 1.6e-4 measured)
PLAIN_RTOL = 1e-3


def _run_check(backend: str) -> dict:
    return run_keras_script(CHECK, backend)


def _assert_same_losses(check: dict, *, batch_is_shape: bool) -> None:
    assert check["batch_is_shape"] is batch_is_shape
    runs = check["runs"]
    cached, fresh = check["batch"]["cached"], check["batch"]["fresh"]
    assert cached["reused"] is not batch_is_shape
    assert cached["history"] == fresh["history"]  # reused or not, bit for bit
    for name, run in runs.items():
        first, cached, fresh, plain = run["first"], run["cached"], run["fresh"], run["plain"]
        assert not first["reused"] and cached["reused"] and not fresh["reused"], name
        assert first["key"] == cached["key"] == fresh["key"] is not None, name
        assert plain["key"] is None, name
        # the cached trial and the fresh build: the same compiled graph, bit for bit
        assert cached["history"] == fresh["history"], name
        assert cached["timing"]["compile_reused"] == 1 and fresh["timing"]["compile_reused"] == 0
        for metric, values in plain["history"].items():
            assert cached["history"][metric] == pytest.approx(values, rel=PLAIN_RTOL), (
                name,
                metric,
            )


@pytest.mark.slow
def test_cached_trial_gives_the_fresh_models_losses_tensorflow() -> None:
    check = _run_check("tensorflow")
    # TensorFlow compiles with XLA, per shape, only where a GPU is visible
    _assert_same_losses(check, batch_is_shape=bool(check["batch_is_shape"]))


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax is not installed")
def test_cached_trial_gives_the_fresh_models_losses_jax() -> None:
    _assert_same_losses(_run_check("jax"), batch_is_shape=True)


#: count the traces of the train and test steps of a new architecture's trial and of a reused one
TRACES = (
    CHECK.split("out = {}")[0]
    + r"""
from keras.src.backend.tensorflow.trainer import TensorFlowTrainer
traces = {"train": 0, "test": 0}
for step in ("train", "test"):
    original = getattr(TensorFlowTrainer, step + "_step")
    def counted(self, data, _original=original, _step=step):
        traces[_step] += 1
        return _original(self, data)
    setattr(TensorFlowTrainer, step + "_step", counted)
seen = []
for tid, p in enumerate((params("adam", 1e-3, 0.9, 0.2), params("adam", 3e-3, 0.8, 0.3))):
    before = dict(traces)
    r = trial(p, tid)
    seen.append({"reused": r["reused"], **{k: traces[k] - before[k] for k in traces}})
print(json.dumps(seen))
"""
)


def test_a_new_architecture_is_traced_once_and_a_reused_one_not_at_all() -> None:
    """Keras on TensorFlow creates the optimizer's and metrics' variables inside the first
    trace, and TensorFlow then traces the step again: the trial builds them first."""
    new, reused = run_keras_script(TRACES, "tensorflow")
    assert new == {"reused": False, "train": 1, "test": 1}
    assert reused == {"reused": True, "train": 0, "test": 0}


#: a layer only training calls, and a model with its own train step (attacker review)
UNUSUAL = (
    CHECK.split("out = {}")[0]
    + r"""
import keras
from keras import layers
from search_spaces.keras.training import build_training_state

class TrainOnlyBranch(layers.Layer):
    def __init__(self, units, **kw):
        super().__init__(**kw)
        self.aux = layers.Dense(units)
    def call(self, h, training=False):
        return h + 0.1 * self.aux(h) if training else h

def branchy(params, settings):
    inp = keras.Input((784,))
    h = TrainOnlyBranch(32)(layers.Dense(32, activation="relu")(inp))
    return keras.Model(inp, layers.Dense(10, activation="softmax")(h))

r = run_trial(params("adam", 1e-3, 0.9, 0.0), Ctx(1), build_model=branchy, data=mnist_data)

class OwnStep(keras.Sequential):
    def train_step(self, data):
        return super().train_step(data)

own = OwnStep([keras.Input((4,)), layers.Dense(3)])
own.compile(optimizer="adam", loss="mse")
build_training_state(own, (np.zeros((8, 4), "float32"), np.zeros((8, 3), "float32")), 4)
plain = keras.Sequential([keras.Input((4,)), layers.Dense(3)])
plain.compile(optimizer="adam", loss="mse")
build_training_state(plain, (np.zeros((8, 4), "float32"), np.zeros((8, 3), "float32")), 4)
print(json.dumps({"branchy": [r["status"], len(r["history"]["loss"])],
                  "own_step_optimizer_built": own.optimizer.built,
                  "plain_optimizer_built": plain.optimizer.built}))
"""
).replace("import json, sys", "import json, sys\nimport numpy as np")


def test_models_the_early_build_could_break_are_left_to_fit() -> None:
    """A layer that only training calls is built at the first train trace: an optimizer built
    before it refused its variables (the trial failed). A model with its own train step may
    update some variables only: Keras gives slots to those, so the build is left to it."""
    out = run_keras_script(UNUSUAL, "tensorflow")
    assert out["branchy"] == ["ok", 2]
    assert out["own_step_optimizer_built"] is False
    assert out["plain_optimizer_built"] is True


def test_the_key_leaves_values_out_and_keeps_shapes() -> None:
    import keras

    from search_spaces.keras import values
    from search_spaces.keras.compiled import architecture_key
    from search_spaces.keras.feed import batch_is_shape
    from search_spaces.mnist import build_mlp

    def key(units: int, dropout: float, activation: str = "relu", **opt: object) -> str | None:
        params = {"layers": [{"units": units, "dropout": dropout}], "activation": activation}
        spec = {"name": "adam", "learning_rate": 1e-3, **opt}
        made = values.make_optimizer(spec)
        return architecture_key(build_mlp(params, {}), made[1] if made else None, batch_size=32)[0]

    base = key(32, 0.2)
    assert base is not None
    assert key(32, 0.4, beta_1=0.8) == base  # values: the dropout rate, Adam's numbers
    # widths: values on TensorFlow without XLA (a shape-free step), shapes where XLA compiles
    widths_free = keras.backend.backend() == "tensorflow" and not batch_is_shape()
    assert (key(64, 0.2) == base) is widths_free
    assert key(32, 0.0) != base  # no dropout layer at all
    assert key(32, 0.2, "tanh") != base
    assert key(32, 0.2, amsgrad=True) != base  # the optimizer's structure


def test_cnn_dropout_is_a_value() -> None:
    from search_spaces.keras import values
    from search_spaces.keras.compiled import architecture_key
    from search_spaces.mnist import build_cnn

    adam = values.make_optimizer({"name": "adam", "learning_rate": 1e-3})[1]

    def key(filters: int, dropout: float) -> str | None:
        params = {
            "conv": [{"filters": filters}],
            "dense_units": 64,
            "dropout": dropout,
            "activation": "relu",
        }
        return architecture_key(build_cnn(params, {}), adam, batch_size=32)[0]

    assert key(16, 0.1) == key(16, 0.4) is not None
    assert key(16, 0.1) != key(32, 0.1)


def test_unknown_cases_are_built_afresh() -> None:
    import keras

    from search_spaces.keras import values
    from search_spaces.keras.compiled import architecture_key

    adam = values.make_optimizer({"name": "adam", "learning_rate": 1e-3})[1]

    class Scale(keras.layers.Layer):  # a custom layer: its config need not say everything
        def call(self, x):
            return x * 2.0

    custom = keras.Sequential([keras.Input((4,)), Scale(), keras.layers.Dense(2)])
    lam = keras.Sequential([keras.Input((4,)), keras.layers.Lambda(lambda x: x * 2.0)])
    plain = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    assert "Scale" in architecture_key(custom, adam)[1]
    assert "Lambda" in architecture_key(lam, adam)[1]
    assert architecture_key(plain, adam)[0] is not None
    assert architecture_key(plain, None)[0] is None  # an optimizer without a value rule
    assert values.make_optimizer({"name": "adagrad", "learning_rate": 0.1}) is None
    assert values.make_optimizer({"name": "adam", "learning_rate": 1e-3, "use_ema": True}) is None


def test_a_bad_cache_size_setting_is_one_warning_and_the_default(monkeypatch, caplog) -> None:
    """``HYPERFLEET_MODEL_CACHE=abc`` failed every trial of the worker (a ValueError in each);
    now one warning and the default size."""
    from search_spaces.keras import compiled

    monkeypatch.setattr(compiled, "_cache", None)
    monkeypatch.setenv(compiled.SIZE_ENV, "abc")
    with caplog.at_level("WARNING", logger=compiled.__name__):
        assert compiled.cache().size == compiled.DEFAULT_SIZE
    assert [r.getMessage() for r in caplog.records] == [
        "HYPERFLEET_MODEL_CACHE='abc' is not a whole number of models; using 8 (0 turns reuse off)"
    ]
    monkeypatch.setattr(compiled, "_cache", None)
    monkeypatch.setenv(compiled.SIZE_ENV, "-3")
    assert compiled.cache().size == 0  # below zero: off, as 0
    monkeypatch.setattr(compiled, "_cache", None)


def test_cache_is_bounded_least_recently_used_out() -> None:
    from search_spaces.keras.compiled import CompiledModels

    models = CompiledModels(2)
    models.put("a", 1)
    models.put("b", 2)
    assert models.take("a") == 1  # a is now the most recent
    models.put("c", 3)
    assert models.take("b") is None and len(models) == 2
    off = CompiledModels(0)
    off.put("a", 1)
    assert off.take("a") is None


def test_saved_model_is_plain_keras_with_the_trained_state(tmp_path) -> None:
    import keras
    import numpy as np

    from search_spaces.keras import values
    from search_spaces.mnist import build_mlp

    params = {"layers": [{"units": 8, "dropout": 0.3}], "activation": "relu"}
    spec = {"name": "sgd", "learning_rate": 0.1, "momentum": 0.5}
    model = build_mlp(params, {})
    model.compile(optimizer=values.make_optimizer(spec)[0], loss="sparse_categorical_crossentropy")
    x, y = np.random.default_rng(0).random((64, 784), "float32"), np.arange(64) % 10
    model.fit(x, y, batch_size=32, epochs=1, verbose=0)
    copy = values.plain_copy(model, spec, loss="sparse_categorical_crossentropy")
    path = tmp_path / "m.keras"
    copy.save(path)
    loaded = keras.saving.load_model(path)
    assert [type(layer).__module__.split(".")[0] for layer in loaded.layers] == ["keras"] * 3
    assert loaded.layers[1].rate == pytest.approx(0.3)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    assert int(loaded.optimizer.iterations) == 2
    assert loaded.optimizer.momentum == pytest.approx(0.5)


# --- found by the second attacker review ---------------------------------------------------


def test_a_functional_model_with_one_input_has_one_key() -> None:
    """Keras writes one input as a flat ``[name, 0, 0]``: its auto-generated name must not make
    every build a new architecture."""
    import keras

    from search_spaces.keras.compiled import architecture_key

    def functional() -> object:
        inputs = keras.Input((8,))
        return keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Dense(4)(inputs)))

    structure = ("adam", (), ("momentum>0", False), ("weight_decay", False))
    first, second = (architecture_key(functional(), structure)[0] for _ in range(2))
    assert first is not None and first == second


def test_arrays_in_a_config_are_keyed_by_all_their_numbers() -> None:
    """``repr`` shortens arrays of over 1,000 numbers: a config value that is an array (Keras's
    own layers write lists today; the key must not depend on that) is keyed by all its bytes."""
    import json

    import numpy as np

    from search_spaces.keras.compiled import _in_key

    def text(last: float) -> str:
        bounds = np.linspace(0.0, 1.0, 1500)
        bounds[-2] = last
        return json.dumps({"bin_boundaries": bounds, "scale": np.float32(0.5)}, default=_in_key)

    assert text(0.99) != text(0.98)
    assert text(0.99) == text(0.99)
    assert '"scale": 0.5' in text(0.99)


def test_mixed_precision_models_are_never_reused() -> None:
    """Under ``mixed_float16`` compile wraps the optimizer in a LossScaleOptimizer, whose loss
    scale a reset must not zero: such models get no key (a hit crashed on its second trial)."""
    import keras

    from search_spaces.keras.compiled import architecture_key

    structure = ("adam", (), ("momentum>0", False), ("weight_decay", False))
    before = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    finally:
        keras.config.set_dtype_policy(before)
    key, reason = architecture_key(model, structure)
    assert key is None and "mixed precision" in reason


# --- widths are values on TensorFlow without XLA -------------------------------------------

#: trials of one depth, activation and optimizer at other widths: one traced step for all
WIDTHS = (
    CHECK.split("out = {}")[0]
    .replace('{"save_models": "none"}', '{"save_models": "all"}')
    .replace("attach(self, name, data): pass", "attach(self, name, data): SAVED.append(data)")
    + r"""
import tempfile, keras
SAVED = []
from keras.src.backend.tensorflow.trainer import TensorFlowTrainer
traces = {"train": 0}
original = TensorFlowTrainer.train_step
def counted(self, data):
    traces["train"] += 1
    return original(self, data)
TensorFlowTrainer.train_step = counted

def wide(units, lr, dropout):
    p = params("adam", lr, 0.9, dropout)
    p["layers"] = [{"units": u, "dropout": dropout} for u in units]
    return p

def saved_units():
    with tempfile.NamedTemporaryFile(suffix=".keras") as f:
        f.write(SAVED[-1]); f.flush()
        m = keras.saving.load_model(f.name)
    return [l.units for l in m.layers if hasattr(l, "units")], [w.shape for w in m.get_weights()]

cache().clear()
first = trial(wide((32, 64), 1e-3, 0.2), 1)
before = traces["train"]
cached = trial(wide((128, 16), 3e-3, 0.3), 2)
cached_traces = traces["train"] - before
cached_saved = saved_units()
back = trial(wide((32, 64), 2e-3, 0.1), 3)
deeper = trial(wide((32, 64, 32), 1e-3, 0.2), 4)
cache().clear()
CKPT, RESUME = [], []
class Checkpoint:
    def __init__(self, epoch, data): self.epoch, self.data = epoch, data
def load_checkpoint(self, restore=None):
    from coordinator.errors import CheckpointRefused
    for checkpoint in RESUME:
        try:
            restore(checkpoint)
        except CheckpointRefused:
            return None
        return checkpoint
    return None
Ctx.load_checkpoint = load_checkpoint
Ctx.save_checkpoint = lambda self, epoch, data: CKPT.append(Checkpoint(epoch, data))
fresh = trial(wide((128, 16), 3e-3, 0.3), 2)
fresh_checkpoint = CKPT[-1]
trial(wide((32, 64), 1e-3, 0.2), 9)  # the cached model now has other widths
RESUME.append(fresh_checkpoint)  # trial 2 comes back: it resumes at its widths
resumed = run_trial(wide((128, 16), 3e-3, 0.3), Ctx(2), build_model=build_mlp, data=mnist_data)
# trial 3's model is 32/64 wide: trial 2's checkpoint is refused, it starts afresh
foreign = run_trial(wide((32, 64), 2e-3, 0.1), Ctx(3), build_model=build_mlp, data=mnist_data)
def named(p, settings):  # names that say the widths: the saved model keeps the trial's
    from search_spaces.keras.values import Dropout
    units = [layer["units"] for layer in p["layers"]]
    layers = [keras.Input(shape=(784,))]
    for i, u in enumerate(units):
        layers.append(keras.layers.Dense(u, activation="relu", name=f"hidden_{u}_{i}"))
        layers.append(Dropout(0.1, name=f"drop_{u}_{i}"))
    layers.append(keras.layers.Dense(10, activation="softmax", name="out"))
    return keras.Sequential(layers, name="mlp_" + "x".join(map(str, units)))
RESUME.clear()
cache().clear()
run_trial(wide((32, 64), 1e-3, 0.2), Ctx(20), build_model=named, data=mnist_data)
named_run = run_trial(wide((128, 16), 3e-3, 0.3), Ctx(21), build_model=named, data=mnist_data)
with tempfile.NamedTemporaryFile(suffix=".keras") as f:
    f.write(SAVED[-1]); f.flush()
    loaded = keras.saving.load_model(f.name)
slots = [v for v in loaded.optimizer.variables if len(v.shape) > 0]
named_saved = [named_run["compiled"]["reused"], loaded.name, [l.name for l in loaded.layers],
               int(loaded.optimizer.iterations), len(slots),
               min(float(abs(keras.ops.convert_to_numpy(v)).max()) for v in slots)]
print(json.dumps({"first": first, "cached": cached, "fresh": fresh, "back": back,
                  "named": named_saved,
                  "deeper": deeper, "cached_traces": cached_traces,
                  "saved": [cached_saved[0], [list(s) for s in cached_saved[1]]],
                  "resumed": [resumed["compiled"]["reused"], resumed["resumed_from_epoch"],
                              resumed["history"]["loss"]],
                  "foreign": [foreign["resumed_from_epoch"], len(foreign["history"]["loss"])],
                  "widths_free": resumed["compiled"]["widths_free"]}))
"""
)


def test_other_widths_reuse_one_traced_step_with_the_fresh_builds_losses() -> None:
    """On TensorFlow without XLA a cached model's weights and slots have no fixed shape: a
    trial at other widths (same depth, activation, optimizer) trains the cached model without
    a new trace, bit for bit as a fresh build of its widths, and saves a model of its widths."""
    out = run_keras_script(WIDTHS, "tensorflow")
    first, cached, fresh = out["first"], out["cached"], out["fresh"]
    back, deeper = out["back"], out["deeper"]
    assert not first["reused"] and cached["reused"] and back["reused"]
    assert out["cached_traces"] == 0
    assert first["key"] == cached["key"] == fresh["key"] != deeper["key"]
    assert not deeper["reused"]
    assert cached["history"] == fresh["history"]  # bit for bit
    assert out["saved"] == [[128, 16, 10], [[784, 128], [128], [128, 16], [16], [16, 10], [10]]]
    # a checkpoint restores into the cached model at the trial's widths, and goes on exactly
    assert out["resumed"] == [True, 1, fresh["history"]["loss"][1:]]
    assert out["widths_free"] is True
    assert out["foreign"] == [0, 2]  # another width's checkpoint: refused, trained afresh
    # review: the saved model has the trial's names (not the cached model's) and the trained
    # optimizer state (8 steps x 2 epochs; Adam: 2 slots of 6 variables, none left at zero)
    reused, name, layers, steps, slots, smallest = out["named"]
    assert reused and name == "mlp_128x16" and steps == 16 and slots == 12 and smallest > 0
    assert layers == ["hidden_128_0", "drop_128_0", "hidden_16_1", "drop_16_1", "out"]


def test_only_dense_models_on_flat_inputs_leave_their_widths_out() -> None:
    """Widths leave the key only where one traced step can take any width: Dense, Dropout
    and Activation layers on (batch, features) inputs, TensorFlow without XLA."""
    import keras

    from search_spaces.keras.compiled import architecture_key
    from search_spaces.keras.feed import batch_is_shape

    if keras.backend.backend() != "tensorflow" or batch_is_shape():
        pytest.skip("widths are shape where XLA compiles (JAX, TensorFlow with a GPU)")
    structure = ("adam", (), ("momentum>0", False), ("weight_decay", False))

    def key(model: object) -> str | None:
        return architecture_key(model, structure)[0]

    def functional(units: int) -> object:
        inputs = keras.Input((8,))
        hidden = keras.layers.Activation("relu")(keras.layers.Dense(units)(inputs))
        return keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Dropout(0.1)(hidden)))

    def sequence(units: int) -> object:  # a Dense on (batch, steps, features)
        return keras.Sequential([keras.Input((5, 8)), keras.layers.Dense(units)])

    def normalised(units: int) -> object:  # another layer: its shapes follow the width
        return keras.Sequential(
            [keras.Input((8,)), keras.layers.Dense(units), keras.layers.LayerNormalization()]
        )

    assert key(functional(4)) == key(functional(64)) is not None
    assert key(sequence(4)) != key(sequence(64))
    assert key(normalised(4)) != key(normalised(64))
    deeper = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4), keras.layers.Dense(3)])
    assert key(deeper) != key(keras.Sequential([keras.Input((8,)), keras.layers.Dense(3)]))
