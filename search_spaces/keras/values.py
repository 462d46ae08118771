"""Hyperparameters that are values of the compiled step, not constants of it.

Two trials whose models differ only in a learning rate, a momentum or a dropout rate can run the
same compiled train and test functions if those numbers are *variables* the functions read, not
constants traced into them (:mod:`search_spaces.keras.compiled` keeps the compiled models).

- :class:`Dropout` is ``keras.layers.Dropout`` with its rate in a (non-trainable) variable. A
  space's ``build_model`` uses it for rates that vary between trials; a plain
  ``keras.layers.Dropout`` keeps its rate a constant, so two rates are two architectures.
- :func:`make_optimizer` builds SGD, RMSprop, Adam and AdamW with their numeric hyperparameters
  (:data:`OPTIMIZERS`) in variables; the rest of the spec (``nesterov``, ``amsgrad``,
  ``centered``, whether momentum is 0, clipping) is the optimizer's structure, returned with it
  for the cache key. Any other optimizer, or an argument not listed, returns None: the trial
  builds and compiles a fresh model, as before.
- :func:`plain_copy` turns such a model into one of plain Keras layers and optimizer, which is
  what a trial saves (a saved ``.keras`` file loads without hyperfleet installed).

Imports Keras: imported by :mod:`search_spaces.keras.training` and by ``build_model`` functions.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import keras
from keras import ops

__all__ = [
    "OPTIMIZERS",
    "Dropout",
    "OptimizerRule",
    "make_optimizer",
    "optimizer_structure",
    "plain_copy",
    "set_values",
]


@keras.saving.register_keras_serializable(package="hyperfleet")
class Dropout(keras.layers.Layer):
    """Inverted dropout whose rate is a variable: a new rate needs no new trace.

    ``rate`` must be in [0, 1). Its random stream is not ``keras.layers.Dropout``'s (the same
    seed gives other masks), its arithmetic is the same: ``x / (1 - rate)`` where kept, else 0.
    """

    def __init__(self, rate: float, seed: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not 0.0 <= float(rate) < 1.0:
            raise ValueError(f"dropout rate {rate}: choose 0 <= rate < 1")
        self.initial_rate = float(rate)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.rate = self.add_weight(
            shape=(),
            initializer=keras.initializers.Constant(self.initial_rate),
            trainable=False,
            name="rate",
        )
        self.supports_masking = True
        self.built = True

    def call(self, inputs: Any, training: bool = False) -> Any:
        if not training:
            return inputs
        rate = ops.cast(self.rate, inputs.dtype)
        shape, dtype = ops.shape(inputs), inputs.dtype
        noise = keras.random.uniform(shape, seed=self.seed_generator, dtype=dtype)
        return ops.where(noise >= rate, ops.divide(inputs, 1.0 - rate), ops.zeros_like(inputs))

    def compute_output_shape(self, input_shape: Any) -> Any:
        return input_shape

    def get_config(self) -> dict[str, Any]:
        """The rate is a value: it is left out, so two rates give one architecture."""
        return {**super().get_config(), "seed": self.seed}

    def current_rate(self) -> float:
        return float(ops.convert_to_numpy(self.rate))


@dataclass(frozen=True)
class OptimizerRule:
    """Which arguments of one optimizer class are fed as variables (``values``) and which stay
    constants of the compiled step (``structure``, part of the cache key)."""

    values: tuple[str, ...]
    structure: tuple[str, ...]


_CLIPPING = ("clipnorm", "clipvalue", "global_clipnorm")

#: what each optimizer's arguments are; an argument listed in neither makes a fresh build
OPTIMIZERS: dict[str, OptimizerRule] = {
    # momentum is a value, but whether it is 0 is structure (SGD keeps no velocity at 0)
    "sgd": OptimizerRule(("learning_rate", "momentum", "weight_decay"), ("nesterov", *_CLIPPING)),
    # RMSprop's momentum is read by Python branches (> 0): it stays a constant
    "rmsprop": OptimizerRule(
        ("learning_rate", "rho", "epsilon", "weight_decay"), ("momentum", "centered", *_CLIPPING)
    ),
    "adam": OptimizerRule(
        ("learning_rate", "beta_1", "beta_2", "epsilon", "weight_decay"), ("amsgrad", *_CLIPPING)
    ),
    "adamw": OptimizerRule(
        ("learning_rate", "beta_1", "beta_2", "epsilon", "weight_decay"), ("amsgrad", *_CLIPPING)
    ),
}


class _SGD(keras.optimizers.SGD):
    """SGD whose momentum is read from a variable (Keras's SGD reads a Python float)."""

    def update_step(self, gradient: Any, variable: Any, learning_rate: Any) -> None:
        learning_rate = ops.cast(learning_rate, variable.dtype)
        gradient = ops.cast(gradient, variable.dtype)
        if self.momentum == 0:  # structure: the float given at construction
            self.assign_sub(variable, ops.multiply(gradient, learning_rate))
            return
        m = self.momentums[self._get_variable_index(variable)]
        momentum = ops.cast(self.momentum_value, variable.dtype)
        step = ops.multiply(gradient, learning_rate)
        self.assign(m, ops.subtract(ops.multiply(m, momentum), step))
        if self.nesterov:
            self.assign_add(variable, ops.subtract(ops.multiply(m, momentum), step))
        else:
            self.assign_add(variable, m)


def _attribute(name: str, key: str) -> str:
    """Where the optimizer keeps ``key``'s variable (SGD keeps its float momentum too)."""
    return "momentum_value" if name == "sgd" and key == "momentum" else key


@functools.cache
def _optimizer_class(name: str) -> type:
    """The class of optimizer ``name`` (``keras.optimizers.get`` builds an instance to say it:
    once per name, not once per trial)."""
    return _SGD if name == "sgd" else type(keras.optimizers.get(name))


def _value_variable(optimizer: Any, name: str, value: float) -> Any:
    with keras.name_scope(optimizer.name):
        return keras.Variable(
            float(value), name=name, dtype=keras.config.floatx(), trainable=False
        )  # an attribute of the optimizer: its tracker adds it to ``optimizer.variables``


def optimizer_structure(spec: Mapping[str, Any]) -> tuple[Any, ...] | None:
    """What of ``spec`` the compiled step depends on (the cache key's part), or None when this
    spec is not covered. Builds nothing."""
    name = str(spec.get("name", "")).lower()
    rule = OPTIMIZERS.get(name)
    kwargs = {k: v for k, v in spec.items() if k != "name"}
    if rule is None or any(k not in rule.values and k not in rule.structure for k in kwargs):
        return None
    if any(not isinstance(kwargs[k], (int, float)) for k in rule.values if k in kwargs):
        return None  # a schedule or a callable: not a value
    return (
        name,
        tuple(sorted((k, repr(v)) for k, v in kwargs.items() if k in rule.structure)),
        ("momentum>0", float(kwargs.get("momentum", 0.0)) > 0),
        ("weight_decay", kwargs.get("weight_decay") is not None),
    )


def make_optimizer(spec: Mapping[str, Any]) -> tuple[Any, tuple[Any, ...]] | None:
    """``{"name": "adam", "learning_rate": 1e-3, ...}`` -> (an optimizer whose numeric
    hyperparameters are variables, its structure), or None when this spec is not covered."""
    structure = optimizer_structure(spec)
    if structure is None:
        return None
    name = str(spec.get("name", "")).lower()
    rule = OPTIMIZERS[name]
    kwargs = {k: v for k, v in spec.items() if k != "name"}
    floats = {k: float(v) if k in rule.values else v for k, v in kwargs.items()}
    floats["name"] = name  # also the prefix of its variables' paths (plain_copy matches them)
    optimizer = _optimizer_class(name)(**floats)
    for key in rule.values:
        if key == "learning_rate" or getattr(optimizer, key, None) is None:
            continue  # learning_rate: Keras keeps it in a variable already
        variable = _value_variable(optimizer, key, getattr(optimizer, key))
        setattr(optimizer, _attribute(name, key), variable)
    return optimizer, structure


def set_values(optimizer: Any, spec: Mapping[str, Any]) -> None:
    """Start ``optimizer`` afresh for ``spec`` (same structure): its value variables take the
    spec's numbers (the class defaults where the spec has none), step and slots go to zero."""
    name = str(spec["name"]).lower()
    defaults = inspect.signature(_optimizer_class(name).__init__).parameters
    fed = set()
    for key in OPTIMIZERS[name].values:
        attr = _attribute(name, key)
        variable = optimizer.learning_rate if key == "learning_rate" else getattr(optimizer, attr)
        if variable is None or isinstance(variable, (int, float)):
            continue
        value = spec.get(key, defaults[key].default)
        variable.assign(float(value))
        fed.add(id(variable))
    for variable in optimizer.variables:
        if id(variable) not in fed and id(variable) != id(optimizer.learning_rate):
            variable.assign(ops.zeros(variable.shape, variable.dtype))  # step and slots


def _plain_config(config: Any, rates: Mapping[str, float]) -> Any:
    """``config`` with each :class:`Dropout` entry turned into ``keras.layers.Dropout``."""
    if isinstance(config, list):
        return [_plain_config(item, rates) for item in config]
    if not isinstance(config, dict):
        return config
    if config.get("class_name") == "Dropout" and config.get("module") == __name__:
        inner = dict(config["config"])
        inner["rate"] = rates[inner["name"]]
        return {**config, "module": "keras.layers", "registered_name": None, "config": inner}
    return {k: _plain_config(v, rates) for k, v in config.items()}


def _own_config() -> Any:
    """Keras's safe mode off while a live model of this process is rebuilt from its own config:
    a ``Lambda`` layer's function came from the space's code here, not from a file (saved files
    are still loaded in safe mode)."""
    try:
        from keras.src.saving.serialization_lib import SafeModeScope
    except ImportError:
        return contextlib.nullcontext()
    return SafeModeScope(False)


def plain_copy(
    model: Any,
    optimizer: Mapping[str, Any],
    *,
    architecture: tuple[Any, Mapping[str, str]] | None = None,
    **compile_args: Any,
) -> Any:
    """A copy of ``model`` built of plain Keras: each :class:`Dropout` becomes
    ``keras.layers.Dropout`` at its current rate, the optimizer a plain one from ``optimizer``
    (the spec) with the trained step and slots. Weights are copied. This is what gets saved.
    ``architecture``: (config, {its layer names: ``model``'s}) where ``model``'s own config is
    not the trial's (a cached widths-free model:
    :func:`search_spaces.keras.compiled.trial_config`): the copy is built from that config,
    with its names, and takes the state of ``model``'s corresponding layers."""
    config, names = architecture if architecture is not None else (model.get_config(), {})
    rates = {
        layer.name: layer.current_rate() for layer in model.layers if isinstance(layer, Dropout)
    }
    rates.update({own: rates[cached] for own, cached in names.items() if cached in rates})
    with _own_config():
        copy = type(model).from_config(_plain_config(config, rates))
    for target in copy.layers:
        if target.weights:
            source = model.get_layer(names.get(target.name, target.name))
            target.set_weights(source.get_weights())
    kwargs = {k: v for k, v in optimizer.items() if k != "name"}
    plain = type(keras.optimizers.get(str(optimizer["name"]).lower()))(**kwargs)
    copy.compile(optimizer=plain, **compile_args)
    trained = getattr(model, "optimizer", None)  # absent before compile
    if trained is not None and trained.built:
        plain.build(copy.trainable_variables)
        by_path = {v.path.split("/", 1)[-1]: v for v in trained.variables}
        # a slot's name starts with its variable's path: the copy's path -> ``model``'s
        prefixes: dict[str, str] = {}
        mine_all, theirs_all = copy.trainable_variables, model.trainable_variables
        if names and len(mine_all) == len(theirs_all):
            for mine, theirs in zip(mine_all, theirs_all, strict=True):
                prefixes[mine.path.replace("/", "_")] = theirs.path.replace("/", "_")
        for variable in plain.variables:
            key = _slot_source(variable.path.split("/", 1)[-1], prefixes)
            source = by_path.get(key)
            if source is not None and tuple(source.shape) == tuple(variable.shape):
                variable.assign(source)
    return copy


def _slot_source(key: str, prefixes: Mapping[str, str]) -> str:
    """``key`` (an optimizer variable's name) with the longest variable path it starts with
    replaced by the corresponding path of the source model."""
    for mine in sorted(prefixes, key=len, reverse=True):
        if key.startswith(mine + "_"):
            return prefixes[mine] + key[len(mine) :]
    return key
