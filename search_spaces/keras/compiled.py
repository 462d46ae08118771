"""Compile once per architecture: a bounded per-process cache of compiled Keras models.

A trial builds its model from its params (cheap: no tracing) with its seed set, and the model's
*architecture key* says what its compiled train and test functions depend on: the model's
config with layer names and the value hyperparameters left out (:mod:`.values`), the
optimizer's structure, the batch sizes and ``steps_per_execution``. If a compiled model of that
key is in the cache, the trial trains that one: its weights, dropout seeds and rates are set
from the freshly built model, its optimizer's values from the trial's spec, its step and slots
to zero. So a trial run from the cache starts from exactly the state a fresh build would, and
its compiled functions are the ones a fresh build would trace (the test
``tests/search_spaces/test_compiled.py`` checks that the losses are the same, bit for bit).

When there is no key the trial builds and compiles afresh, never reuses: a model that is not a
plain ``Sequential`` or functional model, a layer or any object in its config from outside Keras
(a custom layer may keep state its config does not show), a ``Lambda`` layer, an optimizer or
an optimizer argument :data:`search_spaces.keras.values.OPTIMIZERS` does not list. ``reason``
says which.

**Widths are values too, on TensorFlow without XLA.** A model made only of ``Dense``,
``Dropout``, ``Activation`` and input layers (Sequential or functional) is keyed without its
layers' ``units``: its cached model's weights and optimizer slots are TensorFlow variables of
unknown shape (:func:`settle`), so one traced train and test step serves every width of that
depth, activation and optimizer, and a hit assigns the trial's differently shaped initial values
(:func:`_take_state`). A trial from such a model gives the same losses, bit for bit, as a fresh
build of the same width (the test checks it); the saved model is built from the trial's own
config (:func:`trial_config`). XLA (JAX, TensorFlow on a GPU) compiles per shape: there, widths
stay part of the key.

The cache holds :data:`DEFAULT_SIZE` models (``HYPERFLEET_MODEL_CACHE``: 0 turns reuse off),
least recently used first out.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import zlib
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

import search_spaces.keras.values as values

__all__ = [
    "DEFAULT_SIZE",
    "CompiledModels",
    "Prepared",
    "architecture_key",
    "build_lazily",
    "cache",
    "prepare",
    "settle",
    "trial_config",
    "trial_seed",
]

logger = logging.getLogger(__name__)

DEFAULT_SIZE = 8
SIZE_ENV = "HYPERFLEET_MODEL_CACHE"
#: layers from Keras that run code their config does not describe
_OPAQUE_LAYERS = ("Lambda", "TFSMLayer", "JaxLayer", "FlaxLayer", "TorchModuleWrapper")
#: the layers of a model whose widths may vary under one traced step (their ops take any width)
_WIDTH_FREE_LAYERS = ("InputLayer", "Dense", "Dropout", "Activation")
#: where a cached model keeps what :func:`settle` made shape-free
_FREE = "_hyperfleet_shape_free"


class CompiledModels:
    """Compiled models by architecture key, at most ``size``, least recently used out first."""

    def __init__(self, size: int) -> None:
        self.size = max(int(size), 0)
        self._models: OrderedDict[str, Any] = OrderedDict()

    def __len__(self) -> int:
        return len(self._models)

    def take(self, key: str) -> Any | None:
        model = self._models.get(key)
        if model is not None:
            self._models.move_to_end(key)
        return model

    def put(self, key: str, model: Any) -> None:
        if self.size == 0:
            return
        self._models[key] = model
        self._models.move_to_end(key)
        while len(self._models) > self.size:
            self._models.popitem(last=False)

    def discard(self, key: str | None) -> None:
        """Forget ``key`` (a fit that raised may have left its model half-way)."""
        if key is not None:
            self._models.pop(key, None)

    def clear(self) -> None:
        self._models.clear()


_cache: CompiledModels | None = None


def cache() -> CompiledModels:
    """This process's cache (sized by ``HYPERFLEET_MODEL_CACHE`` when first used)."""
    global _cache
    if _cache is None:
        raw = os.environ.get(SIZE_ENV, "").strip()
        size = DEFAULT_SIZE
        if raw:
            try:
                size = int(raw)
            except ValueError:
                # a bad setting must not fail every trial: one line, and the default
                logger.warning(
                    "%s=%r is not a whole number of models; using %d (0 turns reuse off)",
                    SIZE_ENV,
                    raw[:40],
                    DEFAULT_SIZE,
                )
        _cache = CompiledModels(size)
    return _cache


def trial_seed(exp_key: str | None, tid: int) -> int:
    """The seed of a trial's weights, dropout masks and data order: the same for every attempt
    of one trial, different between trials."""
    return zlib.crc32(f"{exp_key}/{tid}".encode()) % (2**31 - 1) + 1


def _layers(model: Any) -> list[Any]:
    found: list[Any] = []
    for layer in model.layers:
        found.append(layer)
        if hasattr(layer, "layers"):
            found.extend(_layers(layer))
    return found


def _foreign(config: Any) -> str | None:
    """The first object in ``config`` that comes from outside Keras (``module`` not keras)."""
    if isinstance(config, Mapping):
        module = config.get("module")
        if isinstance(module, str) and not (
            module == "keras" or module.startswith("keras.") or module == values.__name__
        ):
            return f"{config.get('class_name')} from {module}"
        for item in config.values():
            found = _foreign(item)
            if found:
                return found
    elif isinstance(config, (list, tuple)):
        for item in config:
            found = _foreign(item)
            if found:
                return found
    return None


def _layer_names(config: Any) -> list[str]:
    """Every layer name in ``config`` (input layers, nested models' layers too), in order."""
    found: list[str] = []
    if isinstance(config, Mapping):
        for entry in config.get("layers") or ():
            inner = entry.get("config") if isinstance(entry, Mapping) else None
            if isinstance(inner, Mapping) and isinstance(inner.get("name"), str):
                found.append(inner["name"])
                found.extend(_layer_names(inner))
    return found


def _renamed(config: Any, names: Mapping[str, str]) -> Any:
    """``config`` with layer and model names replaced by their position (names are counters)."""
    if isinstance(config, Mapping):
        out = {}
        for key, item in config.items():
            if key == "name" and isinstance(item, str) and item in names:
                out[key] = names[item]
            elif key == "keras_history" and isinstance(item, list) and item:
                out[key] = [names.get(item[0], item[0]), *item[1:]]
            elif key in ("input_layers", "output_layers") and isinstance(item, list):
                if item and isinstance(item[0], str):  # one input or output: [name, 0, 0]
                    out[key] = [names.get(item[0], item[0]), *item[1:]]
                else:
                    out[key] = [
                        [names.get(x[0], x[0]), *x[1:]] if isinstance(x, list) and x else x
                        for x in item
                    ]
            else:
                out[key] = _renamed(item, names)
        return out
    if isinstance(config, (list, tuple)):
        return [_renamed(item, names) for item in config]
    return config


def _widths_free(model: Any, layers: list[Any]) -> bool:
    """Whether ``model``'s widths can be left out of its key: TensorFlow without XLA (a traced
    function takes tensors of any shape), inputs of (batch, features), only the layers of
    :data:`_WIDTH_FREE_LAYERS`, a ``Dense`` without LoRA or quantization."""
    from search_spaces.keras.feed import batch_is_shape

    if keras.backend.backend() != "tensorflow" or batch_is_shape():
        return False
    inputs = getattr(model, "inputs", None) or []
    if not inputs or any(len(tensor.shape) != 2 for tensor in inputs):
        return False  # a Dense on a sequence or an image multiplies in more than 2 dims
    for layer in layers:
        name = type(layer).__name__
        if name not in _WIDTH_FREE_LAYERS or not (
            type(layer) is values.Dropout or type(layer).__module__.startswith("keras.")
        ):
            return False
        if name == "Dense" and (
            getattr(layer, "lora_enabled", False) or getattr(layer, "quantization_mode", None)
        ):
            return False
    return True


def _without_widths(config: Any) -> Any:
    """``config`` without what a width changes: ``Dense`` units, layers' build shapes and the
    shapes of functional models' connecting tensors (the input layers keep theirs)."""
    if isinstance(config, Mapping):
        out = {}
        for key, item in config.items():
            if key == "build_config":
                continue
            if key == "config" and isinstance(item, Mapping):
                kind = config.get("class_name")
                if kind == "Dense":
                    item = {k: v for k, v in item.items() if k != "units"}
                elif kind == "__keras_tensor__":
                    item = {k: v for k, v in item.items() if k != "shape"}
            out[key] = _without_widths(item)
        return out
    if isinstance(config, (list, tuple)):
        return [_without_widths(item) for item in config]
    return config


def _model_signature(model: Any) -> tuple[str | None, str]:
    kind = type(model)
    plain = kind.__name__ in ("Sequential", "Functional") and kind.__module__.startswith("keras.")
    if not plain:
        return None, f"a {kind.__name__} model (only Sequential and functional models are reused)"
    if not model.built:
        return None, "the model is not built (give it a keras.Input)"
    layers = _layers(model)
    for layer in layers:
        cls = type(layer)
        if cls is values.Dropout:
            continue
        if not cls.__module__.startswith("keras.") or cls.__name__ in _OPAQUE_LAYERS:
            return None, f"layer {cls.__name__} from {cls.__module__} (its config may not say all)"
    config = model.get_config()
    foreign = _foreign(config)
    if foreign:
        return None, f"{foreign} in the model's config"
    names = {model.name: "#model"}
    for i, name in enumerate(_layer_names(config)):
        names.setdefault(name, f"#{i}")
    shape = "widths free" if _widths_free(model, layers) else "shapes fixed"
    if shape == "widths free":
        config = _without_widths(config)
    text = json.dumps(
        [kind.__name__, shape, _renamed(config, names)],
        sort_keys=True,
        default=_in_key,
        allow_nan=True,
    )
    return text, ""


def _in_key(value: Any) -> Any:
    """What a config value that JSON cannot hold contributes to the key: an array (NumPy or a
    backend tensor, e.g. a ``Discretization``'s boundaries or a ``Constant`` initializer) by
    its dtype, shape and a digest of all its bytes (``repr`` shortens arrays of over 1,000
    numbers, so two different arrays would share a key); anything else by ``repr``."""
    if isinstance(value, np.generic):
        return value.item()
    if not isinstance(value, np.ndarray) and hasattr(value, "shape") and hasattr(value, "dtype"):
        try:
            value = keras.ops.convert_to_numpy(value)
        except Exception:  # noqa: BLE001 - not a tensor after all: its repr
            return repr(value)
    if isinstance(value, np.ndarray):
        data = np.ascontiguousarray(value)
        digest = hashlib.sha1(data.tobytes()).hexdigest()
        return ["ndarray", str(data.dtype), list(data.shape), digest]
    return repr(value)


def architecture_key(
    model: Any, optimizer_structure: tuple[Any, ...] | None, **fit: Any
) -> tuple[str | None, str]:
    """(key, "") for a model whose compiled functions may be shared, else (None, reason).
    ``fit``: what else the compiled functions depend on (batch sizes, steps per execution)."""
    if optimizer_structure is None:
        return None, "an optimizer or optimizer argument without a value rule (values.OPTIMIZERS)"
    policy = str(getattr(getattr(model, "dtype_policy", None), "name", ""))
    if policy.startswith("mixed"):
        # compile wraps the optimizer in a LossScaleOptimizer, whose scale a reset must keep
        return None, f"mixed precision ({policy}): its loss-scale optimizer is not reset"
    signature, reason = _model_signature(model)
    if signature is None:
        return None, reason
    text = json.dumps(
        [keras.backend.backend(), signature, repr(optimizer_structure), sorted(fit.items())]
    )
    return hashlib.sha1(text.encode()).hexdigest()[:16], ""


@dataclass
class Prepared:
    """The compiled model a trial trains and where it came from."""

    model: Any
    reused: bool
    key: str | None
    reason: str  #: why there is no key ("" when there is one)
    #: the trial's own model (lazily built) when ``model`` is a cached widths-free one: its
    #: config is the trial's (``model``'s says the widths of the trial that compiled it)
    own: Any = None
    #: a widths-free key's new model, cached by :func:`settle` once its training state is built
    unsettled: bool = False

    @property
    def widths_free(self) -> bool:
        return self.key is not None and (self.unsettled or hasattr(self.model, _FREE))


def build_lazily(build: Callable[[], Any]) -> Any | None:
    """``build()`` in a Keras ``StatelessScope``: the model's variables are made but not
    initialised (each keeps its initializer, whose seed was drawn as a real build draws it), so
    a cache hit takes the initial values without creating a framework variable. None (build it
    for real) where the build does something a stateless scope refuses, leaves a variable
    initialised, or *sets* a variable (``set_weights``, ``load_weights``, ``adapt``: the scope
    would record the update and drop it, and a hit would train from the initializers' values)."""
    pending = _pending_variables()
    before = len(pending) if pending is not None else 0
    try:
        with keras.StatelessScope(initialize_variables=False) as scope:
            model = build()
    except Exception:  # noqa: BLE001 - any refusal means: build it for real
        return None
    finally:
        # Keras lists every deferred variable to initialise later; these never will be (a hit
        # copies their values, a miss builds again): without this the list grows every trial
        if pending is not None:
            del pending[before:]
    if scope.state_mapping or scope.losses:
        return None
    if not all(_deferred(v) for v in getattr(model, "variables", ())):
        return None
    return model


def _pending_variables() -> list[Any] | None:
    try:
        from keras.src.backend.common import global_state
    except ImportError:
        return None
    pending = global_state.get_global_attribute("uninitialized_variables")
    return pending if isinstance(pending, list) else None


def _deferred(variable: Any) -> bool:
    return getattr(variable, "_value", None) is None and callable(
        getattr(variable, "_initializer", None)
    )


def _take_state(target: Any, source: Any) -> bool:
    """Copy every variable of ``source`` (weights, dropout rates, seed states) into ``target``
    (a lazily built ``source``: its variables' initial values); False (nothing copied) if they
    do not line up. A shape-free variable of ``target`` (:func:`settle`) takes any shape of its
    rank, and its optimizer slots are given the same shape."""
    free = getattr(target, _FREE, None)
    shape_free = free.variables if free is not None else set()
    pairs = list(zip(target.variables, source.variables, strict=False))
    if len(target.variables) != len(source.variables) or any(
        t.dtype != s.dtype
        or len(t.shape) != len(s.shape)
        or (tuple(t.shape) != tuple(s.shape) and id(t) not in shape_free)
        for t, s in pairs
    ):
        return False
    for t, s in pairs:
        if tuple(t.shape) != tuple(s.shape):
            t._shape = tuple(s.shape)  # its TensorFlow variable has no fixed shape
        t.assign(s._initializer(s.shape, dtype=s.dtype) if _deferred(s) else s)
    if free is not None:
        for slot, reference in free.slots:
            slot._shape = tuple(reference.shape)  # set_values zeroes it at that shape
    return True


@dataclass
class _ShapeFree:
    """What :func:`settle` made shape-free: variable ids, and (slot, its variable) pairs."""

    variables: set[int]
    slots: list[tuple[Any, Any]]


def _slots(model: Any) -> list[tuple[Any, Any]] | None:
    """The optimizer's slots paired with the trainable variable each belongs to (the lists of
    the optimizer's attributes that line up with ``model.trainable_variables``); None when a
    variable of the optimizer with a shape is in no such list (its shape could not follow)."""
    optimizer = getattr(model, "optimizer", None)
    if optimizer is None or not optimizer.built:
        return None
    trainable = list(model.trainable_variables)
    pairs: list[tuple[Any, Any]] = []
    for item in vars(optimizer).values():
        if (
            isinstance(item, list)
            and trainable
            and len(item) == len(trainable)
            and all(isinstance(slot, keras.Variable) for slot in item)
            and not any(a is b for a, b in zip(item, trainable, strict=True))  # not slots
            and all(tuple(a.shape) == tuple(b.shape) for a, b in zip(item, trainable, strict=True))
        ):
            pairs.extend(zip(item, trainable, strict=True))
    paired = {id(slot) for slot, _ in pairs}
    if any(len(v.shape) and id(v) not in paired for v in optimizer.variables):
        return None
    return pairs


def settle(prepared: Prepared, models: CompiledModels) -> None:
    """Cache a new model of a widths-free key once its optimizer and metrics are built (before
    ``fit`` traces its step): its weights and optimizer slots become TensorFlow variables of
    unknown shape, so the step traced for it serves every width. A model whose state does not
    allow it (an optimizer not built yet, a variable other than a weight or a slot with a
    shape) trains as built and is not cached."""
    if not prepared.unsettled:
        return
    prepared.unsettled = False
    model = prepared.model
    slots = _slots(model)
    others = [
        v
        for v in model.non_trainable_variables
        if len(v.shape) and not v.path.endswith("seed_generator_state")
    ]
    if slots is None or others or getattr(model, "train_function", None) is not None:
        prepared.reason = "its training state could not be made shape-free (not cached)"
        return
    import tensorflow as tf

    free = [*model.trainable_variables, *(slot for slot, _ in slots)]
    for variable in free:
        old = variable._value
        variable._value = tf.Variable(
            old.read_value(),
            shape=tf.TensorShape([None] * old.shape.rank),
            trainable=old.trainable,
            dtype=old.dtype,
            name=old.name.split(":")[0],
        )
    optimizer = model.optimizer
    # the optimizer finds a variable's slots by its TensorFlow variable's id: the new ones'
    optimizer._trainable_variables_indices = {
        optimizer._var_key(v): i for i, v in enumerate(optimizer._trainable_variables)
    }
    setattr(model, _FREE, _ShapeFree({id(v) for v in free}, slots))
    models.put(prepared.key, model)


def trial_config(prepared: Prepared) -> tuple[Any, dict[str, str]] | None:
    """The architecture the trial trained where the cached model's config is not it (a cached
    widths-free model says the widths of the trial that compiled it): the trial's own config
    (its widths, its names) and which of the cached model's layers each of its layers is
    (``{own name: cached name}``, by position); None where the cached model's config is the
    trial's."""
    own = prepared.own
    if own is None:
        return None
    model = prepared.model
    config = own.get_config()
    names = {own.name: model.name}
    names.update(zip(_layer_names(config), _layer_names(model.get_config()), strict=False))
    return config, names


def prepare(
    fresh: Any,
    optimizer: Mapping[str, Any],
    compile_args: Mapping[str, Any],
    models: CompiledModels,
    reuse: bool = True,
    *,
    rebuild: Callable[[bool], Any] | None = None,
    **fit: Any,
) -> Prepared:
    """The compiled model to train for a trial whose freshly built (uncompiled) model is
    ``fresh``: a cached one of the same architecture set to ``fresh``'s state, or ``fresh``
    itself compiled (and cached, when it has a key). A lazily built ``fresh``
    (:func:`build_lazily`) that misses the cache is replaced by ``rebuild(never_reused)``, a
    real build with the same seed (``never_reused``: the model has no key)."""
    structure = values.optimizer_structure(optimizer) if reuse and models.size else None
    key, reason = None, "reuse is off for this space"
    if not models.size:
        reason = f"the cache is off ({SIZE_ENV}=0)"
    elif reuse:
        key, reason = architecture_key(fresh, structure, **fit)
    if key is not None:
        cached = models.take(key)
        if cached is not None and _take_state(cached, fresh):
            values.set_values(cached.optimizer, optimizer)
            own = fresh if hasattr(cached, _FREE) else None
            return Prepared(cached, True, key, "", own=own)
    if rebuild is not None and any(_deferred(v) for v in fresh.variables):
        fresh = rebuild(key is None)
    made = values.make_optimizer(optimizer) if key is not None else None
    if made is not None:
        compiled_optimizer = made[0]
    else:
        kwargs = {k: v for k, v in optimizer.items() if k != "name"}
        compiled_optimizer = type(keras.optimizers.get(optimizer["name"]))(**kwargs)
    fresh.compile(optimizer=compiled_optimizer, **compile_args)
    unsettled = key is not None and _widths_free(fresh, _layers(fresh))
    if key is not None and not unsettled:
        models.put(key, fresh)
    return Prepared(fresh, False, key, reason, unsettled=unsettled)
