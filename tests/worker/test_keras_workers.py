"""Keras workers: GPU pinning recorded on a CPU machine, the JAX backend, and divergence (NaN)
failing a trial while the search goes on. Real workers, real Keras, real MNIST (tiny subsets)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from coordinator.server import EmbeddedServer
from coordinator.states import TrialState
from coordinator.store import TrialStore
from tests.conftest import cli_env, start_worker, stop_all
from tests.worker.test_keras_search import search_cmd

TINY = ("--set", "epochs=1", "--set", "train_size=256", "--set", "val_size=256")
KERAS_SPACES = str(Path(__file__).resolve().parent / "keras_spaces_for_tests.py")


def run_searches(
    uri: str,
    db: str,
    searches: list[tuple[str, str, int, tuple[str, ...]]],
    worker_args: list[tuple[str, ...]],
    tmp_path: Path,
    env: dict[str, str] | None = None,
) -> list[subprocess.CompletedProcess[str]]:
    """Start one worker per ``worker_args`` and one search per (space, exp key, evals, args);
    wait for all searches; the workers leave once their search is over."""
    workers = [
        start_worker(uri, db, *args, log=tmp_path / f"worker-{i}.log", env=env)
        for i, args in enumerate(worker_args)
    ]
    procs = [
        subprocess.Popen(
            search_cmd(uri, db, space, key, evals, *args),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=cli_env(),
        )
        for space, key, evals, args in searches
    ]
    try:
        done = []
        for proc in procs:
            out, err = proc.communicate(timeout=300)
            done.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
        if all(d.returncode == 0 for d in done):
            for w in workers:
                w.wait(30)
    finally:
        stop_all([*procs, *workers])
    return done


def test_gpu_pinning_is_recorded_on_a_cpu_machine(
    server: EmbeddedServer, store: TrialStore, db_name: str, tmp_path: Path
) -> None:
    one = ("--exp-key", "pin", "--threads", "1", "--max-trials", "1")
    done = run_searches(
        server.uri,
        db_name,
        [("mnist_mlp", "pin", 2, TINY)],
        [(*one, "--gpu", "3"), (*one, "--gpu", "none")],
        tmp_path,
    )
    assert done[0].returncode == 0, done[0].stderr
    trials = {d["worker"]["gpu"]: d for d in store.trials("pin")}
    assert set(trials) == {"3", "none"}, "each worker runs one trial (--max-trials 1)"
    pinned, cpu = trials["3"], trials["none"]
    assert pinned["worker"]["cuda_visible_devices"] == "3"
    assert pinned["result"]["cuda_visible_devices"] == "3"
    assert pinned["result"]["devices"] == ["CPU"]  # no GPU 3 here: TensorFlow falls back
    assert cpu["worker"]["cuda_visible_devices"] == "" == cpu["result"]["cuda_visible_devices"]
    assert cpu["result"]["devices"] == ["CPU"] and cpu["result"]["threads"] == 1


def test_jax_backend_search(
    server: EmbeddedServer, store: TrialStore, db_name: str, tmp_path: Path
) -> None:
    done = run_searches(
        server.uri,
        db_name,
        [("mnist_mlp", "jax", 2, (*TINY, "--set", "epochs=2"))],
        [("--exp-key", "jax", "--threads", "1")],
        tmp_path,
        env=cli_env(KERAS_BACKEND="jax", XDG_CACHE_HOME=str(tmp_path / "cache")),
    )
    assert done[0].returncode == 0, done[0].stderr
    docs = store.trials("jax")
    assert len(docs) == 2
    for doc in docs:
        assert doc["state"] == TrialState.DONE and doc["result"]["status"] == "ok"
        assert doc["result"]["backend"] == "jax" and doc["result"]["devices"] == ["CPU"]
        assert [e["epoch"] for e in doc["epochs"]] == [1, 2]
    assert any(d.get("_attachments") for d in docs)
    # the persistent compilation cache is on by default on JAX: a folder per machine, 0700
    (folder,) = (tmp_path / "cache" / "hyperfleet" / "jax").iterdir()
    assert folder.stat().st_mode & 0o777 == 0o700
    assert any(p.is_file() for p in folder.rglob("*")), "the trial's programs were cached"
    assert {d["worker"]["jax_compile_cache"] for d in docs} == {str(folder)}


def test_nan_loss_fails_the_trial_and_the_search_goes_on(
    server: EmbeddedServer, store: TrialStore, db_name: str, tmp_path: Path
) -> None:
    spaces = ("--spaces", KERAS_SPACES)
    done = run_searches(
        server.uri,
        db_name,
        [("keras_nan", "nan", 4, (*TINY, *spaces, "--algo", "rand"))],
        [("--exp-key", "nan", "--threads", "1", *spaces)],
        tmp_path,
    )
    assert done[0].returncode == 0, done[0].stderr
    assert "experiment nan: done 4" in done[0].stdout
    docs = store.trials("nan")
    poisoned = [d for d in docs if d["params"]["poison"]]
    healthy = [d for d in docs if not d["params"]["poison"]]
    assert poisoned and healthy, "seed 0 draws both kinds"
    for doc in poisoned:
        assert doc["state"] == TrialState.DONE and doc["result"]["status"] == "fail"
        assert doc["result"]["failure"].startswith("training diverged: loss became nan")
        assert not doc.get("_attachments")
    assert all(d["result"]["status"] == "ok" for d in healthy)
