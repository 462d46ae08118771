"""``hyperfleet importance``: which hyperparameters mattered, by Optuna's evaluators.

The estimate is Optuna's (see :mod:`coordinator.importance`); this command only reads the
experiment's trials and space and prints the shares.
"""

from __future__ import annotations

import json

import click

from coordinator.cli.options import exp_key_option, mongo_options, spaces_option


@click.command()
@mongo_options()
@exp_key_option("the experiment (its --exp-key)", required=True)
@click.option(
    "--method",
    type=click.Choice(["ped-anova", "fanova"]),
    default="ped-anova",
    show_default=True,
    help="Optuna's evaluator: ped-anova (conditional parameters included) or fanova "
    "(needs scikit-learn; parameters present in every trial only)",
)
@click.option("--json", "as_json", is_flag=True, help="print the shares as JSON")
@spaces_option("extra search spaces (the --spaces the search used), for the parameters' ranges")
def importance(
    mongo: str, db: str, exp_key: str, method: str, as_json: bool, spaces: tuple[str, ...]
) -> None:
    """How much of the loss's variation each hyperparameter explains (full trials only)."""
    from coordinator import importance as imp
    from coordinator import inspect as ins
    from coordinator.store import connect

    store = connect(mongo, db)
    try:
        exp = ins.get_experiment(store, exp_key)
        docs = ins.usable_trials(ins.load_trials(store, exp_key), exp)
    finally:
        store.close()
    report = imp.importances(docs, ins.ParamDecoder(exp, spaces).space, method)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "exp_key": exp_key,
                    "method": report.method,
                    "trials": report.trials,
                    "pruned_left_out": report.pruned,
                    "importances": {r.label: r.share for r in report.importances},
                    "active": {r.label: r.active for r in report.importances},
                    "skipped": report.skipped,
                },
                indent=2,
            )
        )
    else:
        click.echo(imp.format_report(report, exp_key))
