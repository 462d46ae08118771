"""Keras trials end to end: real workers train real (small) Keras models on real MNIST and
report to a real SecantusDB server; ``hyperfleet best`` saves and evaluates the best model."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from coordinator.server import EmbeddedServer
from coordinator.states import TrialState
from coordinator.store import TrialStore
from tests.conftest import ROOT, cli_env, hyperfleet, start_worker, stop_all

TINY = ("--set", "epochs=3", "--set", "train_size=500", "--set", "val_size=500")


def search_cmd(uri: str, db: str, space: str, exp_key: str, evals: int, *args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "coordinator",
        "search",
        space,
        "--mongo",
        uri,
        "--db",
        db,
        "--exp-key",
        exp_key,
        "--max-evals",
        str(evals),
        "--seed",
        "0",
        *args,
    ]


def test_mlp_search_two_workers_metrics_model_and_test_accuracy(
    server: EmbeddedServer, store: TrialStore, db_name: str, tmp_path: Path
) -> None:
    workers = [
        start_worker(
            server.uri,
            db_name,
            "--exp-key",
            "mlp",
            "--threads",
            "1",
            "--heartbeat",
            "1",
            # two each of the four trials: else the worker whose Keras warms up first can run
            # them all before the other is ready, and "both workers ran trials" fails by chance
            "--max-trials",
            "2",
            log=tmp_path / f"worker-{i}.log",
        )
        for i in range(2)
    ]
    search = subprocess.Popen(
        search_cmd(server.uri, db_name, "mnist_mlp", "mlp", 4, *TINY),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(),
    )
    seen_running: dict[int, list[int]] = {}  # tid -> epoch numbers seen while RUNNING
    try:
        deadline = time.monotonic() + 300
        while search.poll() is None and time.monotonic() < deadline:
            for doc in store.trials("mlp", [TrialState.RUNNING]):
                if doc.get("epochs"):
                    seen_running[doc["tid"]] = [e["epoch"] for e in doc["epochs"]]
            time.sleep(0.05)
        out, err = search.communicate(timeout=10)
        for w in workers:
            w.wait(30)  # they leave by themselves after their two trials
    finally:
        stop_all([search, *workers])
    assert search.returncode == 0, err
    assert "experiment mlp: done 4" in out

    assert seen_running, "per-epoch metrics should be visible while trials run"
    assert all(epochs == list(range(1, len(epochs) + 1)) for epochs in seen_running.values())
    docs = store.trials("mlp")
    assert len(docs) == 4
    assert len({d["worker"]["id"] for d in docs}) == 2, "both workers should have run trials"
    for doc in docs:
        result: dict[str, Any] = doc["result"]
        assert doc["state"] == TrialState.DONE and result["status"] == "ok"
        assert [e["epoch"] for e in doc["epochs"]] == [1, 2, 3]
        assert set(doc["epochs"][0]) >= {"loss", "accuracy", "val_loss", "val_accuracy", "seconds"}
        assert result["epochs_run"] == 3 and len(result["history"]["val_loss"]) == 3
        assert result["loss"] == result["val_loss"] == doc["epochs"][-1]["val_loss"]
        assert 1 <= len(doc["params"]["layers"]) <= 3
        assert doc["params"]["optimizer"]["name"] in ("rmsprop", "adam", "sgd")
        assert result["params"] == doc["params"]
        assert result["devices"] == ["CPU"] and result["backend"] == "tensorflow"
        assert result["threads"] == 1 and result["train_seconds"] > 0
        assert result["eval_time"] > 0 and result["train_size"] == 500
        assert doc["worker"]["save_models"] == "best"

    best = min(docs, key=lambda d: d["result"]["loss"])
    assert [a[0] for a in best.get("_attachments", [])] == ["model.keras"]
    # --save-models best: superseded models are dropped (two trials finishing together may both
    # keep theirs until a better one comes)
    assert sum(1 for d in docs if d.get("_attachments")) < 4

    model_path = tmp_path / "best.keras"
    shown = hyperfleet(
        "best",
        "--mongo",
        server.uri,
        "--db",
        db_name,
        "--exp-key",
        "mlp",
        "--save-model",
        str(model_path),
        "--evaluate",
        timeout=180,
    )
    assert shown.returncode == 0, shown.stderr
    assert f"best trial: tid {best['tid']}," in shown.stdout
    assert "test accuracy: 0." in shown.stdout
    test = store.get_experiment("mlp")["test"]
    assert test["tid"] == best["tid"] and test["n"] == 10_000 and 0.1 < test["accuracy"] <= 1.0

    # the saved file loads and predicts in a plain Keras script
    script = (
        "import sys, keras, numpy as np; m = keras.saving.load_model(sys.argv[1]); "
        "print(m.predict(np.zeros((7, 784), 'float32'), verbose=0).shape)"
    )
    plain = subprocess.run(
        [sys.executable, "-c", script, str(model_path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=cli_env(TF_CPP_MIN_LOG_LEVEL="2"),
        timeout=120,
    )
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout.strip().endswith("(7, 10)")
