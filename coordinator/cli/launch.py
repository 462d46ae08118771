"""``hyperfleet launch``: GPU-pinned worker containers on a Docker host.

The Docker logic is in :mod:`coordinator.launch` (it imports the docker SDK only when asked).
"""

from __future__ import annotations

import click

from coordinator import defaults
from coordinator.cli.options import (
    exp_key_option,
    gpus_options,
    idle_timeout_option,
    mongo_options,
    threads_option,
)
from coordinator.errors import ConfigError
from coordinator.launch import (
    DEFAULT_IMAGE,
    DEFAULT_NETWORK,
    STOP_TIMEOUT_S,
    Launcher,
    LaunchPlan,
    connect_docker,
    describe,
    parse_labels,
)


# --mongo is optional here: --ps and --stop need no database.
@click.command()
@gpus_options(
    gpus_help="host GPU ids, one worker set per GPU",
    per_gpu_help="worker containers per GPU (they share its memory)",
)
@click.option(
    "--cpu-workers",
    type=click.IntRange(0, defaults.MAX_CONTAINERS),
    default=0,
    help="CPU-only worker containers",
)
@click.option("--image", default=DEFAULT_IMAGE, show_default=True, help="hyperfleet image")
@mongo_options(required=False, help="MongoDB URI as seen from the containers")
@exp_key_option("workers serve only this experiment [default: any]")
@click.option(
    "--network",
    default=DEFAULT_NETWORK,
    show_default=True,
    help="Docker network (created if missing; `host` shares the host's)",
)
@idle_timeout_option("workers leave after this many seconds without a trial")
@threads_option("CPU threads per worker")
@click.option("--label", "label_pairs", multiple=True, metavar="KEY=VALUE", help="extra labels")
@click.option(
    "--docker-host",
    envvar="DOCKER_HOST",
    default=None,
    metavar="URL",
    help="Docker engine, e.g. unix:///var/run/docker.sock or tcp://host:2376 [env: DOCKER_HOST]",
)
@click.option("--ps", "list_only", is_flag=True, help="list hyperfleet worker containers")
@click.option("--stop", "stop_them", is_flag=True, help="stop and remove the worker containers")
@click.option(
    "--stop-timeout",
    type=click.IntRange(0, 24 * 3600),
    default=STOP_TIMEOUT_S,
    show_default=True,
    help="with --stop: seconds a worker may finish its trial before it is killed",
)
def launch(
    gpus: list[str] | None,
    per_gpu: int,
    cpu_workers: int,
    image: str,
    mongo: str | None,
    db: str,
    exp_key: str | None,
    network: str,
    idle_timeout_s: float | None,
    threads: int | None,
    label_pairs: tuple[str, ...],
    docker_host: str | None,
    list_only: bool,
    stop_them: bool,
    stop_timeout: int,
) -> None:
    """Start worker containers on a Docker host, one set pinned to each GPU.

    \b
    hyperfleet launch --gpus 0,1,2,3 --per-gpu 2 --exp-key mnist-1 --mongo URI
    hyperfleet launch --ps        # list them (--exp-key to filter)
    hyperfleet launch --stop      # SIGTERM: each finishes its trial, then is removed
    """
    if list_only and stop_them:
        raise ConfigError("--ps and --stop exclude each other")
    total = len(gpus or []) * per_gpu + cpu_workers
    if total > defaults.MAX_CONTAINERS:
        raise ConfigError(
            f"--gpus x --per-gpu + --cpu-workers is {total} worker containers: at most "
            f"{defaults.MAX_CONTAINERS} per launch"
        )
    labels = parse_labels(label_pairs)
    launcher = Launcher(connect_docker(docker_host))
    if list_only:
        rows = [describe(c) for c in launcher.workers(exp_key, labels)]
        if not rows:
            click.echo("no hyperfleet worker containers")
        for r in rows:
            click.echo(
                f"{r['name']}  {r['status']}  gpu {r['gpu']}  exp {r['exp_key']}  {r['image']}"
            )
        return
    if stop_them:
        names = launcher.stop(exp_key, labels, timeout_s=stop_timeout)
        click.echo(f"stopped and removed {len(names)} worker containers")
        return
    if not mongo:
        raise ConfigError("--mongo (or $HYPERFLEET_MONGO) is needed to launch workers")
    plan = LaunchPlan(
        mongo=mongo,
        db=db,
        exp_key=exp_key,
        gpus=gpus or [],
        per_gpu=per_gpu,
        cpu_workers=cpu_workers,
        image=image,
        network=network,
        idle_timeout_s=idle_timeout_s,
        threads=threads,
        labels=labels,
    )
    for container in launcher.launch(plan):
        r = describe(container)
        click.echo(f"started {r['name']} (gpu {r['gpu']})")
