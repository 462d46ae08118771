"""What `hyperfleet launch` decides before it asks Docker (default tier, no engine needed)."""

from __future__ import annotations

import pytest

from coordinator.errors import ConfigError
from coordinator.launch import LaunchPlan, parse_labels
from tests.conftest import hyperfleet


def test_labels_cannot_forge_hyperfleet_ones() -> None:
    assert parse_labels(("team=ml", "x=")) == {"team": "ml", "x": ""}
    with pytest.raises(ConfigError, match="set by launch itself"):
        parse_labels(("hyperfleet.gpu=7",))
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_labels(("novalue",))


def test_plan_pins_each_container_to_one_gpu() -> None:
    plan = LaunchPlan(
        mongo="mongodb://u:secret@db.example.org/", db="hf", exp_key="e 1", gpus=["2", "5"],
        per_gpu=2, cpu_workers=1, idle_timeout_s=30, threads=4,
    )  # fmt: skip
    specs = plan.specs("L")
    assert [(s.name, s.gpu) for s in specs] == [
        ("hyperfleet-e-1-gpu2-0", "2"),
        ("hyperfleet-e-1-gpu2-1", "2"),
        ("hyperfleet-e-1-gpu5-0", "5"),
        ("hyperfleet-e-1-gpu5-1", "5"),
        ("hyperfleet-e-1-cpu-0", "none"),
    ]
    gpu, cpu = specs[2], specs[4]
    assert (
        gpu.environment["CUDA_VISIBLE_DEVICES"] == "0"
        and gpu.environment["HYPERFLEET_HOST_GPU"] == "5"
    )
    assert gpu.labels["hyperfleet.gpu"] == "5" and gpu.labels["hyperfleet.launch"] == "L"
    assert gpu.command == ["worker", "--exp-key", "e 1", "--idle-timeout", "30", "--threads", "4"]
    assert cpu.environment["CUDA_VISIBLE_DEVICES"] == "" and cpu.command[-2:] == ["--gpu", "none"]
    assert all("secret" not in " ".join(s.command) for s in specs)


@pytest.mark.parametrize(
    "uri", ["mongodb://localhost:27017/", "mongodb://u:p@127.0.0.1/", "mongodb://a:1,[::1]:2/"]
)
def test_localhost_uri_is_refused_unless_host_network(uri: str) -> None:
    with pytest.raises(ConfigError, match="inside a container is the container itself"):
        LaunchPlan(mongo=uri, db="hf", gpus=["0"]).specs("L")
    assert LaunchPlan(mongo=uri, db="hf", gpus=["0"], network="host").specs("L")


def test_cli_errors_are_one_line() -> None:
    out = hyperfleet("launch", "--ps", "--stop")
    assert out.returncode == 2 and out.stderr.strip() == "Error: --ps and --stop exclude each other"
    out = hyperfleet("launch", "--gpus", "0", "--docker-host", "unix:///nonexistent/docker.sock")
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert out.stderr.strip().startswith("Error: cannot reach the Docker engine at unix:///")
    # the GPU list is read by the CLI's one parser (tests/coordinator/test_cli_options.py)
    out = hyperfleet("launch", "--gpus", "0,gpu1", "--docker-host", "unix:///nonexistent/d.sock")
    assert out.returncode == 2
    assert out.stderr.strip() == (
        "Error: --gpus '0,gpu1': expected GPU ids like 0 or 0,1 (see nvidia-smi -L), or none"
    )
