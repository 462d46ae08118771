"""``hyperfleet worker``: evaluate trials from MongoDB (the loop is :mod:`worker.worker`)."""

from __future__ import annotations

import os
import sys

import click

from coordinator import defaults
from coordinator.cli.options import (
    FiniteFloat,
    Int64,
    exp_key_option,
    gpu_option,
    idle_timeout_option,
    isolate_option,
    mongo_options,
    save_models_option,
    seconds_option,
    spaces_option,
    threads_option,
)
from coordinator.errors import ConfigError


@click.command()
@mongo_options()
@exp_key_option("serve only this experiment [default: any]")
@click.option("--max-trials", type=Int64(min=1), default=None, help="exit after this many trials")
@idle_timeout_option("exit after this many seconds without a trial")
@seconds_option(
    "--heartbeat",
    "heartbeat_s",
    "seconds between lease renewals",
    default=defaults.HEARTBEAT_S,
    minimum=0.05,
)
@seconds_option(
    "--lease",
    "lease_s",
    "seconds a trial stays ours without a heartbeat",
    default=defaults.LEASE_S,
    minimum=0.1,
)
@seconds_option(
    "--poll",
    "poll_s",
    "longest sleep between polls when idle",
    default=defaults.POLL_S,
    minimum=0.001,
)
@isolate_option("run trials in a supervised child process (survives crashes)")
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
@spaces_option("extra search spaces (the same --spaces the search used)")
@gpu_option()
@threads_option("bound the framework's CPU threads", envvar="HYPERFLEET_THREADS")
@save_models_option(
    "Keras models kept as .keras attachments: the best so far, all, or none",
    envvar="HYPERFLEET_SAVE_MODELS",
)
@click.option(
    "--warm/--no-warm",
    default=True,
    show_default=True,
    envvar="HYPERFLEET_WARM",
    help="before the first reservation, warm the trial process: imports, the space's data and "
    "a one-step fit (Keras spaces) [env: HYPERFLEET_WARM]",
)
@click.option(
    "--steps-per-execution",
    type=Int64(min=1),
    default=32,
    show_default=True,
    envvar="HYPERFLEET_STEPS_PER_EXECUTION",
    help="Keras: training steps per compiled call (fewer Python round trips; same results; "
    "1 is Keras's own default) "
    "[env: HYPERFLEET_STEPS_PER_EXECUTION]",
)
@click.option(
    "--compile-cache",
    type=str,  # not click.Path: a file named "off" must not turn the keyword into an error
    default=None,
    envvar="HYPERFLEET_COMPILE_CACHE",
    help="JAX backend: persistent compilation cache folder, shared by the workers of a machine; "
    "'auto' (the default): on JAX, a folder per machine under ~/.cache/hyperfleet/jax; 'off': "
    "none. A folder others own or can write to (or one above it) is refused "
    "[env: HYPERFLEET_COMPILE_CACHE]",
)
@click.option(
    "--checkpoint-every",
    type=click.IntRange(0, 10**6),
    default=1,
    show_default=True,
    envvar="HYPERFLEET_CHECKPOINT_EVERY",
    help="Keras: save a trial's state every N epochs, so that a trial that comes back (killed, "
    "pre-empted, handed back) resumes there; 0: never [env: HYPERFLEET_CHECKPOINT_EVERY]",
)
@click.option(
    "--checkpoint-interval",
    "checkpoint_interval_s",
    type=FiniteFloat(min=0, max=7 * 24 * 3600),
    default=0.0,
    show_default=True,
    envvar="HYPERFLEET_CHECKPOINT_INTERVAL",
    help="Keras: at most one checkpoint per this many seconds, 0 to 604800 (long runs of short "
    "epochs) [env: HYPERFLEET_CHECKPOINT_INTERVAL]",
)
@click.option(
    "--checkpoint-max-mb",
    type=FiniteFloat(min=0.001, max=2048),
    default=256.0,
    show_default=True,
    envvar="HYPERFLEET_CHECKPOINT_MAX_MB",
    help="Keras: a larger checkpoint is not saved (one warning); 0.001 to 2048 "
    "[env: HYPERFLEET_CHECKPOINT_MAX_MB]",
)
@click.option(
    "--checkpoint-dir",
    type=click.Path(file_okay=False, writable=True, resolve_path=True),
    default=None,
    envvar="HYPERFLEET_CHECKPOINT_DIR",
    help="write trials' checkpoints as files in this directory (one every worker mounts at the "
    "same path, e.g. a cluster's shared file system) instead of the database's GridFS "
    "[env: HYPERFLEET_CHECKPOINT_DIR]",
)
@click.option(
    "--check",
    is_flag=True,
    help="only check that MongoDB answers and this worker may read and write its database "
    "(container healthchecks), then exit",
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
    gpu: list[str] | None,
    threads: int | None,
    save_models: str,
    warm: bool,
    steps_per_execution: int,
    compile_cache: str | None,
    checkpoint_every: int,
    checkpoint_interval_s: float,
    checkpoint_max_mb: float,
    checkpoint_dir: str | None,
    check: bool,
) -> None:
    """Evaluate trials from MongoDB until stopped, idle or the search is over."""
    from worker.environment import check_gpu_ids, pin_devices

    ctx = click.get_current_context()
    if gpu and ctx.get_parameter_source("gpu") is click.core.ParameterSource.COMMANDLINE:
        # a GPU this machine lacks would quietly mean the CPU; from $HYPERFLEET_GPU (set by
        # `local`, which checked its --gpus once) it is not asked again at every start
        check_gpu_ids(gpu, "--gpu")

    # before any framework is imported; [] is the CPU
    env_info = pin_devices(None if gpu is None else ",".join(gpu) or "none", threads)
    _compile_cache(compile_cache, env_info)
    if checkpoint_dir:  # read by the store, here and in the trial process
        _checkpoint_dir(checkpoint_dir)
    if heartbeat_s >= lease_s:
        raise ConfigError(
            f"--heartbeat ({heartbeat_s} s) must be shorter than --lease ({lease_s} s)"
        )
    from coordinator.store import connect, redact_uri

    store = connect(mongo, db, wait=not check)  # a healthcheck answers now; a worker waits
    if check:
        from coordinator.store.connection import check_read_write

        check_read_write(store.client, db, store.safe_uri)
        click.echo(
            f"ok: MongoDB at {redact_uri(mongo)} answers; database {db!r} is readable and writable"
        )
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
        warm=warm,
        info={
            **env_info,
            "save_models": save_models,
            "steps_per_execution": steps_per_execution,
            "checkpoint_every": checkpoint_every,
            "checkpoint_interval_s": checkpoint_interval_s,
            "checkpoint_max_bytes": int(checkpoint_max_mb * 2**20),
        },
    )
    sys.exit(Worker(store, config).work())


def _compile_cache(option: str | None, env_info: dict[str, object]) -> None:
    """``--compile-cache``: point JAX in this process and its trial processes at a safe cache
    folder (:mod:`worker.compile_cache`), or say in one line why there is none."""
    import logging

    from worker.compile_cache import apply, keras_backend, resolve

    logger = logging.getLogger("worker.worker")
    path, why_not = resolve(option, os.environ)
    if why_not:
        logger.warning("%s", why_not)
    if path is not None:
        apply(path, os.environ)  # read by JAX in the trial process (inherits this environment)
        env_info["jax_compile_cache"] = str(path)
        logger.info("JAX compilation cache: %s", path)
    elif (
        os.environ.get("JAX_COMPILATION_CACHE_DIR")
        and (option or "").strip().lower() in ("", "auto")
        and keras_backend(os.environ) == "jax"
    ):
        preset = os.environ["JAX_COMPILATION_CACHE_DIR"]
        env_info["jax_compile_cache"] = preset
        logger.info("JAX compilation cache: %s (JAX_COMPILATION_CACHE_DIR, not checked)", preset)


def _checkpoint_dir(path: str) -> None:
    """Create ``--checkpoint-dir`` (0700) if needed, warn if others may write to it (they could
    replace checkpoints: each is checked by its digest, but a trial would start over), and hand
    it to the store of this process and its trial processes."""
    import logging
    import stat
    from pathlib import Path

    from coordinator.store.checkpoints import CHECKPOINT_DIR_ENV, sweep_stale_temporaries

    path = os.path.abspath(os.path.expanduser(path))
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        info = os.stat(path)
    except OSError as e:
        raise ConfigError(f"--checkpoint-dir {path}: {e.strerror or e}") from e
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH) or info.st_uid != os.getuid():
        logging.getLogger("worker.worker").warning(
            "--checkpoint-dir %s is writable by others or not yours (mode %o): anyone who can "
            "write there can make trials start over; chmod 700 it",
            path,
            stat.S_IMODE(info.st_mode),
        )
    os.environ[CHECKPOINT_DIR_ENV] = path
    swept = sweep_stale_temporaries(Path(path))
    if swept:
        logging.getLogger("worker.worker").info(
            "--checkpoint-dir %s: deleted %d temporary checkpoint files left by workers killed "
            "while writing (unchanged for over an hour)",
            path,
            swept,
        )
