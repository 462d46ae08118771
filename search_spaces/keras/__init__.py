"""Keras in one place: the space type (:mod:`.space`), the trial runner and its epoch callback
(:mod:`.training`) and the datasets (:mod:`.data`).

The worker never imports this package: it runs a Keras space's objective like any other, through
the :class:`search_spaces.base.TrialContext` protocol. Importing the package (or ``.space`` or
``.data``) does not import Keras; ``.training`` does, and is imported when the first trial runs.
"""

from __future__ import annotations

from search_spaces.keras.space import (
    OBJECTIVES,
    TRAINING_SETTINGS,
    BuildModel,
    KerasSearchSpace,
    LoadData,
    keras_space,
)

__all__ = [
    "OBJECTIVES",
    "TRAINING_SETTINGS",
    "BuildModel",
    "KerasSearchSpace",
    "LoadData",
    "keras_space",
]
