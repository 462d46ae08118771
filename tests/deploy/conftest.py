"""Docker tier fixtures: a real dockerd (started by deploy/ci/dockerd.sh unless $DOCKER_HOST
answers) and the real Dockerfile built on an offline Debian base (deploy/ci/test-image.sh).
Where dockerd cannot start, the tests skip with the script's reason."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
CI = ROOT / "deploy" / "ci"
TEST_IMAGE = "hyperfleet:ci-test"
TEST_LABEL = "hyperfleet-test"


def _reason(out: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in (out.stderr or out.stdout).splitlines() if line.strip()]
    return lines[-1] if lines else f"exit code {out.returncode}"


@pytest.fixture(scope="session")
def docker_host() -> Iterator[str]:
    """DOCKER_HOST of a running engine; started here (and stopped after) if none answers."""
    try:
        import docker
    except ModuleNotFoundError:
        pytest.skip("the docker SDK is not installed: pip install -e '.[deploy]'")
    given = os.environ.get("DOCKER_HOST")
    if given:
        try:
            docker.DockerClient(base_url=given).ping()
            yield given
            return
        except docker.errors.DockerException as e:
            print(f"DOCKER_HOST={given} does not answer ({e}); starting our own dockerd")
    out = subprocess.run(
        [str(CI / "dockerd.sh"), "start"], capture_output=True, text=True, timeout=600
    )
    if out.returncode != 0:
        reason = f"dockerd cannot start here: {_reason(out)}"
        print(reason)
        pytest.skip(reason)
    host = out.stdout.strip().splitlines()[-1].split("=", 1)[1]
    try:
        yield host
    finally:
        if not os.environ.get("HYPERFLEET_KEEP_DOCKERD"):
            subprocess.run([str(CI / "dockerd.sh"), "stop"], timeout=120, check=False)


@pytest.fixture(scope="session")
def docker_client(docker_host: str) -> Iterator[Any]:
    import docker

    client = docker.DockerClient(base_url=docker_host)
    yield client
    client.close()


@pytest.fixture(scope="session")
def test_image(docker_host: str, docker_client: Any) -> str:
    """The project's Dockerfile, built on the offline Debian base with its wheelhouse."""
    env = {**os.environ, "DOCKER_HOST": docker_host}
    out = subprocess.run(
        [str(CI / "test-image.sh")], capture_output=True, text=True, timeout=900, env=env
    )
    if out.returncode != 0:
        pytest.fail(f"the offline base image could not be built: {_reason(out)}")
    base = out.stdout.strip().splitlines()[-1]
    docker_client.images.build(
        path=str(ROOT),
        tag=TEST_IMAGE,
        buildargs={"BASE_IMAGE": base, "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": "/wheels"},
        rm=True,
        forcerm=True,
        labels={TEST_LABEL: "1"},
    )
    return TEST_IMAGE


@pytest.fixture
def network(docker_client: Any, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A bridge network of our own; its gateway is the host as seen from the containers."""
    name = f"hf-test-{os.getpid()}-{request.node.name[:20]}".replace("[", "-").replace("]", "")
    net = docker_client.networks.create(name, driver="bridge", labels={TEST_LABEL: "1"})
    net.reload()
    try:
        yield net
    finally:
        for c in docker_client.containers.list(all=True, filters={"network": name}):
            c.remove(force=True)
        net.remove()
