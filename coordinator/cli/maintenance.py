"""Housekeeping any machine may run at any time: ``reap`` (requeue lost trials) and ``cancel``."""

from __future__ import annotations

import click

from coordinator.cli.options import exp_key_option, max_attempts_option, mongo_options
from coordinator.errors import ConfigError, counted
from coordinator.states import TrialState


@click.command()
@mongo_options()
@exp_key_option("only this experiment [default: all]")
@max_attempts_option("used for experiments that do not record their own")
def reap(mongo: str, db: str, exp_key: str | None, max_attempts: int) -> None:
    """Requeue trials whose worker stopped heartbeating, and delete the GridFS chunks of uploads
    a killed writer never finished (safe to run any time, anywhere)."""
    from coordinator.store import connect

    store = connect(mongo, db)
    tids = store.reap_expired(exp_key, max_attempts=max_attempts)
    listed = f": {', '.join(map(str, tids))}" if tids else ""
    click.echo(f"reaped {counted(len(tids), 'trial')}{listed}")
    unfinished = store.drop_orphan_chunks()  # the database's: chunks name no experiment
    if unfinished:
        click.echo(f"deleted the GridFS chunks of {counted(unfinished, 'upload')} never finished")
    # plain fmin makes trials but no experiment document: both must be missing for a typo
    unknown = exp_key is not None and not tids and store.get_experiment(exp_key) is None
    if unknown and not store.count(exp_key, list(TrialState)):
        click.echo(
            f"note: database {db!r} has no experiment and no trial {exp_key!r}; "
            "check --exp-key and --db (`hyperfleet status` lists the experiments)",
            err=True,
        )


@click.command()
@mongo_options()
@exp_key_option("the experiment to stop", required=True)
def cancel(mongo: str, db: str, exp_key: str) -> None:
    """Stop a search: queued trials become CANCEL, running ones stop at their next epoch."""
    from coordinator.inspect import get_experiment
    from coordinator.store import connect

    store = connect(mongo, db)
    if store.get_experiment(exp_key) is None:
        get_experiment(store, exp_key)  # a typo: one line naming the known experiments
        raise ConfigError(
            f"experiment {exp_key!r} comes from plain hyperopt fmin (it has trials but no "
            "experiment document): stop that fmin process (Ctrl-C) to end it; cancel stops "
            "`hyperfleet search` experiments"
        )
    n = store.cancel_experiment(exp_key)
    running = store.count(exp_key, [int(TrialState.RUNNING)])
    click.echo(f"cancelled {exp_key}: {n} queued trials cancelled, {running} running will stop")
