"""``hyperfleet best``: the best trial of a Keras search, its saved model and its test metrics."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from coordinator.cli.options import (
    best_model_options,
    exp_key_option,
    mongo_options,
    spaces_option,
)
from coordinator.defaults import MODEL_ATTACHMENT
from coordinator.errors import ConfigError, HyperfleetError
from coordinator.shown import shown

if TYPE_CHECKING:
    from coordinator.store import TrialStoreBase


def _keras_space(exp: dict[str, Any], spaces: tuple[str, ...] = ()) -> Any:
    """The experiment's space from the registry: built-ins, entry points and the user's own
    ``--spaces``. Never what the experiment document names (``spaces_source``): importing a
    file because a database says so would run code chosen by whoever can write to it."""
    from coordinator.errors import SpaceError
    from search_spaces import get_space, load_spaces
    from search_spaces.keras import KerasSearchSpace

    for path in spaces:
        load_spaces(path)
    name = exp.get("space")
    if not isinstance(name, str):
        raise ConfigError(
            f"experiment {shown(exp.get('_id'))} names no search space; nothing to evaluate"
        )
    try:
        space = get_space(name)
    except SpaceError:
        recorded = exp.get("spaces_source")
        hint = f" (the search recorded --spaces {shown(recorded)})" if recorded else ""
        raise SpaceError(
            f"--evaluate needs search space {shown(name)}, which is not registered here: pass "
            f"--spaces PATH, the file or module that defines it{hint}"
        ) from None
    if not isinstance(space, KerasSearchSpace) or space.data is None:
        raise ConfigError(
            f"space {space.name!r} is not a Keras space with a test set; --evaluate works for "
            "Keras spaces such as mnist_mlp and mnist_cnn"
        )
    return space


def evaluate_model(
    store: TrialStoreBase,
    exp: dict[str, Any],
    tid: int,
    data: bytes,
    spaces: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Test metrics of a saved ``.keras`` model on its space's test set (never used to select)."""
    from coordinator.store import utcnow

    space = _keras_space(exp, spaces)
    settings = space.resolve_settings(exp.get("settings", {}))
    import keras

    with tempfile.TemporaryDirectory(prefix="hyperfleet-best-") as tmp:
        path = Path(tmp) / MODEL_ATTACHMENT
        path.write_bytes(data)
        try:
            # safe mode: a model file from the database runs no code
            model = keras.saving.load_model(path)
        except (ValueError, TypeError, OSError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ConfigError(
                f"trial {tid}'s saved model does not load in Keras's safe mode ({first}); "
                "save it with --save-model and, only if you trust everyone who can write to "
                "this database, load it with keras.saving.load_model(path, safe_mode=False)"
            ) from e
    x_test, y_test = space.data(tuple(model.input_shape[1:]), settings).test
    metrics = model.evaluate(x_test, y_test, verbose=0, return_dict=True)
    return {
        "tid": tid,
        "loss": float(metrics["loss"]),
        "accuracy": float(metrics["accuracy"]),
        "n": int(len(y_test)),
        "backend": keras.backend.backend(),
        "at": utcnow(),
    }


def report_best(
    store: TrialStoreBase,
    exp_key: str,
    *,
    save_model: str | None = None,
    evaluate: bool = False,
    spaces: tuple[str, ...] = (),
) -> list[str]:
    """Describe the best trial of ``exp_key``; write its model to ``save_model``; with
    ``evaluate``, record its test metrics on the experiment (its space from the registry or
    ``spaces``). Returns the lines to print."""
    exp = store.get_experiment(exp_key)
    if exp is None:
        raise ConfigError(f"no experiment {exp_key!r} in database {store.db_name!r}")
    if evaluate:
        _keras_space(exp, spaces)  # before any download: an unknown space is one line
    best = store.best_trial(exp_key)
    if best is None:
        raise HyperfleetError(f"no trial of {exp_key!r} succeeded yet; {_why_none(store, exp_key)}")
    result = best["result"]
    from coordinator import rules

    tids = (d.get("tid") for d in store.trial_outcomes(exp_key))
    lines = [
        f"best trial: tid {best['tid']}, loss {result['loss']:.6g} "
        f"({result.get('objective', 'loss')}; "
        f"trial {rules.trial_number(best['tid'], tids)} of this experiment)",
        "best params: " + json.dumps(best.get("params"), sort_keys=True, default=str),
    ]
    if "val_accuracy" in result:
        lines.append(f"validation accuracy: {result['val_accuracy']:.4f}")
    if not (save_model or evaluate):
        return lines
    holder = store.best_trial(exp_key, with_attachment=MODEL_ATTACHMENT)
    if holder is None:
        raise HyperfleetError(
            f"no trial of {exp_key!r} has a saved model: only Keras spaces save models, and "
            "only with workers saving them (`hyperfleet worker --save-models best`, the "
            "default; `hyperfleet local --save-models best`)"
        )
    if holder["tid"] != best["tid"]:
        lines.append(
            f"note: tid {best['tid']} has no saved model; using tid {holder['tid']}, the best "
            "one that has"
        )
    data = store.get_attachment(holder, MODEL_ATTACHMENT)
    if data is None:
        raise HyperfleetError(f"tid {holder['tid']}: its model file vanished; rerun `best`")
    if save_model:
        Path(save_model).write_bytes(data)
        lines.append(f"model of tid {holder['tid']} written to {save_model}")
    if evaluate:
        test = evaluate_model(store, exp, holder["tid"], data, spaces)
        store.annotate_experiment(exp_key, {"test": test})
        lines.append(
            f"test accuracy: {test['accuracy']:.4f} (loss {test['loss']:.4f}, {test['n']} "
            f"images, model of tid {holder['tid']})"
        )
    return lines


def _why_none(store: TrialStoreBase, exp_key: str) -> str:
    """What the trials of ``exp_key`` did instead of succeeding (one clause)."""
    from coordinator.rules import no_success_reason  # not coordinator.search: no hyperopt

    return no_success_reason(store.trials(exp_key))


@click.command()
@mongo_options()
@exp_key_option("the experiment", required=True)
@best_model_options(
    save_model_help="write the best model here (.keras format)",
    evaluate_help="evaluate the best model on the test set and record the metrics on the "
    "experiment",
)
@spaces_option("the search space's file or module, for --evaluate (the --spaces the search used)")
def best(
    mongo: str,
    db: str,
    exp_key: str,
    save_model: str | None,
    evaluate: bool,
    spaces: tuple[str, ...],
) -> None:
    """Show the best trial of a search; save its Keras model; evaluate it on the test set."""
    from coordinator.store import connect

    store = connect(mongo, db)
    lines = report_best(store, exp_key, save_model=save_model, evaluate=evaluate, spaces=spaces)
    for line in lines:
        click.echo(line)
