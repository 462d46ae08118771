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
import sys
import time
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
    #: whether trials of one architecture may share compiled functions (docs/keras.md); a
    #: model the runner cannot describe is built afresh anyway
    reuse_compiled: bool = True

    def warm_up(self, settings: Mapping[str, Any]) -> None:
        """Import Keras, load this space's data and fit one step of a model drawn from the
        space (the worker calls it before its first reservation: ``--warm``)."""
        from hyperopt.pyll import stochastic

        from search_spaces.keras.training import warm_up

        assert self.build_model is not None and self.data is not None
        params = stochastic.sample(self.hyperopt_space(settings), rng=_seeded_rng())
        warm_up(self.build_model, self.data, params, settings)


def _seeded_rng() -> Any:
    import numpy as np

    return np.random.default_rng(0)


def _train(
    build_model: BuildModel,
    data: LoadData,
    reuse: bool,
    params: dict[str, Any],
    ctx: TrialContext,
) -> dict[str, Any]:
    cold = "search_spaces.keras.training" not in sys.modules
    started = time.perf_counter()
    from search_spaces.keras.training import run_trial  # imports Keras: only when a trial runs

    import_s = time.perf_counter() - started if cold else 0.0
    result = run_trial(params, ctx, build_model=build_model, data=data, reuse=reuse)
    result["timing"]["import_s"] = import_s
    return result


def keras_space(
    name: str,
    build: Callable[[Mapping[str, Any]], Any],
    build_model: BuildModel,
    data: LoadData,
    settings: tuple[Setting, ...] = TRAINING_SETTINGS,
    description: str = "",
    reuse_compiled: bool = True,
) -> KerasSearchSpace:
    """A :class:`KerasSearchSpace` whose objective trains ``build_model`` on ``data``.

    Trials whose models have the same architecture share one compiled model
    (:mod:`search_spaces.keras.compiled`): ``build_model`` says what is a value by using
    ``search_spaces.keras.values.Dropout`` for dropout rates, and the optimizer's numbers are
    values for SGD, RMSprop, Adam and AdamW. ``reuse_compiled=False`` builds every trial afresh.
    """
    return KerasSearchSpace(
        name=name,
        build=build,
        objective=functools.partial(_train, build_model, data, reuse_compiled),
        settings=settings,
        description=description,
        build_model=build_model,
        data=data,
        reuse_compiled=reuse_compiled,
    )
