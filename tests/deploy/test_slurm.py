"""The slurm tier: deploy/slurm/hyperfleet-workers.sbatch on a real single-node slurm.

Run with `pytest -m slurm tests/deploy` (as root: deploy/ci/slurm.sh installs and starts munge,
slurmctld and slurmd unless $SLURM_CONF already answers). The node has no GPUs, so it declares fake
ones (gres over spare tty device files): slurm allocates and binds them and sets
CUDA_VISIBLE_DEVICES for real, but the trials run on the CPU.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from coordinator.server import EmbeddedServer
from coordinator.states import TrialState
from coordinator.store import connect
from tests.conftest import cli_env, hyperfleet, wait_for

pytestmark = pytest.mark.slurm

ROOT = Path(__file__).resolve().parents[2]
SBATCH = ROOT / "deploy" / "slurm" / "hyperfleet-workers.sbatch"
SLURM_SH = ROOT / "deploy" / "ci" / "slurm.sh"


def _answers(env: dict[str, str]) -> bool:
    try:
        out = subprocess.run(["sinfo", "-h"], capture_output=True, env=env, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0


@pytest.fixture(scope="module")
def slurm_env() -> Iterator[dict[str, str]]:
    if os.environ.get("SLURM_CONF") and _answers(dict(os.environ)):
        yield {"SLURM_CONF": os.environ["SLURM_CONF"]}
        return
    out = subprocess.run([str(SLURM_SH), "start"], capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        lines = [line for line in out.stderr.splitlines() if line.strip()] or ["?"]
        reason = f"slurm cannot start here: {lines[-1]}"
        print(reason)
        pytest.skip(reason)
    conf = out.stdout.strip().splitlines()[-1].split("=", 1)[1]
    try:
        yield {"SLURM_CONF": conf}
    finally:
        if not os.environ.get("HYPERFLEET_KEEP_SLURM"):
            subprocess.run([str(SLURM_SH), "stop"], timeout=120, check=False)


def test_sbatch_array_workers_run_the_search(slurm_env: dict[str, str], tmp_path: Path) -> None:
    db, key = f"t_{uuid.uuid4().hex[:8]}", "slurm-q"
    with EmbeddedServer(tmp_path / "db") as srv:
        env = cli_env(
            **slurm_env,
            HYPERFLEET_MONGO=srv.uri,
            HYPERFLEET_DB=db,
            HYPERFLEET_EXP_KEY=key,
            HYPERFLEET_BIN=str(Path(sys.executable).parent / "hyperfleet"),
            HYPERFLEET_IDLE_TIMEOUT="60",
        )
        out = subprocess.run(
            ["sbatch", "--parsable", "--array=0-1", "--cpus-per-task=1", "--time=10",
             f"--output={tmp_path}/w-%A_%a.out", "--chdir", str(tmp_path), str(SBATCH)],
            capture_output=True, text=True, env=env, timeout=60,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        job = out.stdout.strip().split(";")[0]

        def running() -> bool:
            q = subprocess.run(
                ["squeue", "-h", "-j", job, "-t", "RUNNING", "-o", "%i"],
                capture_output=True, text=True, env=env, timeout=30,
            )  # fmt: skip
            return len(q.stdout.split()) == 2

        try:
            wait_for(running, timeout=60, interval=0.5, what="both array tasks to run")
            search = hyperfleet(
                "search", "quadratic", "--mongo", srv.uri, "--db", db, "--exp-key", key,
                "--max-evals", "8", "--seed", "2", "--set", "sleep=0.3", "--no-progress",
                env=cli_env(), timeout=300,
            )  # fmt: skip
            assert search.returncode == 0, search.stderr

            def finished() -> bool:
                q = subprocess.run(
                    ["squeue", "-h", "-j", job, "-o", "%i"],
                    capture_output=True, text=True, env=env, timeout=30,
                )  # fmt: skip
                return q.stdout.strip() == ""

            wait_for(finished, timeout=90, interval=1, what="the workers to leave")
        finally:
            subprocess.run(["scancel", job], env=env, timeout=30, check=False)
        logs = {p.name: p.read_text() for p in sorted(tmp_path.glob("w-*.out"))}
        text = "\n".join(logs.values())
        assert len(logs) == 2, logs
        # each array task ran one worker on its own (fake) GPU, and left when the search was over
        gpus = sorted(re.findall(r"array task (\d), local id 0, gpu (\d)", text))
        assert [g for _, g in gpus] in (["0", "1"], ["1", "0"]), text
        assert text.count(f"search {key!r} is over") == 2, text
        worker_ids = set(re.findall(r"worker (\S+) started", text))
        store = connect(srv.uri, db)
        docs = store.trials(key)
        store.close()
    assert len(docs) == 8 and all(d["state"] == TrialState.DONE for d in docs)
    assert {d["worker"]["id"] for d in docs} <= worker_ids
    assert {d["worker"]["cuda_visible_devices"] for d in docs} <= {"0", "1"}
