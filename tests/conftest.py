"""Shared fixtures: a real SecantusDB server over TCP, a fresh database per test, CLI helpers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from coordinator.server import EmbeddedServer
from coordinator.states import TrialState
from coordinator.store import TrialStore, connect

ROOT = Path(__file__).resolve().parent.parent
TEST_SPACES = str(Path(__file__).resolve().parent / "spaces_for_tests.py")


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedServer]:
    srv = EmbeddedServer(tmp_path_factory.mktemp("db"), sync=False)  # nobody kills this one
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def db_name() -> str:
    return f"t_{uuid.uuid4().hex[:10]}"


@pytest.fixture
def store(server: EmbeddedServer, db_name: str) -> Iterator[TrialStore]:
    s = connect(server.uri, db_name)
    yield s
    s.close()


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HYPERFLEET_")}
    env.update(PYTHONUNBUFFERED="1", **extra)
    return env


def run_keras_script(code: str, backend: str = "tensorflow", timeout: float = 600) -> Any:
    """Run ``code`` (a Python script printing one JSON line last) in a fresh interpreter with
    ``KERAS_BACKEND=backend``; its last stdout line, decoded."""
    env = {**cli_env(), "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2"}
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=timeout,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def modules_loaded_after(body: str, names: tuple[str, ...]) -> tuple[list[str], str]:
    """Run ``body`` in a fresh interpreter; which of the top-level modules ``names`` it
    loaded (sorted), and its stdout."""
    import ast
    import textwrap

    script = textwrap.dedent(body) + textwrap.dedent(f"""
        import sys
        tops = {{m.split(".")[0] for m in sys.modules}}
        print("LOADED", sorted(t for t in {names!r} if t in tops), file=sys.stderr)
    """)
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=cli_env(),
    )
    assert out.returncode == 0, out.stderr[-3000:]
    line = next(x for x in out.stderr.splitlines() if x.startswith("LOADED"))
    return ast.literal_eval(line.removeprefix("LOADED ")), out.stdout


def hyperfleet(
    *args: str,
    timeout: float = 120,
    env: dict[str, str] | None = None,
    cwd: str | Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run the real CLI in a fresh process."""
    return subprocess.run(
        [sys.executable, "-m", "coordinator", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env or cli_env(),
        cwd=cwd,
    )


def start_worker(
    uri: str, db: str, *args: str, log: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    out = open(log, "a") if log else subprocess.DEVNULL  # noqa: SIM115
    return subprocess.Popen(
        [sys.executable, "-m", "coordinator", "worker", "--mongo", uri, "--db", db, *args],
        stdout=out,
        stderr=subprocess.STDOUT,
        text=True,
        env=env or cli_env(),
    )


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def stop_all(procs: list[subprocess.Popen[str]], timeout: float = 20) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def queue_trials(
    store: TrialStore,
    n: int,
    exp_key: str = "exp",
    space: str | None = "quadratic",
    settings: dict | None = None,
    max_attempts: int = 3,
):
    """Queue ``n`` NEW trials the way fmin does (hyperopt's own trial documents, rand.suggest),
    with an experiment document carrying ``settings`` so workers can resolve the space."""
    from hyperopt import hp, rand
    from hyperopt.base import Domain

    from coordinator.trials import HyperfleetTrials

    if space is not None:
        store.create_experiment(
            {
                "_id": exp_key,
                "space": space,
                "settings": settings or {},
                "status": "running",
                "max_attempts": max_attempts,
            }
        )
    trials = HyperfleetTrials(store, exp_key=exp_key, space_name=space)
    domain = Domain(lambda p: 0.0, {"x": hp.uniform("x", -1, 1)})
    docs = rand.suggest(trials.new_trial_ids(n), domain, trials, n)
    trials.insert_trial_docs(docs)
    trials.refresh()
    return trials


def run_search_with_workers(
    uri: str,
    db: str,
    exp_key: str,
    space: str,
    search_args: list[str],
    logs: Path,
    spaces: str | None = None,
    gpus: tuple[str, ...] = ("0", "1"),
) -> subprocess.CompletedProcess[str]:
    """A finished search of ``space`` by one real worker per entry of ``gpus`` (pinned with
    ``--gpu``: harmless on a CPU machine); the workers are stopped afterwards.

    The search starts only once every worker has registered, so that each is polling the queue
    from the first trial on: else a short search can end before a slow worker's start-up (a
    loaded CI machine) and tests that expect every worker in the results fail by chance."""
    extra = ["--spaces", spaces] if spaces else []
    workers = [
        start_worker(
            uri, db, *extra, "--exp-key", exp_key, "--gpu", gpu, log=logs / f"{exp_key}-w{gpu}.log"
        )
        for gpu in gpus
    ]
    try:
        # a warm worker first waits a few seconds for the experiment (which the search creates),
        # then registers: matched by pid, so workers of an earlier search in the same database
        # do not count
        pids = {w.pid for w in workers}
        registry = connect(uri, db)

        def all_registered() -> bool:
            exited = [w.pid for w in workers if w.poll() is not None]
            assert not exited, f"workers {exited} exited before registering (logs in {logs})"
            return pids <= {row.get("pid") for row in registry.list_workers()}

        try:
            wait_for(
                all_registered, 90, interval=0.2, what=f"the workers of {exp_key!r} to register"
            )
        finally:
            registry.close()
        out = hyperfleet(
            "search", space, "--mongo", uri, "--db", db, "--exp-key", exp_key, *extra, *search_args
        )
        assert out.returncode == 0, out.stderr
        return out
    finally:
        stop_all(workers)


@pytest.fixture
def keep_signal_handlers() -> Iterator[None]:
    """``Worker.work`` installs its two-stage handlers; give pytest its own back."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


DROP = object()


def queued_doc(n: int, exp_key: str, /, **changes) -> dict:
    """A well-formed queued ``quadratic`` trial document; a change to ``DROP`` removes the field."""
    doc = {
        "tid": n,
        "state": 0,
        "exp_key": exp_key,
        "owner": None,
        "spec": None,
        "result": {"status": "new"},
        "misc": {"tid": n, "cmd": None, "idxs": {"x": [n]}, "vals": {"x": [0.5]}},
        "space": "quadratic",
        "version": 0,
    }
    doc.update(changes)
    return {k: v for k, v in doc.items() if v is not DROP}


def search_quadratic(
    uri: str, db: str, exp_key: str, *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """``hyperfleet search quadratic`` against ``uri``/``db`` under ``exp_key``."""
    return hyperfleet(
        "search",
        "quadratic",
        "--mongo",
        uri,
        "--db",
        db,
        "--exp-key",
        exp_key,
        *args,
        timeout=timeout,
    )


def kill_worker_mid_trial(
    store: TrialStore,
    exp_key: str,
    workers: list[subprocess.Popen[str]],
    timeout: float = 60,
    checkpointed: bool = False,
) -> dict[str, Any] | None:
    """SIGKILL the worker of a RUNNING first attempt of a trial of ``exp_key`` (a live worker of
    ``workers``) and drop it from ``workers``. Returns the trial as read before the kill if the
    worker died holding it; ``None`` if the trial ended (or was taken over) between that read
    and the kill, so the kill landed between trials and proves nothing about a lost trial.
    ``checkpointed``: only a trial that saved a checkpoint already (one killed while compiling,
    or claimed behind another, has nothing to resume from)."""

    def candidate() -> dict[str, Any] | None:
        live = {w.pid for w in workers if w.poll() is None}
        running = store.trials(exp_key, [TrialState.RUNNING])
        # a first attempt only: a trial that already lost a worker has its own history
        return next(
            (
                d
                for d in running
                if d.get("attempt") == 1
                and d["worker"].get("pid") in live
                and (not checkpointed or (d.get("checkpoint") or {}).get("epoch", 0) >= 1)
            ),
            None,
        )

    doc = wait_for(candidate, timeout, what=f"a trial of {exp_key!r} run by a live worker")
    victim = next(w for w in workers if w.pid == doc["worker"]["pid"])
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    workers.remove(victim)
    now = store.get_trial(exp_key, doc["tid"])
    held = (
        now is not None
        and now["state"] == TrialState.RUNNING
        and (now["owner"], now["attempt"]) == (doc["owner"], doc["attempt"])
    )
    return doc if held else None


def process_gone(pid: int) -> bool:
    """Exited (a zombie waiting for init to reap it counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"
