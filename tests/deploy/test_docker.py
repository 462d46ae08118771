"""The docker tier: `hyperfleet launch` and `docker compose up` against a real dockerd.

Run with `pytest -m docker tests/deploy` (as root: it starts its own dockerd, see conftest.py).
No registry is reachable here, so the image is the real Dockerfile built on a debootstrap base.
The NVIDIA container runtime is absent: GPU containers are created for real (their device
requests are inspected) but cannot start, which is what a GPU-less Docker host must report.
"""

from __future__ import annotations

import os
import socket
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest

from coordinator.launch import Launcher, LaunchPlan
from coordinator.server import EmbeddedServer
from coordinator.states import TrialState
from coordinator.store import connect
from tests.conftest import cli_env, hyperfleet, wait_for
from tests.deploy.compose_checks import COMPOSE_FILE, ROOT, TEST_ENV, run_compose
from tests.deploy.conftest import TEST_LABEL

pytestmark = pytest.mark.docker

EMBEDDED = ROOT / "deploy" / "compose" / "embedded-mongo.yml"


def _env(docker_host: str) -> dict[str, str]:
    return cli_env(DOCKER_HOST=docker_host)


@pytest.fixture
def host_server(tmp_path: Path) -> Any:
    """An embedded server on every address of this host, so containers reach it via the gateway."""
    with EmbeddedServer(tmp_path / "db", host="0.0.0.0") as srv:
        yield srv


def test_launch_creates_gpu_pinned_containers(
    docker_client: Any, test_image: str, network: Any
) -> None:
    plan = LaunchPlan(
        mongo="mongodb://hf:pw@10.1.2.3:27017/?authSource=hyperfleet",
        db="hyperfleet",
        exp_key="exp-a",
        gpus=["0", "3"],
        per_gpu=2,
        cpu_workers=1,
        image=test_image,
        network=network.name,
        idle_timeout_s=60,
        labels={TEST_LABEL: "1"},
    )
    launcher = Launcher(docker_client)
    specs = plan.specs("t1")
    assert [s.name for s in specs] == [
        "hyperfleet-exp-a-gpu0-0",
        "hyperfleet-exp-a-gpu0-1",
        "hyperfleet-exp-a-gpu3-0",
        "hyperfleet-exp-a-gpu3-1",
        "hyperfleet-exp-a-cpu-0",
    ]
    containers = [launcher.create(spec) for spec in specs]
    try:
        for spec, c in zip(specs, containers, strict=True):
            c.reload()
            host_config, config = c.attrs["HostConfig"], c.attrs["Config"]
            env = dict(e.split("=", 1) for e in config["Env"])
            requests = host_config["DeviceRequests"] or []
            if spec.gpu == "none":
                assert requests == []
                assert env["CUDA_VISIBLE_DEVICES"] == "" and "--gpu" in config["Cmd"]
            else:
                assert [(r["Driver"], r["DeviceIDs"], r["Capabilities"]) for r in requests] == [
                    ("nvidia", [spec.gpu], [["gpu"]])
                ]
                assert env["CUDA_VISIBLE_DEVICES"] == "0"  # its only GPU, as CUDA numbers it
            assert env["HYPERFLEET_HOST_GPU"] == spec.gpu
            assert env["HYPERFLEET_MONGO"] == plan.mongo and "pw" not in " ".join(config["Cmd"])
            assert config["Labels"]["hyperfleet.role"] == "worker"
            assert config["Labels"]["hyperfleet.gpu"] == spec.gpu
            assert config["Labels"]["hyperfleet.exp_key"] == "exp-a"
            assert config["Labels"][TEST_LABEL] == "1"
            assert list(c.attrs["NetworkSettings"]["Networks"]) == [network.name]
            assert host_config["RestartPolicy"] == {"Name": "on-failure", "MaximumRetryCount": 3}
            assert host_config["Init"] is True
            assert config["Cmd"][:3] == ["worker", "--exp-key", "exp-a"]
            assert config["Hostname"] == spec.name
            assert config["Healthcheck"]["Test"] == ["CMD", "hyperfleet", "worker", "--check"]
            assert config["User"] == "10001:10001"
    finally:
        for c in containers:
            c.remove(force=True)


def test_gpu_container_start_fails_in_one_line_and_leaves_nothing(
    docker_host: str, docker_client: Any, test_image: str
) -> None:
    name = f"hf-gpu-{uuid.uuid4().hex[:6]}"
    out = hyperfleet(
        "launch",
        "--gpus",
        "0,1",
        "--cpu-workers",
        "1",
        "--image",
        test_image,
        "--mongo",
        "mongodb://10.1.2.3:27017/",
        "--network",
        name,
        "--label",
        f"{TEST_LABEL}=1",
        env=_env(docker_host),
    )
    assert out.returncode == 1
    errors = [line for line in out.stderr.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and "Traceback" not in out.stderr, out.stderr
    assert errors[0].startswith("Error: GPU 0: Docker cannot give containers GPUs on this host")
    assert "NVIDIA container toolkit" in errors[0]
    assert docker_client.containers.list(all=True, filters={"label": "hyperfleet.role"}) == []
    assert docker_client.networks.list(names=[name]) == [], "the new network is rolled back"


def test_cpu_worker_container_runs_trials(
    docker_host: str, docker_client: Any, test_image: str, network: Any, host_server: Any
) -> None:
    gateway = network.attrs["IPAM"]["Config"][0]["Gateway"]
    in_container_uri = f"mongodb://{gateway}:{host_server.port}/"
    db, key = f"t_{uuid.uuid4().hex[:8]}", "cpu-run"
    env = _env(docker_host)
    common = ["--exp-key", key, "--label", f"{TEST_LABEL}=1"]
    out = hyperfleet(
        "launch", "--cpu-workers", "1", "--image", test_image, "--mongo", in_container_uri,
        "--db", db, "--network", network.name, "--idle-timeout", "120", *common, env=env,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "started hyperfleet-cpu-run-cpu-0 (gpu none)" in out.stdout
    ps = hyperfleet("launch", "--ps", *common, env=env)
    assert "hyperfleet-cpu-run-cpu-0  running  gpu none  exp cpu-run" in ps.stdout, ps.stdout
    search = hyperfleet(
        "search", "quadratic", "--mongo", host_server.uri, "--db", db, "--exp-key", key,
        "--max-evals", "4", "--seed", "1", "--no-progress", env=env, timeout=300,
    )  # fmt: skip
    logs = docker_client.containers.get("hyperfleet-cpu-run-cpu-0").logs().decode()
    assert search.returncode == 0, search.stderr + logs
    store = connect(host_server.uri, db)
    docs = store.trials(key)
    assert len(docs) == 4 and all(d["state"] == TrialState.DONE for d in docs)
    assert {d["worker"]["host"] for d in docs} == {"hyperfleet-cpu-run-cpu-0"}
    assert {d["worker"]["cuda_visible_devices"] for d in docs} == {""}
    store.close()
    stop = hyperfleet("launch", "--stop", "--stop-timeout", "30", *common, env=env)
    assert stop.returncode == 0 and "stopped and removed 1 worker" in stop.stdout, stop.stderr
    assert docker_client.containers.list(all=True, filters={"label": "hyperfleet.role"}) == []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_compose_up_coordinator_and_two_cpu_workers(
    docker_host: str, docker_client: Any, test_image: str
) -> None:
    """docker-compose.yml as shipped, with the embedded server in place of the mongo image."""
    project = f"hftest{os.getpid()}"
    port = _free_port()
    env = {
        **TEST_ENV,
        "DOCKER_HOST": docker_host,
        "COMPOSE_PROJECT_NAME": project,
        "HYPERFLEET_IMAGE": test_image,
        "HYPERFLEET_SPACE": "quadratic",
        "HYPERFLEET_EXP_KEY": "compose-q",
        "HYPERFLEET_MAX_EVALS": "6",
        "HYPERFLEET_CPU_WORKERS": "2",
        "HYPERFLEET_CPU_THREADS": "1",
        "HYPERFLEET_IDLE_TIMEOUT": "60",
        "HYPERFLEET_STOP_GRACE": "20s",
        "MONGO_PORT": str(port),
    }
    files = [COMPOSE_FILE, EMBEDDED]

    def compose(*args: str) -> subprocess.CompletedProcess[str]:
        return run_compose(files, *args, env=env, profiles=("cpu",))

    try:
        up = compose("up", "-d", "--no-build", "--pull", "never")
        assert up.returncode == 0, up.stderr

        def coordinator_exited() -> Any:
            (c,) = docker_client.containers.list(
                all=True,
                filters={"label": [f"com.docker.compose.project={project}",
                                   "com.docker.compose.service=coordinator"]},
            )  # fmt: skip
            return c if c.status == "exited" else None

        coordinator = wait_for(coordinator_exited, timeout=300, interval=1, what="the search")
        logs = coordinator.logs().decode()
        assert coordinator.attrs["State"]["ExitCode"] == 0, logs
        assert "experiment compose-q: done 6" in logs and "best trial" in logs, logs
        store = connect(f"mongodb://127.0.0.1:{port}/", "hyperfleet")
        docs = store.trials("compose-q")
        assert len(docs) == 6 and all(d["state"] == TrialState.DONE for d in docs)
        workers = docker_client.containers.list(
            all=True,
            filters={"label": [f"com.docker.compose.project={project}",
                               "com.docker.compose.service=worker-cpu"]},
        )  # fmt: skip
        assert len(workers) == 2
        hosts = {w.attrs["Config"]["Hostname"] for w in workers}
        assert {d["worker"]["host"] for d in docs} <= hosts
        store.close()
    finally:
        down = compose("down", "--volumes", "--remove-orphans", "--timeout", "20")
        assert down.returncode == 0, down.stderr
        left = docker_client.containers.list(
            all=True, filters={"label": f"com.docker.compose.project={project}"}
        )
        assert left == []
        assert (
            docker_client.networks.list(filters={"label": f"com.docker.compose.project={project}"})
            == []
        )
        assert (
            docker_client.volumes.list(filters={"label": f"com.docker.compose.project={project}"})
            == []
        )
