"""The ``hyperfleet`` command."""

from __future__ import annotations

import datetime as dt
import functools
import json
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from coordinator.errors import ConfigError, HyperfleetError, SpaceError
from coordinator.search import ALGOS, SearchConfig, SearchOutcome
from coordinator.server import DEFAULT_DB_PATH
from coordinator.states import TrialState
from coordinator.store import DEFAULT_DB, TrialStore, connect, redact_uri
from search_spaces.keras_space import SAVE_MODES

logger = logging.getLogger("hyperfleet")


class _BadInput(click.ClickException):
    exit_code = 2


class HyperfleetGroup(click.Group):
    """Turns hyperfleet's errors into one line on stderr and a non-zero exit."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (ConfigError, SpaceError) as e:
            raise _BadInput(str(e)) from e
        except HyperfleetError as e:
            raise click.ClickException(str(e)) from e


def mongo_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--mongo`` (or $HYPERFLEET_MONGO, so passwords stay out of process lists) and ``--db``."""

    @click.option(
        "--mongo",
        "mongo",
        envvar="HYPERFLEET_MONGO",
        required=True,
        metavar="URI",
        help="MongoDB URI (mongodb:// or mongodb+srv://) [env: HYPERFLEET_MONGO]",
    )
    @click.option(
        "--db",
        "db",
        envvar="HYPERFLEET_DB",
        default=DEFAULT_DB,
        show_default=True,
        help="database name [env: HYPERFLEET_DB]",
    )
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return func(*args, **kwargs)

    return wrapper


def space_options(func: Callable[..., Any]) -> Callable[..., Any]:
    @click.option(
        "--set",
        "set_pairs",
        multiple=True,
        metavar="KEY=VALUE",
        help="override a setting of the space (repeatable); `hyperfleet spaces` lists them",
    )
    @click.option(
        "--spaces",
        "spaces",
        multiple=True,
        metavar="PATH",
        help="extra search spaces: a .py file or an importable module (repeatable)",
    )
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return func(*args, **kwargs)

    return wrapper


def search_options(func: Callable[..., Any]) -> Callable[..., Any]:
    @click.option(
        "--max-evals",
        type=int,
        default=50,
        show_default=True,
        help="number of trials to evaluate in all (a rerun continues up to it)",
    )
    @click.option(
        "--algo", default="tpe", show_default=True, help=f"suggestion algorithm: {', '.join(ALGOS)}"
    )
    @click.option(
        "--queue-len",
        type=click.IntRange(min=1),
        default=None,
        help="trials queued ahead of the workers [default: 2 x live workers, min 2]",
    )
    @click.option("--seed", type=int, default=None, help="random seed of the algorithm")
    @click.option(
        "--timeout",
        "timeout_s",
        type=click.FloatRange(min=0),
        default=None,
        help="stop queueing new trials after this many seconds",
    )
    @click.option(
        "--loss-threshold", type=float, default=None, help="stop once a trial's loss is below this"
    )
    @click.option(
        "--max-attempts",
        type=click.IntRange(min=1),
        default=3,
        show_default=True,
        help="a trial whose worker is lost or crashes this often becomes ERROR",
    )
    @click.option(
        "--force",
        is_flag=True,
        help="continue an exp key even if its space, settings or algo differ",
    )
    @click.option(
        "--progress/--no-progress",
        default=None,
        help="progress bar [default: on when stderr is a terminal]",
    )
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return func(*args, **kwargs)

    return wrapper


def _setup_logging(level: str) -> None:
    # TensorFlow's C++ start-up notices (oneDNN, CPU features) are noise in a terminal; a user
    # who wants them sets TF_CPP_MIN_LOG_LEVEL=0 (workers and `best --evaluate` inherit this)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("pymongo", "hyperopt", "absl", "tensorflow"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))


@click.group(cls=HyperfleetGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
    default="info",
    show_default=True,
    envvar="HYPERFLEET_LOG_LEVEL",
)
def main(log_level: str) -> None:
    """hyperfleet: distributed hyperparameter search for Keras models over MongoDB."""
    _setup_logging(log_level)


def _open_store(mongo: str, db: str) -> TrialStore:
    return connect(mongo, db)


def _resolve_space(
    name: str, spaces: tuple[str, ...], set_pairs: tuple[str, ...]
) -> tuple[Any, dict[str, Any]]:
    from search_spaces import get_space, load_spaces, parse_set_options

    for path in spaces:
        load_spaces(path)
    space = get_space(name)
    return space, space.resolve_settings(parse_set_options(set_pairs))


def _search_config(
    space: Any,
    settings: dict[str, Any],
    exp_key: str,
    spaces: tuple[str, ...],
    progress: bool | None,
    **opts: Any,
) -> SearchConfig:
    show = sys.stderr.isatty() if progress is None else progress
    return SearchConfig(
        space=space,
        settings=settings,
        exp_key=exp_key,
        spaces_source=",".join(spaces) or None,
        progress=show,
        **opts,
    )


def _print_outcome(outcome: SearchOutcome) -> None:
    counts = ", ".join(f"{s.name.lower()} {n}" for s, n in outcome.counts.items() if n)
    click.echo(
        f"experiment {outcome.exp_key}: {counts or 'no trials'} in {outcome.seconds:.1f} s"
        + (" (cancelled)" if outcome.cancelled else "")
    )
    if outcome.best is None:
        raise click.ClickException(
            f"no trial of {outcome.exp_key!r} succeeded; see the errors with the mongo shell: "
            "db.jobs.find({state: 3}, {tid: 1, error: 1})"
        )
    click.echo(f"best trial: tid {outcome.best['tid']}, loss {outcome.best_loss:.6g}")
    click.echo("best params: " + json.dumps(outcome.best_params, sort_keys=True, default=str))


# -- server ------------------------------------------------------------------------------------


@main.command()
@click.option(
    "--db-path",
    type=click.Path(file_okay=False),
    default=str(DEFAULT_DB_PATH),
    show_default=True,
    help="storage directory (':memory:' for a throwaway server)",
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=27017,
    show_default=True,
    help="port (0: any free port)",
)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="address to listen on (0.0.0.0 for other machines)",
)
@click.option("--auth", is_flag=True, help="require SCRAM authentication")
@click.option(
    "--sync/--no-sync",
    default=True,
    show_default=True,
    help="make each commit durable before acknowledging it (--no-sync: faster, but a "
    "killed server forgets its last writes)",
)
def server(db_path: str, port: int, host: str, auth: bool, sync: bool) -> None:
    """Run the embedded MongoDB-compatible server (SecantusDB) in the foreground."""
    from coordinator.server import EmbeddedServer

    srv = EmbeddedServer(db_path, host=host, port=port, auth=auth, sync=sync)
    srv.start()
    shown_host = "127.0.0.1" if host == "0.0.0.0" else host
    click.echo(f"hyperfleet server ready: mongodb://{shown_host}:{srv.port}/ (data: {srv.db_path})")
    click.echo("stop it with Ctrl-C", err=True)
    sys.stdout.flush()

    def _stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop)
    try:
        code = srv.wait()
        raise click.ClickException(
            f"the embedded server exited with code {code}; see {srv.log_path}"
        )
    except KeyboardInterrupt:
        click.echo("stopping the server ...", err=True)
    finally:
        srv.stop()


# -- spaces -------------------------------------------------------------------------------------


@main.command()
@click.option(
    "--spaces",
    "spaces",
    multiple=True,
    metavar="PATH",
    help="extra search spaces: a .py file or an importable module",
)
def spaces(spaces: tuple[str, ...]) -> None:
    """List the search spaces with their settings."""
    from search_spaces import available_spaces, load_spaces

    for path in spaces:
        load_spaces(path)
    for space in available_spaces():
        click.echo(
            f"{space.name}: {space.description}"
            + (f"  [{space.source}]" if space.source and space.source != "built-in" else "")
        )
        for setting in space.settings:
            click.echo(f"    --set {setting.describe()}")


# -- worker -------------------------------------------------------------------------------------


def _parse_gpu(value: str | None) -> str | None:
    if value is None:
        return None
    if value.lower() in ("none", "cpu", "-1", ""):
        return "none"
    ids = [v.strip() for v in value.split(",")]
    if not all(v.isdigit() for v in ids):
        raise ConfigError(f"--gpu {value!r}: expected a GPU index like 0, a list like 0,1, or none")
    return ",".join(ids)


@main.command()
@mongo_options
@click.option("--exp-key", default=None, help="serve only this experiment [default: any]")
@click.option(
    "--max-trials", type=click.IntRange(min=1), default=None, help="exit after this many trials"
)
@click.option(
    "--idle-timeout",
    "idle_timeout_s",
    type=click.FloatRange(min=0),
    default=None,
    help="exit after this many seconds without a trial",
)
@click.option(
    "--heartbeat",
    "heartbeat_s",
    type=click.FloatRange(min=0.05),
    default=5.0,
    show_default=True,
    help="seconds between lease renewals",
)
@click.option(
    "--lease",
    "lease_s",
    type=click.FloatRange(min=0.1),
    default=30.0,
    show_default=True,
    help="seconds a trial stays ours without a heartbeat",
)
@click.option(
    "--poll",
    "poll_s",
    type=click.FloatRange(min=0.001),
    default=0.1,
    show_default=True,
    help="longest sleep between polls when idle",
)
@click.option(
    "--isolate/--no-isolate",
    default=True,
    show_default=True,
    help="run trials in a supervised child process (survives crashes)",
)
@click.option(
    "--trust-pickled",
    is_flag=True,
    help="also run trials of plain hyperopt fmin (unpickles code from the database)",
)
@click.option(
    "--requeue-on-term",
    is_flag=True,
    help="on the first SIGTERM/SIGINT hand the running trial back at once",
)
@click.option(
    "--spaces",
    "spaces",
    multiple=True,
    metavar="PATH",
    help="extra search spaces (the same --spaces the search used)",
)
@click.option(
    "--gpu",
    default=None,
    envvar="HYPERFLEET_GPU",
    metavar="ID|none",
    help="pin to this GPU (sets CUDA_VISIBLE_DEVICES); none forces the CPU [env: HYPERFLEET_GPU]",
)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=None,
    envvar="HYPERFLEET_THREADS",
    help="bound the framework's CPU threads [env: HYPERFLEET_THREADS]",
)
@click.option(
    "--save-models",
    type=click.Choice(SAVE_MODES),
    default="best",
    show_default=True,
    envvar="HYPERFLEET_SAVE_MODELS",
    help="Keras models kept as .keras attachments: the best so far, all, or none",
)
@click.option(
    "--check",
    is_flag=True,
    help="only check that MongoDB answers (for container healthchecks) and exit",
)
def worker(
    mongo: str,
    db: str,
    exp_key: str | None,
    max_trials: int | None,
    idle_timeout_s: float | None,
    heartbeat_s: float,
    lease_s: float,
    poll_s: float,
    isolate: bool,
    trust_pickled: bool,
    requeue_on_term: bool,
    spaces: tuple[str, ...],
    gpu: str | None,
    threads: int | None,
    save_models: str,
    check: bool,
) -> None:
    """Evaluate trials from MongoDB until stopped, idle or the search is over."""
    from worker.environment import pin_devices

    env_info = pin_devices(_parse_gpu(gpu), threads)  # before any framework is imported
    if heartbeat_s >= lease_s:
        raise ConfigError(
            f"--heartbeat ({heartbeat_s} s) must be shorter than --lease ({lease_s} s)"
        )
    store = _open_store(mongo, db)
    if check:
        click.echo(f"ok: MongoDB at {redact_uri(mongo)} answers")
        return
    from worker.worker import Worker, WorkerConfig

    config = WorkerConfig(
        uri=mongo,
        db=db,
        exp_key=exp_key,
        max_trials=max_trials,
        idle_timeout_s=idle_timeout_s,
        heartbeat_s=heartbeat_s,
        lease_s=lease_s,
        poll_s=poll_s,
        isolate=isolate,
        trust_pickled=trust_pickled,
        requeue_on_term=requeue_on_term,
        spaces=spaces,
        info={**env_info, "save_models": save_models},
    )
    sys.exit(Worker(store, config).work())


# -- search and local ---------------------------------------------------------------------------


@main.command()
@click.argument("space_name", metavar="SPACE")
@mongo_options
@click.option("--exp-key", default=None, help="experiment name [default: the space's name]")
@search_options
@space_options
def search(
    space_name: str,
    mongo: str,
    db: str,
    exp_key: str | None,
    set_pairs: tuple[str, ...],
    spaces: tuple[str, ...],
    progress: bool | None,
    **opts: Any,
) -> None:
    """Run a search: queue trials of SPACE in MongoDB for workers and wait for them."""
    from coordinator.search import Coordinator

    space, settings = _resolve_space(space_name, spaces, set_pairs)
    config = _search_config(space, settings, exp_key or space.name, spaces, progress, **opts)
    store = _open_store(mongo, db)
    outcome = Coordinator(store, config).run()
    _print_outcome(outcome)


@main.command()
@click.argument("space_name", metavar="SPACE")
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=2,
    show_default=True,
    help="CPU worker processes",
)
@click.option("--exp-key", default=None, help="experiment name [default: SPACE-<date-time>]")
@click.option(
    "--db-path",
    type=click.Path(file_okay=False),
    default=str(DEFAULT_DB_PATH),
    show_default=True,
    help="where the embedded server keeps the results",
)
@click.option(
    "--isolate/--no-isolate",
    default=True,
    show_default=True,
    help="run trials in supervised child processes",
)
@click.option(
    "--gpus",
    default=None,
    metavar="IDS",
    help="GPU workers instead of CPU ones: --per-gpu workers pinned to each listed GPU (0,1)",
)
@click.option(
    "--per-gpu",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="workers sharing each GPU of --gpus",
)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=None,
    help="CPU threads per worker [default: the cores divided among the workers]",
)
@click.option(
    "--save-models",
    type=click.Choice(SAVE_MODES),
    default="best",
    show_default=True,
    help="Keras models kept as attachments: the best so far, all, or none",
)
@click.option(
    "--evaluate",
    is_flag=True,
    help="Keras spaces: evaluate the best model on the test set at the end",
)
@click.option(
    "--save-model",
    type=click.Path(dir_okay=False),
    default=None,
    metavar="PATH",
    help="Keras spaces: write the best model here (.keras) at the end",
)
@search_options
@space_options
def local(
    space_name: str,
    workers: int,
    exp_key: str | None,
    db_path: str,
    isolate: bool,
    gpus: str | None,
    per_gpu: int,
    threads: int | None,
    save_models: str,
    evaluate: bool,
    save_model: str | None,
    set_pairs: tuple[str, ...],
    spaces: tuple[str, ...],
    progress: bool | None,
    **opts: Any,
) -> None:
    """Run a whole search on this machine: embedded server, workers and coordinator."""
    from coordinator.local import LocalConfig, LocalRun, local_worker_envs

    space, settings = _resolve_space(space_name, spaces, set_pairs)
    key = exp_key or f"{space.name}-{dt.datetime.now():%Y%m%d-%H%M%S}"
    config = _search_config(space, settings, key, spaces, progress, **opts)
    worker_args = [f"--spaces={p}" for p in spaces] + [f"--save-models={save_models}"]
    if not isolate:
        worker_args.append("--no-isolate")
    gpu_ids = None if gpus is None else _parse_gpu(gpus)
    if gpu_ids == "none":
        raise ConfigError("--gpus none: leave --gpus out for CPU workers")
    envs = local_worker_envs(workers, gpu_ids, per_gpu, threads)
    report: list[str] = []

    def after(store: TrialStore, outcome: SearchOutcome) -> None:
        if outcome.best is not None and (evaluate or save_model):
            from coordinator.keras_cli import report_best

            lines = report_best(store, key, save_model=save_model, evaluate=evaluate)
            report.extend(line for line in lines if not line.startswith("best "))

    run = LocalRun(
        LocalConfig(
            search=config,
            workers=len(envs),
            db_path=Path(db_path),
            worker_args=worker_args,
            worker_envs=envs,
            after=after,
        )
    )
    where = f"GPUs {gpu_ids}" if gpu_ids else "CPU"
    click.echo(
        f"experiment {key}: {len(envs)} workers ({where}, {envs[0]['HYPERFLEET_THREADS']} "
        f"threads each), results in {Path(db_path).resolve()}",
        err=True,
    )
    try:
        outcome = run.run()
    except KeyboardInterrupt:
        raise click.ClickException(
            f"interrupted; finished trials are kept in {db_path}: rerun with --exp-key {key} "
            "to continue"
        ) from None
    _print_outcome(outcome)
    for line in report:
        click.echo(line)
    click.echo(f"read them later: hyperfleet server --db-path {db_path}", err=True)


# -- maintenance --------------------------------------------------------------------------------


@main.command()
@mongo_options
@click.option("--exp-key", default=None, help="only this experiment [default: all]")
@click.option(
    "--max-attempts",
    type=click.IntRange(min=1),
    default=3,
    show_default=True,
    help="used for experiments that do not record their own",
)
def reap(mongo: str, db: str, exp_key: str | None, max_attempts: int) -> None:
    """Requeue trials whose worker stopped heartbeating (safe to run any time, anywhere)."""
    store = _open_store(mongo, db)
    tids = store.reap_expired(exp_key, max_attempts=max_attempts)
    click.echo(f"reaped {len(tids)} trials" + (f": {', '.join(map(str, tids))}" if tids else ""))


@main.command()
@mongo_options
@click.option("--exp-key", required=True, help="the experiment to stop")
def cancel(mongo: str, db: str, exp_key: str) -> None:
    """Stop a search: queued trials become CANCEL, running ones stop at their next epoch."""
    store = _open_store(mongo, db)
    if store.get_experiment(exp_key) is None:
        raise ConfigError(f"no experiment {exp_key!r} in database {db!r}")
    n = store.cancel_experiment(exp_key)
    running = store.count(exp_key, [int(TrialState.RUNNING)])
    click.echo(f"cancelled {exp_key}: {n} queued trials cancelled, {running} running will stop")


# -- commands that live in their own modules ------------------------------------------------------
# (each module defines click commands and registers them on ``main`` when imported)
# - coordinator.inspect_cli: status, top, show, export, plot, workers (inspection)
# - coordinator.keras_cli: best (Keras models)
# - coordinator.launch_cli: launch (docker)


def _register_command_modules() -> None:
    import importlib

    for name in ("coordinator.inspect_cli", "coordinator.keras_cli", "coordinator.launch_cli"):
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:
                raise


_register_command_modules()


def run() -> None:
    """Console-script entry point."""
    main(prog_name="hyperfleet")


if __name__ == "__main__":
    run()
