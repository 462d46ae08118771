"""The baselines' environments: stock hyperopt, Optuna and Ray Tune virtualenvs, a private
PostgreSQL, and hyperopt's in-memory ``fmin(Trials())`` (the ceiling, in hyperfleet's own venv)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import venv
from collections.abc import Callable
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
VENVS = BENCH / ".venvs"
REQUIREMENTS = {
    "stock": ["hyperopt==0.3.0", "pymongo==3.13.0"],
    "optuna": ["optuna==5.0.0", "psycopg2-binary==2.9.13"],
    # bench/time_to_accuracy.py's ray-asha anchor; hyperopt (HyperOptSearch) and Keras come from
    # hyperfleet's venv, appended to the path by bench/tta_objective.py
    "ray": ["ray[tune]==2.60.0"],
}


def ensure_venv(name: str) -> Path:
    """``bench/.venvs/NAME`` with its pinned packages (created once, reused after)."""
    found = existing_venv(name)
    if found is not None:
        return found
    path = VENVS / name
    python, stamp = path / "bin" / "python", path / "requirements.txt"
    wanted = "\n".join(REQUIREMENTS[name]) + "\n"
    print(f"creating {path} ({', '.join(REQUIREMENTS[name])}) ...", file=sys.stderr, flush=True)
    shutil.rmtree(path, ignore_errors=True)
    venv.EnvBuilder(with_pip=True).create(path)
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", *REQUIREMENTS[name]],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    stamp.write_text(wanted)
    return python


def existing_venv(name: str) -> Path | None:
    """``bench/.venvs/NAME``'s python if that venv exists with its pinned packages, else None."""
    path = VENVS / name
    python, stamp = path / "bin" / "python", path / "requirements.txt"
    wanted = "\n".join(REQUIREMENTS[name]) + "\n"
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return python
    return None


def versions(python: Path | str, modules: list[str]) -> dict[str, str]:
    code = (
        "import importlib.metadata as m, json, sys\n"
        "def v(n):\n"
        "    try:\n"
        "        return m.version(n)\n"
        "    except m.PackageNotFoundError:\n"
        "        return 'not installed'\n"
        "print(json.dumps({n: v(n) for n in sys.argv[1:]}))"
    )
    out = subprocess.run([str(python), "-c", code, *modules], capture_output=True, text=True)
    return json.loads(out.stdout) if out.returncode == 0 else {}


def run_json(cmd: list[str], timeout_s: float) -> dict[str, Any]:
    """Run a baseline script and parse its last stdout line (a JSON object)."""
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{cmd[1]} failed ({proc.returncode}): {proc.stderr[-1500:]}")
    return json.loads(lines[-1])


def in_memory_hyperopt(n: int) -> dict[str, Any]:
    """hyperopt's own serial ``fmin(Trials())`` on the same objective: the algorithm's limit."""
    import numpy as np
    from hyperopt import STATUS_OK, Trials, fmin, hp, tpe

    def objective(params: dict[str, Any]) -> dict[str, Any]:
        return {"loss": params["x"] ** 2, "status": STATUS_OK}

    started = time.perf_counter()
    fmin(
        objective,
        {"x": hp.uniform("x", -10.0, 10.0)},
        algo=tpe.suggest,
        max_evals=n,
        trials=Trials(),
        rstate=np.random.default_rng(1),
        show_progressbar=False,
    )
    wall = time.perf_counter() - started
    return {
        "system": "hyperopt in-memory fmin(Trials()) (ceiling)",
        "n": n,
        "done": n,
        "seconds": round(wall, 3),
        "trials_per_s": round(n / wall, 2),
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_postgres() -> tuple[str, Callable[[], None]]:
    """A throwaway PostgreSQL cluster (Debian's packages; run as ``postgres`` when root).

    Returns the SQLAlchemy URL and a function that stops and removes it. Raises ``RuntimeError``
    with the reason when PostgreSQL is not installed or does not start.
    """
    bins = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not bins:
        raise RuntimeError("PostgreSQL is not installed (apt-get install postgresql)")
    bindir = bins[-1].parent
    root = Path(tempfile.mkdtemp(prefix="hf-bench-pg-"))
    data = root / "data"
    as_postgres: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        as_postgres = ["runuser", "-u", "postgres", "--"]
    port = _free_port()

    def pg(*args: str, check: bool = True) -> None:
        subprocess.run([*as_postgres, *args], check=check, capture_output=True, cwd=root)

    def stop() -> None:
        pg(str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop", check=False)
        shutil.rmtree(root, ignore_errors=True)

    try:
        pg(str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres")
        opts = f"-p {port} -k {root} -c listen_addresses=127.0.0.1"
        pg(
            str(bindir / "pg_ctl"),
            "-D",
            str(data),
            "-o",
            opts,
            "-l",
            str(root / "log"),
            "-w",
            "start",
        )
        pg(str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "bench")
    except (subprocess.CalledProcessError, OSError) as e:
        stop()
        raise RuntimeError(f"PostgreSQL did not start: {e}") from e
    return f"postgresql+psycopg2://postgres@127.0.0.1:{port}/bench", stop
