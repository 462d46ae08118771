"""The spaces of tests/coordinator/test_importance.py: objectives whose answer is known."""

from __future__ import annotations

from hyperopt import hp

from search_spaces import SearchSpace


def xyz_space(settings):
    return {
        "x": hp.uniform("x", -5.0, 5.0),
        "y": hp.uniform("y", -5.0, 5.0),
        "z": hp.loguniform("z", -5.0, 0.0),
    }


def _x_only(params, ctx):
    return {"loss": params["x"] ** 2, "status": "ok"}


xyz = SearchSpace("imp_xyz", xyz_space, _x_only, (), "loss = x**2; y and z do not matter")
