"""Search spaces used by the tests through ``--spaces``: objectives that raise, diverge, crash
their process or take their time, so the tests can drive real failures through real workers."""

from __future__ import annotations

import os
import signal
import time

from hyperopt import hp

from search_spaces import SearchSpace, Setting


def _x_space(settings):
    return {"x": hp.uniform("x", -1.0, 1.0)}


def _boom(params, ctx):
    if params["x"] > ctx.settings["threshold"]:
        raise ValueError(f"x={params['x']:.3f} is too large for this objective")
    return {"loss": params["x"] ** 2, "status": "ok"}


def _nan(params, ctx):
    return {"loss": float("nan"), "status": "ok"}


def _crash(params, ctx):
    mode = ctx.settings["mode"]
    marker = ctx.settings["once_dir"]
    if marker:  # crash only on a trial's first attempt
        path = os.path.join(marker, f"{ctx.exp_key}-{ctx.tid}")
        if os.path.exists(path):
            return {"loss": params["x"] ** 2, "status": "ok"}
        open(path, "w").close()
    if mode == "exit":
        os._exit(3)
    if mode == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    return {"loss": params["x"] ** 2, "status": "ok"}


def _epochs(params, ctx):
    for epoch in range(ctx.settings["epochs"]):
        time.sleep(ctx.settings["sleep"])
        ctx.report_epoch({"epoch": epoch + 1, "loss": params["x"] ** 2 + 1.0 / (epoch + 1)})
        if ctx.should_stop():
            return {
                "loss": params["x"] ** 2,
                "status": "ok",
                "stopped_early": True,
                "epochs_run": epoch + 1,
            }
    return {"loss": params["x"] ** 2, "status": "ok", "epochs_run": ctx.settings["epochs"]}


def _nan_epochs(params, ctx):
    diverged = params["x"] > ctx.settings["above"]  # a diverged training: NaN from epoch 1
    loss = float("nan")
    for epoch in range(ctx.settings["epochs"]):
        loss = float("nan") if diverged else params["x"] ** 2 + 1.0 / (epoch + 1)
        ctx.report_epoch({"epoch": epoch + 1, "loss": loss})
        if ctx.should_stop():  # as the Keras spaces: the last reported value is the loss
            return {"loss": loss, "status": "ok", "stopped_early": True}
    return {"loss": loss, "status": "ok"}


boom = SearchSpace(
    "boom",
    _x_space,
    _boom,
    (Setting("threshold", 0.0, "raise when x is above", float),),
    "raises ValueError for x > threshold",
)
nan = SearchSpace("nan", _x_space, _nan, (), "always a NaN loss")
crash = SearchSpace(
    "crash",
    _x_space,
    _crash,
    (
        Setting("mode", "exit", "how the trial dies", str, choices=("exit", "kill", "none")),
        Setting("once_dir", "", "crash only on the first attempt (marker files here)", str),
    ),
    "kills its own process",
)
epochs = SearchSpace(
    "epochs",
    _x_space,
    _epochs,
    (Setting("epochs", 5, "epochs", int, min=1), Setting("sleep", 0.2, "seconds per epoch", float)),
    "reports per-epoch metrics",
)


def _resumable(params, ctx):
    """Trains ``epochs`` epochs of a counter, checkpointing after each; an attempt that takes
    the trial over resumes from the checkpoint. The result says which epochs this attempt
    trained, so a test can tell a resume from a restart."""
    checkpoint = ctx.load_checkpoint()
    start = 0 if checkpoint is None else checkpoint.epoch
    state = 0 if checkpoint is None else int(checkpoint.data.decode())
    assert state == start, f"a checkpoint of epoch {start} holds state {state}"
    trained = []
    for epoch in range(start + 1, ctx.settings["epochs"] + 1):
        time.sleep(ctx.settings["sleep"])
        state += 1
        trained.append(epoch)
        ctx.report_epoch({"epoch": epoch, "loss": params["x"] ** 2 + 1.0 / epoch})
        ctx.save_checkpoint(epoch, str(state).encode())
    return {"loss": params["x"] ** 2, "status": "ok", "trained": trained, "state": state}


def _rungs(params, ctx):
    """Trains a counter for ``epochs`` epochs, checkpointing after each, as a Keras space does:
    a trial paused at a rung (``--promote``) resumes after it when promoted. Every epoch it
    trains is appended to ``log`` as ``tid epoch``, so a test can count what was trained."""
    checkpoint = ctx.load_checkpoint()
    start = 0 if checkpoint is None else checkpoint.epoch
    loss = None
    for epoch in range(start + 1, ctx.settings["epochs"] + 1):
        time.sleep(ctx.settings["sleep"])
        with open(ctx.settings["log"], "a") as log:
            log.write(f"{ctx.tid} {epoch}\n")
        loss = params["x"] ** 2 + 1.0 / epoch + (ctx.tid if ctx.settings["by_tid"] else 0)
        ctx.report_epoch({"epoch": epoch, "loss": loss})
        ctx.save_checkpoint(epoch, str(epoch).encode())
        if ctx.should_stop():
            break
    return {"loss": loss, "status": "ok"}


rungs = SearchSpace(
    "rungs",
    _x_space,
    _rungs,
    (
        Setting("epochs", 9, "epochs", int, min=1),
        Setting("sleep", 0.0, "seconds per epoch", float),
        Setting("log", "", "file that gets one line per epoch trained: tid epoch"),
        Setting(
            "by_tid", False, "add the tid to the loss: each trial worse than those before", bool
        ),
    ),
    "checkpoints every epoch, resumes from its checkpoint, logs every epoch it trains",
)
nan_epochs = SearchSpace(
    "nan_epochs",
    _x_space,
    _nan_epochs,
    (
        Setting("epochs", 4, "epochs", int, min=1),
        Setting("above", 0.0, "NaN when x is above", float),
    ),
    "reports NaN every epoch for x > above (a diverged training)",
)


def _whoami(params, ctx):
    time.sleep(ctx.settings["sleep"])
    return {"loss": params["x"] ** 2, "status": "ok", "worker_pid": ctx.info["pid"]}


def _counted(params, ctx):
    with open(ctx.settings["log"], "a") as log:
        log.write(f"{ctx.tid}\n")
    return {"loss": params["x"] ** 2, "status": "ok"}


resumable = SearchSpace(
    "resumable",
    _x_space,
    _resumable,
    (Setting("epochs", 6, "epochs", int, min=1), Setting("sleep", 0.3, "seconds per epoch", float)),
    "checkpoints every epoch and resumes from its checkpoint",
)
whoami = SearchSpace(
    "whoami",
    _x_space,
    _whoami,
    (Setting("sleep", 1.0, "seconds per trial", float),),
    "records the pid of the worker that evaluated it",
)
counted = SearchSpace(
    "counted",
    _x_space,
    _counted,
    (Setting("log", "", "file that gets one line per evaluation"),),
    "appends its tid to a file on every evaluation",
)


class _SlowWarmSpace(SearchSpace):
    """A space whose warm-up (``hyperfleet worker --warm``) takes ``warm_s`` seconds, as a
    Keras import, a dataset download and a first fit can."""

    def warm_up(self, settings) -> None:
        time.sleep(settings["warm_s"])


slow_warm = _SlowWarmSpace(
    "slow_warm",
    _x_space,
    _whoami,
    (
        Setting("warm_s", 60.0, "seconds the warm-up takes", float),
        Setting("sleep", 0.0, "seconds per trial", float),
    ),
    "a warm-up that takes its time",
)
