"""Worker containers on one Docker host, through the Docker SDK (``hyperfleet launch``).

Each GPU gets ``per_gpu`` worker containers pinned to it with a device request for that GPU
alone. Inside such a container the NVIDIA runtime shows only that GPU, and CUDA numbers it 0, so
the container's ``CUDA_VISIBLE_DEVICES`` is ``"0"``; the host's GPU id is kept in the
``hyperfleet.gpu`` label and ``HYPERFLEET_HOST_GPU``. CPU workers hide every GPU.

Containers carry labels (role, GPU, exp key, launch id) so that ``--ps`` and ``--stop`` find
them again without any local state. The ``docker`` package is imported only here, and only when
a command needs it, so hyperfleet runs without it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import re
import urllib.parse
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from coordinator.errors import ConfigError, DockerUnavailable, HyperfleetError

if TYPE_CHECKING:
    import docker
    import docker.models.containers

logger = logging.getLogger(__name__)

DEFAULT_IMAGE = "hyperfleet:latest"
DEFAULT_NETWORK = "hyperfleet"
#: seconds ``launch --stop`` lets a worker finish its trial before Docker kills it
STOP_TIMEOUT_S = 600
LABEL_ROLE = "hyperfleet.role"
LABEL_GPU = "hyperfleet.gpu"
LABEL_EXP_KEY = "hyperfleet.exp_key"
LABEL_LAUNCH = "hyperfleet.launch"
ROLE_WORKER = "worker"
NO_GPU = "none"
_NAME_RE = re.compile(r"[^a-zA-Z0-9_.-]+")
_LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", "[::1]"}


@dataclass(frozen=True)
class WorkerSpec:
    """One worker container, everything decided before Docker is asked."""

    name: str
    gpu: str  # the host's GPU id, or "none"
    image: str
    command: list[str]
    environment: dict[str, str]
    labels: dict[str, str]
    network: str


@dataclass
class LaunchPlan:
    mongo: str
    db: str
    exp_key: str | None = None
    gpus: list[str] = field(default_factory=list)
    per_gpu: int = 1
    cpu_workers: int = 0
    image: str = DEFAULT_IMAGE
    network: str = DEFAULT_NETWORK
    idle_timeout_s: float | None = None
    threads: int | None = None
    labels: dict[str, str] = field(default_factory=dict)
    restart_retries: int = 3

    def specs(self, launch_id: str) -> list[WorkerSpec]:
        """The containers of this plan, GPU workers first (in ``gpus`` order), then CPU ones."""
        check_mongo_reachable_from_containers(self.mongo, self.network)
        slots = [(gpu, k) for gpu in self.gpus for k in range(self.per_gpu)]
        slots += [(NO_GPU, k) for k in range(self.cpu_workers)]
        return [self._spec(gpu, k, launch_id) for gpu, k in slots]

    def _spec(self, gpu: str, k: int, launch_id: str) -> WorkerSpec:
        key = self.exp_key or "any"
        where = "cpu" if gpu == NO_GPU else f"gpu{gpu}"
        name = _NAME_RE.sub("-", f"hyperfleet-{key}-{where}-{k}").strip("-.")
        command = ["worker"]
        if self.exp_key:
            command += ["--exp-key", self.exp_key]
        if self.idle_timeout_s is not None:
            command += ["--idle-timeout", f"{self.idle_timeout_s:g}"]
        if self.threads is not None:
            command += ["--threads", str(self.threads)]
        if gpu == NO_GPU:
            command += ["--gpu", "none"]
        environment = {
            "HYPERFLEET_MONGO": self.mongo,  # env, not argv: the password stays out of `ps`
            "HYPERFLEET_DB": self.db,
            # the container sees only its own GPU, numbered 0 by CUDA; "" hides every GPU
            "CUDA_VISIBLE_DEVICES": "" if gpu == NO_GPU else "0",
            "HYPERFLEET_HOST_GPU": gpu,
        }
        labels = {
            **self.labels,
            LABEL_ROLE: ROLE_WORKER,
            LABEL_GPU: gpu,
            LABEL_EXP_KEY: self.exp_key or "",
            LABEL_LAUNCH: launch_id,
        }
        return WorkerSpec(name, gpu, self.image, command, environment, labels, self.network)


def parse_labels(pairs: tuple[str, ...]) -> dict[str, str]:
    labels = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--label {pair!r}: expected KEY=VALUE")
        if key.startswith("hyperfleet."):
            raise ConfigError(f"--label {key!r}: the hyperfleet.* labels are set by launch itself")
        labels[key] = value
    return labels


def check_mongo_reachable_from_containers(mongo: str, network: str) -> None:
    """A localhost URI means the container itself, unless it shares the host's network."""
    if network == "host" or not mongo.startswith("mongodb://"):
        return
    from coordinator.store import redact_uri

    hosts = urllib.parse.urlsplit(mongo).netloc.rpartition("@")[2]
    for host in hosts.split(","):
        name = host[: host.find("]") + 1] if host.startswith("[") else host.rsplit(":", 1)[0]
        if name.lower() in _LOCAL_HOSTS:
            raise ConfigError(
                f"--mongo {redact_uri(mongo)} names localhost, which inside a container is the "
                "container itself: use an address the containers can reach (the host's IP, or "
                "the mongo service on a shared --network), or --network host"
            )


# -- Docker -------------------------------------------------------------------------------------


def connect_docker(docker_host: str | None) -> docker.DockerClient:
    """A client for ``docker_host`` (``unix://...``, ``tcp://...``), else $DOCKER_HOST/default."""
    try:
        import docker
        import docker.errors
    except ModuleNotFoundError as e:
        raise DockerUnavailable(
            "hyperfleet launch needs the Docker SDK: pip install 'hyperfleet[deploy]'"
        ) from e
    where = docker_host or "$DOCKER_HOST or the default socket"
    try:
        client = docker.DockerClient(base_url=docker_host) if docker_host else docker.from_env()
        client.ping()
    except docker.errors.DockerException as e:
        raise DockerUnavailable(
            f"cannot reach the Docker engine at {where} ({_first_line(e)}); is dockerd running? "
            "pass --docker-host or set DOCKER_HOST"
        ) from e
    return client


class Launcher:
    """Start, list and stop hyperfleet worker containers on one Docker engine."""

    def __init__(self, client: docker.DockerClient) -> None:
        self.client = client

    def launch(self, plan: LaunchPlan) -> list[docker.models.containers.Container]:
        """Create and start every container of ``plan``, or none: on the first failure the
        containers created so far are removed and the error says which worker failed and why."""
        import docker.errors

        launch_id = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        specs = plan.specs(launch_id)
        if not specs:
            raise ConfigError("nothing to launch: pass --gpus and/or --cpu-workers")
        self._check_image(plan.image)
        created_network = self._ensure_network(plan.network, plan.labels)
        started: list[docker.models.containers.Container] = []
        for spec in specs:
            try:
                container = self.create(spec, plan.restart_retries)
            except docker.errors.APIError as e:
                self._rollback(started, plan.network if created_network else None)
                raise HyperfleetError(
                    f"could not create worker {spec.name}: {_api_message(e)}"
                ) from e
            started.append(container)
            try:
                container.start()
            except docker.errors.APIError as e:
                self._rollback(started, plan.network if created_network else None)
                raise HyperfleetError(self._explain_start_failure(spec, e)) from e
            logger.info("started %s (gpu %s)", spec.name, spec.gpu)
        return started

    def workers(
        self, exp_key: str | None = None, labels: dict[str, str] | None = None
    ) -> list[docker.models.containers.Container]:
        filters = [f"{LABEL_ROLE}={ROLE_WORKER}"]
        if exp_key is not None:
            filters.append(f"{LABEL_EXP_KEY}={exp_key}")
        filters += [f"{k}={v}" for k, v in (labels or {}).items()]
        found = self.client.containers.list(all=True, filters={"label": filters})
        return sorted(found, key=lambda c: c.name)

    def stop(
        self,
        exp_key: str | None = None,
        labels: dict[str, str] | None = None,
        timeout_s: int = STOP_TIMEOUT_S,
    ) -> list[str]:
        """SIGTERM each worker (it finishes its trial), wait up to ``timeout_s``, then remove it.

        Networks that launch created and that no container uses any more are removed too.
        """
        import docker.errors

        containers = self.workers(exp_key, labels)
        networks = {
            name
            for c in containers
            for name in (c.attrs.get("NetworkSettings", {}).get("Networks") or {})
        }
        for c in containers:
            if c.status in ("running", "restarting"):
                c.stop(timeout=timeout_s)
        for c in containers:
            with contextlib.suppress(docker.errors.NotFound):
                c.remove(force=True)
        for name in networks:
            self._remove_network_if_unused(name)
        return [c.name for c in containers]

    # -- steps --------------------------------------------------------------------------------

    def create(self, spec: WorkerSpec, retries: int = 3) -> docker.models.containers.Container:
        """Create (not start) the container of ``spec``."""
        import docker.types

        device_requests = []
        if spec.gpu != NO_GPU:
            device_requests.append(
                docker.types.DeviceRequest(
                    driver="nvidia", device_ids=[spec.gpu], capabilities=[["gpu"]]
                )
            )
        return self.client.containers.create(
            spec.image,
            spec.command,
            name=spec.name,
            hostname=spec.name,  # trials record it: which container (and GPU) ran them
            environment=spec.environment,
            labels=spec.labels,
            network=spec.network,
            device_requests=device_requests,
            restart_policy={"Name": "on-failure", "MaximumRetryCount": retries},
            init=True,  # tini: forwards SIGTERM to the worker, reaps trial processes
            stop_signal="SIGTERM",
            detach=True,
        )

    def _check_image(self, image: str) -> None:
        import docker.errors

        try:
            self.client.images.get(image)
        except docker.errors.ImageNotFound as e:
            raise ConfigError(
                f"image {image!r} is not on this Docker host: build it (docker build -t {image} .) "
                "or pass --image"
            ) from e

    def _ensure_network(self, name: str, labels: dict[str, str]) -> bool:
        """Create the bridge network ``name`` unless it exists; True when created."""
        if name in ("host", "none", "bridge") or self.client.networks.list(names=[name]):
            return False
        self.client.networks.create(name, driver="bridge", labels={**labels, LABEL_ROLE: "network"})
        logger.info("created network %s", name)
        return True

    def _remove_network_if_unused(self, name: str) -> None:
        import docker.errors

        for net in self.client.networks.list(names=[name]):
            try:
                net.reload()
                if net.attrs.get("Labels", {}).get(LABEL_ROLE) == "network" and not net.containers:
                    net.remove()
            except docker.errors.APIError as e:
                logger.warning("network %s not removed: %s", name, _api_message(e))

    def _rollback(
        self, containers: list[docker.models.containers.Container], network: str | None
    ) -> None:
        """Remove what a failed launch created: its containers, and its network if new."""
        import docker.errors

        for c in containers:
            try:
                c.remove(force=True)
            except docker.errors.APIError as e:
                logger.warning("could not remove %s: %s", c.name, _api_message(e))
        if network:
            self._remove_network_if_unused(network)

    def _explain_start_failure(self, spec: WorkerSpec, error: Exception) -> str:
        message = _api_message(error)
        if spec.gpu != NO_GPU and ("device driver" in message or "nvidia" in message.lower()):
            return (
                f"GPU {spec.gpu}: Docker cannot give containers GPUs on this host (no NVIDIA "
                "container runtime); install the NVIDIA container toolkit and restart dockerd, "
                f"or launch CPU workers with --cpu-workers N [docker: {message}]"
            )
        return f"could not start worker {spec.name}: {message}"


def describe(container: docker.models.containers.Container) -> dict[str, Any]:
    labels = container.labels
    return {
        "name": container.name,
        "status": container.status,
        "gpu": labels.get(LABEL_GPU, "?"),
        "exp_key": labels.get(LABEL_EXP_KEY) or "any",
        "image": container.attrs.get("Config", {}).get("Image", "?"),
        "launch": labels.get(LABEL_LAUNCH, "?"),
    }


def _api_message(error: Exception) -> str:
    explanation = getattr(error, "explanation", None)
    return _first_line(explanation or error)


def _first_line(error: object) -> str:
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__
