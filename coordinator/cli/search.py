"""Running searches: ``search`` (the coordinator alone), ``local`` (server, workers and
coordinator on this machine) and ``spaces`` (what can be searched)."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from click.core import ParameterSource

from coordinator import defaults
from coordinator.cli.options import (
    best_model_options,
    check_exp_key,
    db_path_option,
    exp_key_option,
    gpus_options,
    isolate_option,
    mongo_options,
    pruning_kwargs,
    save_models_option,
    search_options,
    space_options,
    spaces_option,
    threads_option,
)
from coordinator.errors import ConfigError, counted

if TYPE_CHECKING:
    from coordinator.search import SearchConfig, SearchOutcome
    from coordinator.store import TrialStoreBase

logger = logging.getLogger("coordinator.search")


def _search_config(
    space_name: str,
    exp_key: str | None,
    default_key: Callable[[str], str],
    *,
    set_pairs: tuple[str, ...],
    spaces: tuple[str, ...],
    progress: bool | None,
    **opts: Any,
) -> SearchConfig:
    """The search that ``search_options`` and ``space_options`` describe; the exp key is
    ``exp_key`` or ``default_key(space name)``."""
    from coordinator.pruning import resolve_pruning
    from coordinator.search import SearchConfig, algo_function
    from search_spaces import get_space, load_spaces, parse_set_options

    ctx = click.get_current_context(silent=True)
    given = ctx is not None and ctx.get_parameter_source("liar") is ParameterSource.COMMANDLINE
    if given and opts.get("algo") in defaults.ALGOS and opts.get("algo") != "tpe":
        logger.warning(
            "--liar only changes --algo tpe; it is ignored with --algo %s", opts.get("algo")
        )
    algo_function(opts["algo"], opts["liar"])  # an unknown --algo, or atpe's missing packages
    for path in spaces:
        load_spaces(path)
    space = get_space(space_name)
    settings = space.resolve_settings(parse_set_options(set_pairs))
    space.check(settings)  # before the database, the server or any worker
    rule, prune_opts = pruning_kwargs(opts)
    pruning = resolve_pruning(rule, settings, **prune_opts)
    if pruning is not None and "epochs" not in settings:
        logger.warning(
            "--prune %s: space %r has no epochs setting; only trials that report per-epoch "
            "metrics (the Keras callback, or ctx.report_epoch in the objective) can be pruned",
            rule,
            space.name,
        )
    return SearchConfig(
        space=space,
        settings=settings,
        pruning=pruning,
        exp_key=exp_key or check_exp_key(default_key(space.name), "default exp key"),
        spaces_source=",".join(spaces) or None,
        progress=sys.stderr.isatty() if progress is None else progress,
        **opts,
    )


def _print_outcome(outcome: SearchOutcome) -> None:
    counts = ", ".join(f"{s.name.lower()} {n}" for s, n in outcome.counts.items() if n)
    click.echo(
        f"experiment {outcome.exp_key}: {counts or 'no trials'} in {outcome.seconds:.1f} s"
        + (" (cancelled)" if outcome.cancelled else "")
        + (f" (stopped early: {outcome.stopped_early})" if outcome.stopped_early else "")
    )
    if outcome.best is None:
        raise click.ClickException(
            f"no trial of {outcome.exp_key!r} succeeded: {outcome.no_success or 'no trial ran'}"
        )
    click.echo(
        f"best trial: tid {outcome.best['tid']}, loss {outcome.best_loss:.6g} "
        f"(trial {outcome.best_number} of this experiment)"
    )
    click.echo("best params: " + json.dumps(outcome.best_params, sort_keys=True, default=str))


@click.command()
@click.argument("space_name", metavar="SPACE")
@mongo_options()
@exp_key_option("experiment name [default: the space's name]")
@search_options()
@space_options()
def search(space_name: str, mongo: str, db: str, exp_key: str | None, **search_opts: Any) -> None:
    """Run a search: queue trials of SPACE in MongoDB for workers and wait for them."""
    from coordinator.search import Coordinator
    from coordinator.store import connect

    config = _search_config(space_name, exp_key, lambda name: name, **search_opts)
    store = connect(mongo, db, wait=True)
    coordinator = Coordinator(store, config)
    from coordinator.housekeeping import NoWorkerNotice

    notice = NoWorkerNotice(
        store,
        config.exp_key,
        hint=f"`hyperfleet worker --exp-key {config.exp_key}` (same --mongo/$HYPERFLEET_MONGO "
        "and --spaces as this search)",
    )
    coordinator.on_tick = lambda trials, counts: notice.check()
    try:
        outcome = coordinator.run()
    except KeyboardInterrupt:
        raise click.ClickException(
            f"interrupted; experiment {config.exp_key!r} stays in the database (running trials "
            "finish on their workers): rerun the same command to continue"
        ) from None
    _print_outcome(outcome)


def _check_compile_cache(envs: list[dict[str, str]]) -> None:
    """The workers' JAX compilation cache (``HYPERFLEET_COMPILE_CACHE``, default ``auto``),
    checked once here so that a refusal shows on the console, not only in the workers' logs;
    the workers are then told to compile without one."""
    from worker.compile_cache import resolve

    _, why_not = resolve(os.environ.get("HYPERFLEET_COMPILE_CACHE"), os.environ)
    if why_not:
        click.echo(f"warning: {why_not}", err=True)
        for env in envs:
            env["HYPERFLEET_COMPILE_CACHE"] = "off"


@click.command()
@click.argument("space_name", metavar="SPACE")
@click.option(
    "--workers",
    type=click.IntRange(1, defaults.MAX_LOCAL_WORKERS),
    default=2,
    show_default=True,
    help="CPU worker processes",
)
@exp_key_option("experiment name [default: SPACE-<date-time>]")
@db_path_option("where the embedded server keeps the results")
@isolate_option("run trials in supervised child processes")
@gpus_options(
    gpus_help="GPU workers instead of CPU ones: --per-gpu workers pinned to each listed GPU (0,1)",
    per_gpu_help="workers sharing each GPU of --gpus",
)
@threads_option("CPU threads per worker [default: the cores divided among the workers]")
@save_models_option("Keras models kept as attachments: the best so far, all, or none")
@best_model_options(
    save_model_help="Keras spaces: write the best model here (.keras) at the end",
    evaluate_help="Keras spaces: evaluate the best model on the test set at the end",
)
@search_options()
@space_options()
def local(
    space_name: str,
    workers: int,
    exp_key: str | None,
    db_path: str,
    isolate: bool,
    gpus: list[str] | None,
    per_gpu: int,
    threads: int | None,
    save_models: str,
    evaluate: bool,
    save_model: str | None,
    **search_opts: Any,
) -> None:
    """Run a whole search on this machine: embedded server, workers and coordinator."""
    if gpus == []:
        raise ConfigError("--gpus none: leave --gpus out for CPU workers")
    if gpus and len(gpus) * per_gpu > defaults.MAX_LOCAL_WORKERS:
        raise ConfigError(
            f"--gpus ({len(gpus)} GPUs) x --per-gpu {per_gpu} is {len(gpus) * per_gpu} worker "
            f"processes: at most {defaults.MAX_LOCAL_WORKERS} on one machine"
        )
    from coordinator.local import LocalConfig, LocalRun, local_worker_envs
    from worker.environment import check_gpu_ids

    if gpus:
        check_gpu_ids(gpus)

    started = dt.datetime.now()
    config = _search_config(
        space_name, exp_key, lambda name: f"{name}-{started:%Y%m%d-%H%M%S}", **search_opts
    )
    key = config.exp_key
    worker_args = [f"--spaces={p}" for p in search_opts["spaces"]]
    worker_args.append(f"--save-models={save_models}")
    if not isolate:
        worker_args.append("--no-isolate")
    envs = local_worker_envs(workers, gpus, per_gpu, threads)
    _check_compile_cache(envs)
    report: list[str] = []

    def after(store: TrialStoreBase, outcome: SearchOutcome) -> None:
        if outcome.best is not None and (evaluate or save_model):
            from coordinator.cli.best import report_best

            lines = report_best(store, key, save_model=save_model, evaluate=evaluate)
            report.extend(line for line in lines if not line.startswith("best "))

    def announce() -> None:  # once the experiment is accepted: a refusal is the only line
        where = f"GPUs {','.join(gpus)}" if gpus else "CPU"
        click.echo(
            f"experiment {key}: {counted(len(envs), 'worker')} ({where}, "
            f"{counted(int(envs[0]['HYPERFLEET_THREADS']), 'thread')} each), results in "
            f"{Path(db_path).resolve()}",
            err=True,
        )

    run = LocalRun(
        LocalConfig(
            search=config,
            workers=len(envs),
            db_path=Path(db_path),
            worker_args=worker_args,
            worker_envs=envs,
            after=after,
            on_start=announce,
        )
    )

    from coordinator.local import Terminated

    def _stop(signum: int, frame: Any) -> None:
        raise Terminated  # SIGTERM: workers hand their trials back, server stopped, temp removed

    signal.signal(signal.SIGTERM, _stop)
    try:
        outcome = run.run()
    except KeyboardInterrupt:
        raise click.ClickException(
            f"interrupted; finished trials are kept in {db_path}: rerun the same command with "
            f"--exp-key {key} to continue"
        ) from None
    _print_outcome(outcome)
    for line in report:
        click.echo(line)
    click.echo(f"read them later: hyperfleet server --db-path {db_path}", err=True)


@click.command()
@spaces_option("extra search spaces: a .py file or an importable module")
def spaces(spaces: tuple[str, ...]) -> None:
    """List the search spaces with their settings; exit 2 if one of them cannot be searched
    with its default settings (what `search` would refuse)."""
    from coordinator.errors import HyperfleetError, SpaceError
    from search_spaces import available_spaces, load_spaces

    for path in spaces:
        load_spaces(path)
    problems: list[str] = []
    for space in available_spaces():
        click.echo(
            f"{space.name}: {space.description}"
            + (f"  [{space.source}]" if space.source and space.source != "built-in" else "")
        )
        for setting in space.settings:
            click.echo(f"    --set {setting.describe()}")
        try:
            space.check(space.resolve_settings())
        except HyperfleetError as e:
            problems.append(str(e))
            click.echo(f"    cannot be searched: {e}")
    if problems:
        more = f" (and {counted(len(problems) - 1, 'more space')})" if len(problems) > 1 else ""
        raise SpaceError(problems[0] + more)
