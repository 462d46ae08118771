"""Slow tier: every inspection command against a real 2-trial ``mnist_mlp`` search (Keras)."""

from __future__ import annotations

import csv
import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from coordinator.store import connect
from tests.conftest import cli_env, hyperfleet, wait_for
from tests.coordinator.test_inspect import assert_nontrivial_png

pytestmark = pytest.mark.slow


def test_inspection_of_a_two_trial_mnist_search(tmp_path: Path) -> None:
    db_path = tmp_path / "db"
    out = hyperfleet(
        "local", "mnist_mlp", "--workers", "2", "--max-evals", "2", "--exp-key", "mn",
        "--seed", "3", "--set", "train_size=2000", "--set", "epochs=2", "--no-progress",
        "--db-path", str(db_path), cwd=tmp_path, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    server = subprocess.Popen(
        [sys.executable, "-m", "coordinator", "server", "--port", "0", "--db-path", str(db_path)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=cli_env(),
    )  # fmt: skip
    try:
        uri = re.search(r"(mongodb://\S+)", server.stdout.readline())[1]
        wait_for(lambda: connect(uri).get_experiment("mn"), 30, what="the server")
        mongo = ("--mongo", uri)

        status = hyperfleet("status", *mongo, "--exp-key", "mn")
        assert status.returncode == 0 and "mn" in status.stdout and "2" in status.stdout

        best = min(connect(uri).trials("mn"), key=lambda d: d["result"]["loss"])
        top = hyperfleet("top", *mongo, "--exp-key", "mn", "-n", "2")
        assert top.returncode == 0, top.stderr
        first_row = [line for line in top.stdout.splitlines() if line.strip()][1]
        assert first_row.split()[:2] == ["1", str(best["tid"])]  # the best trial first
        assert "optimizer" in top.stdout

        show = hyperfleet("show", *mongo, "--exp-key", "mn", str(best["tid"]))
        assert show.returncode == 0 and "val_accuracy" in show.stdout and "epoch" in show.stdout

        path = tmp_path / "mn.csv"
        export = hyperfleet("export", *mongo, "--exp-key", "mn", "-o", str(path))
        assert export.returncode == 0, export.stderr
        rows = list(csv.DictReader(path.open()))
        assert len(rows) == 2
        assert {"params.optimizer.name", "params.batch_size", "result.backend"} <= set(rows[0])
        assert all(json.loads(json.dumps(r)) for r in rows)

        plots = tmp_path / "plots"
        plot = hyperfleet("plot", *mongo, "--exp-key", "mn", "-o", str(plots))
        assert plot.returncode == 0, plot.stderr
        for name in ("loss_over_time.png", "params.png", "learning_curves.png", "timeline.png"):
            assert_nontrivial_png(plots / name)
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(30)
