"""bench/run.py at its smallest size: the recorded benchmark keeps running and reports its figures.

Runs the real script in a fresh process (embedded server, 2 real ``hyperfleet worker`` processes,
20 trials). Baseline virtualenvs are never created here (``--smoke`` means ``--venvs existing``):
a missing one is skipped with a printed note. When optuna is importable in this interpreter (the
test extra installs optuna 5), the Optuna SQLite and JournalFileStorage rows run with it.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import baselines  # noqa: E402
import hf_bench  # noqa: E402

from coordinator.server import EmbeddedServer  # noqa: E402

HAS_OPTUNA = importlib.util.find_spec("optuna") is not None


def test_run_smoke_reports_hyperfleet_rate_and_server_ops(tmp_path: Path) -> None:
    results_before = sorted((BENCH / "results").glob("*")) if (BENCH / "results").exists() else []
    cmd = [sys.executable, str(BENCH / "run.py"), "--smoke", "--out", str(tmp_path)]
    if HAS_OPTUNA:
        cmd += ["--optuna-python", sys.executable]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=240, cwd=BENCH.parent, check=False
    )
    print(proc.stdout)  # the table, shown with -s or on failure
    assert proc.returncode == 0, proc.stderr[-3000:]

    (written,) = tmp_path.glob("*.json")
    assert written.with_suffix(".md").exists()
    report = json.loads(written.read_text())
    rows = {r["system"]: r for r in report["rows"]}
    hf = rows["hyperfleet"]
    assert hf["n"] == hf["done"] == 20
    assert hf["trials_per_s"] > 0
    assert set(hf["server_ops"]) == set(hf_bench.OPCOUNTERS)
    assert hf["server_ops_per_trial"] > 0
    assert hf["server_ops_per_trial"] == round(sum(hf["server_ops"].values()) / 20, 2)
    assert "server ops per trial" in proc.stdout
    assert "hyperfleet / in-memory hyperopt" in proc.stdout

    if HAS_OPTUNA:
        for storage in ("SQLite", "JournalFileStorage"):
            (row,) = [r for s, r in rows.items() if s.startswith("optuna") and storage in s]
            assert row["done"] >= 20 and row["trials_per_s"] > 0
        assert "hyperfleet / optuna JournalFileStorage" in proc.stdout
        assert "hyperfleet / optuna SQLite" in proc.stdout
    if baselines.existing_venv("stock") is None:
        assert "stock baselines skipped" in proc.stderr
        assert not any(s.startswith("stock") for s in rows)
    after = sorted((BENCH / "results").glob("*")) if (BENCH / "results").exists() else []
    assert after == results_before  # the smoke writes to --out only


def test_op_counter_counts_operations_not_its_own_reads() -> None:
    with EmbeddedServer(":memory:") as server:
        ops = hf_bench.OpCounter(server.uri)
        try:
            before = ops.read()
            jobs = ops.client["t"]["jobs"]
            for i in range(3):
                jobs.insert_one({"i": i})
            jobs.update_one({"i": 0}, {"$set": {"x": 1}})
            assert len(list(jobs.find({}))) == 3
            counted = ops.since(before)
        finally:
            ops.close()
    assert counted == {
        "insert": 3,
        "query": 1,
        "update": 1,
        "delete": 0,
        "getmore": 0,
        "command": 0,
    }
