"""The time-to-accuracy benchmark's objective, shared by every system (bench/time_to_accuracy.py).

One model family, one data set, one training loop for all: ``mnist_mlp``'s hyperopt space, its
``build_mlp`` and MNIST splits (search_spaces/mnist.py) and the Keras training of
search_spaces/keras/training.py (same optimizer construction, loss, metric, batch size,
epochs). Each system differs only in how it searches and stops:

* hyperfleet runs the space ``mnist_mlp_tta`` defined here (``--spaces bench/tta_objective.py``):
  ``mnist_mlp`` unchanged except that each epoch also carries its wall time ``t`` and a trial
  that trained every epoch is scored on the test set once at its end (never used to select);
* Optuna runs :func:`optuna_objective` (the same space written with Optuna's ``suggest_*``);
* stock hyperopt's workers run :func:`stock_objective` (pickled by reference);
* Ray Tune's trial actors run :func:`ray_trainable` (a function trainable, pickled by reference).

Importable in the stock-hyperopt virtualenv (pymongo 3.13) and the Ray one: it imports no
pymongo, and it makes Keras/TensorFlow (and hyperopt, for Ray's HyperOptSearch) importable from
hyperfleet's venv by *appending* that venv's site-packages.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MAIN_SITE = ROOT / ".venv" / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
if (MAIN_SITE / "site-packages").is_dir() and str(MAIN_SITE / "site-packages") not in sys.path:
    sys.path.append(str(MAIN_SITE / "site-packages"))  # after this venv's own: its pymongo wins

import search_spaces.mnist as mnist  # noqa: E402 - after the path set-up above
from search_spaces.base import SearchSpace, TrialContext  # noqa: E402

#: the run's clock: a file holding the unix time the run's first model was built (Keras imported,
#: data loaded; written once, by whichever trial gets there first); the budget runs from then
CLOCK_ENV = "TTA_CLOCK"
BUDGET_ENV = "TTA_BUDGET"

OnEpoch = Callable[[int, dict[str, float]], bool]  #: (epoch, metrics) -> stop?
_started: list[float] = []


def start_clock() -> None:
    """Start the run's clock if no trial has yet (atomic: the first link wins)."""
    path = os.environ.get(CLOCK_ENV)
    if not path or os.path.exists(path):
        return
    tmp = f"{path}.{os.getpid()}"
    Path(tmp).write_text(repr(time.time()))
    try:
        os.link(tmp, path)  # fails if another trial was first
    except FileExistsError:
        pass
    finally:
        os.unlink(tmp)


def clock_start(path: str | None = None) -> float | None:
    """When the run's first trial started (None: not yet)."""
    path = path or os.environ.get(CLOCK_ENV)
    try:
        return float(Path(path).read_text()) if path else None
    except (OSError, ValueError):
        return None


def _deadline() -> float:
    if not _started:
        start = clock_start()
        if start is None:
            return float("inf")
        _started.append(start)
    return _started[0] + float(os.environ.get(BUDGET_ENV, "inf"))


def train(
    params: Mapping[str, Any], settings: Mapping[str, Any], on_epoch: OnEpoch
) -> dict[str, Any]:
    """Train ``build_mlp(params)`` as hyperfleet's Keras runner does; ``on_epoch`` gets each
    epoch's metrics (with ``t``, the wall time) and says whether to stop. Returns the curve, the
    final validation accuracy and, for a trial that trained every epoch, its test accuracy."""
    import keras

    from search_spaces.keras.training import make_optimizer

    splits = mnist.mnist_data((784,), settings)  # cached per process after the first trial
    start_clock()  # Keras imported, data loaded: start-up is not part of the budget
    model = mnist.build_mlp(dict(params), settings)
    model.compile(
        optimizer=make_optimizer(params["optimizer"]),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    curve: list[dict[str, float]] = []
    stopped = {"by": ""}

    class Report(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
            metrics = {k: float(v) for k, v in (logs or {}).items()}
            metrics.update(epoch=epoch + 1, t=time.time())
            curve.append(metrics)
            if time.time() > _deadline():
                stopped["by"] = "deadline"
                self.model.stop_training = True
            elif on_epoch(epoch + 1, metrics):
                stopped["by"] = "pruned"
                self.model.stop_training = True

    model.fit(
        *splits.train,
        batch_size=int(params["batch_size"]),
        epochs=int(settings["epochs"]),
        validation_data=splits.validation,
        callbacks=[keras.callbacks.TerminateOnNaN(), Report()],
        verbose=0,
    )
    out: dict[str, Any] = {"epochs": curve, "stopped": stopped["by"]}
    if curve:
        out["val_accuracy"] = curve[-1].get("val_accuracy", 0.0)
    if len(curve) == int(settings["epochs"]) and not stopped["by"]:
        _, acc = model.evaluate(*splits.test, batch_size=1024, verbose=0)
        out["test_accuracy"] = float(acc)
    return out


# -- hyperfleet: mnist_mlp with wall times and a test score ------------------------------------


class _Timed:
    """The worker's ``ctx`` with each epoch's wall time added (the benchmark's clock)."""

    def __init__(self, ctx: TrialContext) -> None:
        self._ctx = ctx

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ctx, name)

    def report_epoch(self, metrics: dict[str, Any]) -> Any:
        return self._ctx.report_epoch({**metrics, "t": time.time()})

    def should_stop(self) -> bool:
        return self._ctx.should_stop() or time.time() > _deadline()


def _hyperfleet_objective(params: dict[str, Any], ctx: TrialContext) -> dict[str, Any]:
    from search_spaces.keras.training import run_trial

    built: dict[str, Any] = {}

    def build(p: dict[str, Any], s: Mapping[str, Any]) -> Any:
        mnist.mnist_data((784,), s)  # loaded once per process (run_trial's call hits the cache)
        start_clock()  # Keras imported, data loaded: as in train()
        built["model"] = mnist.build_mlp(p, s)
        return built["model"]

    result = run_trial(params, _Timed(ctx), build_model=build, data=mnist.mnist_data)
    done = result.get("epochs_run") == int(ctx.settings["epochs"]) and not result["stopped_early"]
    if result.get("status") == "ok" and done:
        model = built["model"]
        splits = mnist.mnist_data(tuple(model.input_shape[1:]), ctx.settings)
        result["test_accuracy"] = float(model.evaluate(*splits.test, batch_size=1024, verbose=0)[1])
    return result


mnist_mlp_tta = SearchSpace(
    "mnist_mlp_tta",
    mnist._mlp_space,
    _hyperfleet_objective,
    mnist.MNIST_SETTINGS,
    "mnist_mlp with per-epoch wall times and the test accuracy of fully trained trials "
    "(bench/time_to_accuracy.py)",
)


# -- Optuna: the same space with suggest_* ------------------------------------------------------


def optuna_params(trial: Any) -> dict[str, Any]:
    """``mnist_mlp``'s space (search_spaces/mnist.py) in Optuna's define-by-run API."""
    depth = trial.suggest_categorical("layers", [1, 2, 3])
    layers = [
        {
            "units": trial.suggest_categorical(f"units_{depth}_{i}", list(mnist.UNITS)),
            "dropout": trial.suggest_float(f"dropout_{depth}_{i}", 0.0, 0.5),
        }
        for i in range(1, depth + 1)
    ]
    name = trial.suggest_categorical("optimizer", ["rmsprop", "adam", "sgd"])
    if name == "rmsprop":
        optimizer = {
            "name": name,
            "learning_rate": trial.suggest_float("rmsprop_lr", 1e-4, 1e-2, log=True),
            "rho": trial.suggest_float("rmsprop_rho", 0.8, 0.99),
        }
    elif name == "adam":
        optimizer = {
            "name": name,
            "learning_rate": trial.suggest_float("adam_lr", 1e-4, 1e-2, log=True),
            "beta_1": trial.suggest_float("adam_beta_1", 0.8, 0.95),
        }
    else:
        optimizer = {
            "name": name,
            "learning_rate": trial.suggest_float("sgd_lr", 1e-3, 3e-1, log=True),
            "momentum": trial.suggest_float("sgd_momentum", 0.0, 0.95),
            "nesterov": trial.suggest_categorical("sgd_nesterov", [False, True]),
        }
    return {
        "layers": layers,
        "activation": trial.suggest_categorical("activation", list(mnist.ACTIVATIONS)),
        "optimizer": optimizer,
        "batch_size": trial.suggest_categorical("batch_size", list(mnist.BATCH_SIZES)),
    }


def optuna_objective(trial: Any, settings: Mapping[str, Any]) -> float:
    """Maximise the final validation accuracy; report every epoch and obey the pruner."""
    import optuna

    if time.time() > _deadline():
        raise optuna.TrialPruned("deadline")

    def on_epoch(epoch: int, metrics: dict[str, float]) -> bool:
        trial.report(metrics["val_accuracy"], epoch)
        # as hyperfleet: a trial that trained its last epoch is finished, never pruned
        return epoch < int(settings["epochs"]) and trial.should_prune()

    out = train(optuna_params(trial), settings, on_epoch)
    trial.set_user_attr("run", out)
    if out["stopped"] or "val_accuracy" not in out:
        raise optuna.TrialPruned(out["stopped"] or "no epoch")
    return out["val_accuracy"]


# -- stock hyperopt: a plain hyperopt objective -------------------------------------------------


def stock_objective(params: dict[str, Any]) -> dict[str, Any]:
    """hyperopt objective for stock ``hyperopt-mongo-worker`` (settings from $TTA_SETTINGS)."""
    import json

    settings = json.loads(os.environ["TTA_SETTINGS"])
    if time.time() > _deadline():
        return {"status": "fail", "run": {"epochs": [], "stopped": "deadline"}}
    out = train(params, settings, lambda epoch, metrics: False)
    if "val_accuracy" not in out:
        return {"status": "fail", "run": out}
    return {"status": "ok", "loss": 1.0 - out["val_accuracy"], "run": out}


# -- Ray Tune: a function trainable -------------------------------------------------------------


def ray_trainable(config: dict[str, Any]) -> None:
    """Ray Tune function trainable (settings from $TTA_SETTINGS) for ASHA on
    ``training_iteration``: one ``tune.report`` per epoch, so the iteration is the epoch. Every
    epoch but the last is reported as it ends (a trial ASHA stops never returns from that
    report); the last one, with ``final`` and the test accuracy of a fully trained trial, once
    training is over (ASHA stops a trial at ``max_t``, before it could be scored)."""
    import json

    from ray import tune

    settings = json.loads(os.environ["TTA_SETTINGS"])
    epochs = int(settings["epochs"])
    if time.time() > _deadline():
        tune.report({"val_accuracy": 0.0, "final": True, "stopped": "deadline"})
        return

    def on_epoch(epoch: int, metrics: dict[str, float]) -> bool:
        if epoch < epochs:
            tune.report(
                {"epoch": epoch, "t": metrics["t"], "val_accuracy": metrics["val_accuracy"]}
            )
        return False  # ASHA stops a trial inside tune.report

    out = train(config, settings, on_epoch)
    last = out["epochs"][-1] if out["epochs"] else {}
    tune.report(
        {
            "epoch": last.get("epoch"),
            "t": last.get("t"),
            "val_accuracy": out.get("val_accuracy", 0.0),
            "final": True,
            "stopped": out["stopped"],
            "test_accuracy": out.get("test_accuracy"),
        }
    )
