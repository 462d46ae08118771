"""A search space for the inspection tests (loaded with ``--spaces``): a log-scaled learning
rate, a nested choice of optimizer, a categorical width, per-epoch ``loss``/``val_loss`` like a
Keras history, and a deterministic failure every ``fail_every``-th trial id."""

from __future__ import annotations

import math
import time

from hyperopt import hp

from search_spaces import SearchSpace, Setting


def _space(settings):
    return {
        "lr": hp.loguniform("lr", math.log(1e-4), math.log(1.0)),
        "optimizer": hp.choice(
            "optimizer",
            [
                {"name": "sgd", "momentum": hp.uniform("momentum", 0.0, 0.99)},
                {"name": "adam"},
            ],
        ),
        "units": hp.choice("units", [16, 32, 64]),
    }


def _curves(params, ctx):
    if ctx.settings["fail_every"] and ctx.tid % ctx.settings["fail_every"] == 1:
        raise ValueError(f"trial {ctx.tid} diverged on purpose (fail_every)")
    # best near lr=1e-2; adam and wider layers help a little
    base = (math.log10(params["lr"]) + 2.0) ** 2 + 0.1
    base *= 0.8 if params["optimizer"]["name"] == "adam" else 1.0
    base *= {16: 1.2, 32: 1.0, 64: 0.9}[params["units"]]
    val = base
    for epoch in range(ctx.settings["epochs"]):
        time.sleep(ctx.settings["sleep"])
        val = base * (1 + 2.0 / (epoch + 1))
        ctx.report_epoch(
            {"epoch": epoch + 1, "loss": val * 0.9, "val_loss": val, "val_accuracy": 1 / (1 + val)}
        )
    return {"loss": val, "status": "ok", "val_accuracy": 1 / (1 + val), "epochs_run": epoch + 1}


curves = SearchSpace(
    "curves",
    _space,
    _curves,
    (
        Setting("epochs", 4, "epochs", int, min=1),
        Setting("sleep", 0.02, "seconds per epoch", float, min=0.0),
        Setting("fail_every", 0, "fail trials whose tid % fail_every == 1 (0: never)", int),
    ),
    "per-epoch val_loss, log-scaled lr, nested choice (inspection tests)",
)
