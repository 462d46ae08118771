"""Keras search spaces: a :class:`SearchSpace` whose trials train a Keras model.

A Keras space gives two functions and gets the training for free
(:mod:`search_spaces.keras.training`): ``build_model(params, settings)`` returns an uncompiled
``keras.Model`` (its input shape decides how the images are shaped) and ``data(input_shape,
settings)`` returns :class:`search_spaces.keras.data.Splits`. Parameters must hold ``optimizer``
(``{"name": ..., **kwargs}``) and ``batch_size``; settings must hold ``epochs`` and ``objective``.

Importing this module imports neither Keras nor TensorFlow: they load in the process that runs
trials, on the first trial.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from search_spaces.base import SearchSpace, Setting, TrialContext

OBJECTIVES = ("val_loss", "val_error")

#: settings every Keras space understands (add your data's own, like ``train_size``)
TRAINING_SETTINGS = (
    Setting("epochs", 2, "training epochs per trial (the lecture trains 2)", int, min=1),
    Setting(
        "objective",
        "val_loss",
        "what the search minimises: val_loss (cross-entropy) or val_error (1 - accuracy)",
        str,
        choices=OBJECTIVES,
    ),
)

BuildModel = Callable[[dict[str, Any], Mapping[str, Any]], Any]
LoadData = Callable[[tuple[int, ...], Mapping[str, Any]], Any]


@dataclass(frozen=True)
class KerasSearchSpace(SearchSpace):
    """A search space trained by the shared Keras trial runner; ``data`` also serves the test
    set to ``hyperfleet best --evaluate``."""

    build_model: BuildModel | None = None
    data: LoadData | None = None


def _train(
    build_model: BuildModel, data: LoadData, params: dict[str, Any], ctx: TrialContext
) -> dict[str, Any]:
    from search_spaces.keras.training import run_trial  # imports Keras: only when a trial runs

    return run_trial(params, ctx, build_model=build_model, data=data)


def keras_space(
    name: str,
    build: Callable[[Mapping[str, Any]], Any],
    build_model: BuildModel,
    data: LoadData,
    settings: tuple[Setting, ...] = TRAINING_SETTINGS,
    description: str = "",
) -> KerasSearchSpace:
    """A :class:`KerasSearchSpace` whose objective trains ``build_model`` on ``data``."""
    return KerasSearchSpace(
        name=name,
        build=build,
        objective=functools.partial(_train, build_model, data),
        settings=settings,
        description=description,
        build_model=build_model,
        data=data,
    )
