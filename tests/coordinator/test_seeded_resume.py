"""Issue 10, finding 7 (seeded resume): rerunning a search started with ``--seed`` continues its
random stream. It used to restart it: after 3 coordinator kills, 14 of 24 evaluations repeated
earlier parameter sets."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import numpy as np

from coordinator.housekeeping import continue_stream
from coordinator.states import TrialState
from coordinator.store import connect
from tests.conftest import cli_env, hyperfleet, start_worker, stop_all, wait_for


def test_continue_stream_keeps_a_fresh_search_and_moves_a_resumed_one() -> None:
    """A fresh search (nothing stored) keeps hyperopt's stream for its seed, so seeded runs
    stay reproducible; a resumed one draws from a stream of its own."""
    fresh = continue_stream(np.random.default_rng(3), 0).integers(2**31 - 1, size=4)
    assert list(fresh) == list(np.random.default_rng(3).integers(2**31 - 1, size=4))
    resumed = continue_stream(np.random.default_rng(3), 8).integers(2**31 - 1, size=4)
    again = continue_stream(np.random.default_rng(3), 8).integers(2**31 - 1, size=4)
    assert list(resumed) == list(again) and set(resumed).isdisjoint(fresh)


def test_three_killed_coordinators_never_repeat_a_parameter_set(
    server, db_name, tmp_path: Path
) -> None:
    """Finding 7: SIGKILL a seeded search three times and rerun it: 24 distinct points."""
    store = connect(server.uri, db_name)
    key = "seeded"
    args = ["search", "quadratic", "--mongo", server.uri, "--db", db_name, "--exp-key", key]
    args += ["--max-evals", "24", "--seed", "5", "--set", "sleep=0.1", "--no-progress"]
    workers = [start_worker(server.uri, db_name, "--exp-key", key) for _ in range(2)]
    try:
        for kill in (4, 10, 16):
            search = subprocess.Popen(
                [sys.executable, "-m", "coordinator", *args],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env=cli_env(),
            )
            done = lambda n=kill: store.count(key, [TrialState.DONE]) >= n  # noqa: E731
            wait_for(done, 60, what=f"{kill} trials done")
            search.send_signal(signal.SIGKILL)
            search.wait()
        out = hyperfleet(*args)
        assert out.returncode == 0, out.stderr
        assert "resuming 'seeded'" in out.stderr and "over-writing" not in out.stderr
    finally:
        stop_all(workers)
    docs = store.trials(key)
    points = [tuple(d["misc"]["vals"]["x"]) for d in docs]
    assert len(points) == len(set(points)), f"{len(points) - len(set(points))} repeated points"
    assert sum(d["state"] == TrialState.DONE for d in docs) == 24
