"""The bench scripts no test runs in full: each starts (``--help``), the names they import from
hyperfleet's packages exist, and store_queries.py runs at a tiny size."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
OURS = ("coordinator", "worker", "search_spaces")
WITH_HELP = [
    "run.py",
    "worker_overhead.py",
    "dashboard_scale.py",
    "time_to_accuracy.py",
    "fleet_sim.py",
    "stock_hyperopt.py",
    "gpu_bare_trial.py",
    "store_queries.py",
    "checkpoint_cost.py",
    "jax_compile_cache.py",
    "shape_free_step.py",
    "tta_replay.py",
]
if importlib.util.find_spec("optuna") is not None:
    WITH_HELP.append("optuna_bench.py")


def _run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=BENCH.parent,
        check=False,
    )


@pytest.mark.parametrize("script", WITH_HELP)
def test_script_help(script: str) -> None:
    proc = _run(str(BENCH / script), "--help")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "usage:" in proc.stdout


@pytest.mark.parametrize("script", sorted(p.name for p in BENCH.glob("*.py")))
def test_names_imported_from_hyperfleet_exist(script: str) -> None:
    """Also the imports inside functions (worker_overhead.py and others import lazily), which
    ``--help`` never reaches: a renamed coordinator API fails here, not at the next bench run."""
    tree = ast.parse((BENCH / script).read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(OURS):
            module = importlib.import_module(node.module)
            for alias in node.names:
                assert hasattr(module, alias.name) or importlib.util.find_spec(
                    f"{node.module}.{alias.name}"
                ), f"{script}: {node.module} has no {alias.name}"
        elif isinstance(node, ast.Import):  # found, not run (search_spaces.mnist loads Keras)
            for alias in node.names:
                if alias.name.startswith(OURS):
                    assert importlib.util.find_spec(alias.name), f"{script}: no {alias.name}"


def test_store_queries_runs_small() -> None:
    proc = _run(str(BENCH / "store_queries.py"), "--sizes", "20", "--calls", "2", timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [line for line in proc.stdout.splitlines() if line.lstrip().startswith("20 trials")]
    assert len(rows) >= 8
    assert any("reserve_trial" in line and " ms " in line for line in rows)


@pytest.mark.slow
def test_checkpoint_cost_runs_at_a_tiny_size() -> None:
    """bench/checkpoint_cost.py end to end (real searches and workers, a tiny MNIST subset)."""
    out = _run(
        "bench/checkpoint_cost.py",
        "--trials",
        "1",
        "--epochs",
        "3",
        "--train-size",
        "500",
        timeout=600,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "of an epoch" in out.stdout and "without checkpoints" in out.stdout


def test_shape_free_step_runs_at_a_tiny_size() -> None:
    """bench/shape_free_step.py end to end: both kinds of step train and are timed."""
    out = _run(
        "bench/shape_free_step.py",
        *("--repeats", "1", "--train-size", "256", "--epochs", "2"),
        timeout=300,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    rows = [line for line in out.stdout.splitlines() if ", batch " in line]
    assert len(rows) == 4 and all(float(row.split()[-1]) > 0 for row in rows), out.stdout


def _tta_run(system: str, finishes: list[tuple[float, float]]) -> dict:
    """A recorded time_to_accuracy.py run: full trials of 2 epochs, one second each."""
    trials = [
        {
            "epochs": [{"t": end - 1.0}, {"t": end}],
            "complete": True,
            "pruned": False,
            "end": end,
            "val_accuracy": acc,
            "test_accuracy": acc - 0.01,
        }
        for end, acc in finishes
    ]
    return {"system": system, "clock": 0.0, "budget": 60.0, "trials": trials}


def test_tta_margins_reanalyses_recorded_runs(tmp_path: Path) -> None:
    """bench/tta_margins.py on a small recorded file: the standing target (best - 0.5 points)
    and the strict one (the best itself) give different times, both printed."""
    runs = [
        _tta_run("hf-none", [(10.0, 0.970), (30.0, 0.980)]),
        _tta_run("hf-asha-promote", [(5.0, 0.976), (12.0, 0.981)]),
    ]
    recorded = tmp_path / "tta.json"
    recorded.write_text(json.dumps({"runs": runs}))
    proc = _run(str(BENCH / "tta_margins.py"), str(recorded), timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    standing = next(line for line in lines if "margin 0.005" in line)
    strict = next(line for line in lines if "margin 0.000" in line)
    # epoch length 1 s: hf-none reaches 0.975 at 30 s, promote at 5 s; 0.980 at 30 s and 12 s
    assert "hf-none 30(1)" in standing and "hf-asha-promote 5(1)" in standing
    assert "hf-none 30(1)" in strict and "hf-asha-promote 12(1)" in strict
    # the three yardsticks at the benchmark's target: seconds, own epochs, hf-none's epochs
    (promote,) = [line for line in lines if line.strip().startswith("hf-asha-promote ")]
    assert promote.split()[1:] == ["5.0", "(0.17x)", "/", "5.0", "(0.17x)", "/", "5.0", "(0.17x)"]


def test_tta_margins_gives_an_interval_of_each_ratio_over_the_seeds(tmp_path: Path) -> None:
    """Three seeds where promotion ASHA always takes a fifth of no pruning's time: every
    resample of the seeds gives 0.2, so the interval is 0.20-0.20; one seed where it never
    reaches the target widens it to infinity (it counts as slower than any time)."""
    runs = []
    for seed, (none_s, promote_s) in enumerate([(10.0, 2.0), (20.0, 4.0), (30.0, 6.0)]):
        for system, end in (("hf-none", none_s), ("hf-asha-promote", promote_s)):
            runs.append({**_tta_run(system, [(end, 0.98)]), "seed": seed})
    recorded = tmp_path / "tta.json"
    recorded.write_text(json.dumps({"runs": runs}))
    proc = _run(str(BENCH / "tta_margins.py"), str(recorded), timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (interval,) = [line for line in proc.stdout.splitlines() if "interval" in line]
    assert interval.split(": ")[1] == "0.20-0.20 / 0.20-0.20 / 0.20-0.20", interval
    runs.append({**_tta_run("hf-none", [(10.0, 0.98)]), "seed": 3})
    runs.append({**_tta_run("hf-asha-promote", [(5.0, 0.90)]), "seed": 3})  # never reached
    recorded.write_text(json.dumps({"runs": runs}))
    proc = _run(str(BENCH / "tta_margins.py"), str(recorded), timeout=120)
    (interval,) = [line for line in proc.stdout.splitlines() if "interval" in line]
    assert interval.split(": ")[1].split(" / ")[0].endswith("-inf"), interval


def test_tta_margins_refuses_what_is_not_a_results_file_in_one_line(tmp_path: Path) -> None:
    """New-user review: a missing path, a folder, an empty object or a file without hf-none
    runs gave tracebacks or a success exit; each is now one line naming the file, exit 1."""
    (tmp_path / "empty.json").write_text("{}")
    (tmp_path / "none.json").write_text(json.dumps({"runs": [_tta_run("hf-median", [])]}))
    cases = {
        str(tmp_path / "missing.json"): "cannot be read",
        str(tmp_path): "cannot be read",
        str(tmp_path / "empty.json"): "not a results file",
        str(tmp_path / "none.json"): "nothing to analyse",
    }
    for path, reason in cases.items():
        proc = _run(str(BENCH / "tta_margins.py"), path, timeout=120)
        assert proc.returncode == 1 and reason in proc.stderr, (path, proc.stderr)
        assert "Traceback" not in proc.stderr


def test_recorded_runs_pool_across_files_of_the_same_settings(tmp_path: Path) -> None:
    """Seeds 0-4 of one run and 5-14 of a ``--first-seed 5`` run analysed as one: runs of both
    files count (each file's hf-none is the yardstick of its own seeds); files of other
    settings, or that hold the same seed of a system twice, are refused in one line."""
    meta = {"budget_s": 60, "epochs": 9, "train_size": 20000, "val_size": 1000, "workers": 2}
    one = [_tta_run("hf-none", [(10.0, 0.970)]), _tta_run("hf-asha-promote", [(5.0, 0.976)])]
    two = [_tta_run("hf-none", [(30.0, 0.980)]), _tta_run("hf-asha-promote", [(6.0, 0.981)])]
    paths = []
    for i, runs in enumerate((one, two)):
        for run in runs:
            run["seed"] = i
        paths.append(tmp_path / f"{i}.json")
        paths[-1].write_text(json.dumps({"meta": {**meta, "started": str(i)}, "runs": runs}))
    proc = _run(str(BENCH / "tta_margins.py"), "--pool", *map(str, paths), timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    standing = next(line for line in proc.stdout.splitlines() if "margin 0.005" in line)
    # target 0.970: hf-none at 10 and 30 s, promote at 5 and 6 s (epochs of 1 s): medians
    assert "hf-none 20(2)" in standing and "hf-asha-promote 6(2)" in standing, standing
    table = _run(str(BENCH / "time_to_accuracy.py"), "--analyse", *map(str, paths))
    assert table.returncode == 0 and "| hf-asha-promote |" in table.stdout, table.stderr
    assert '"pooled"' in table.stdout and "2/2" in table.stdout
    other = tmp_path / "other.json"
    later = [{**run, "seed": 9} for run in one]
    other.write_text(json.dumps({"meta": {**meta, "epochs": 27}, "runs": later}))
    refused = _run(str(BENCH / "time_to_accuracy.py"), "--analyse", str(paths[0]), str(other))
    assert refused.returncode == 2 and "the files differ in epochs" in refused.stderr
    twice = _run(str(BENCH / "tta_margins.py"), "--pool", str(paths[0]), str(paths[0]))
    assert twice.returncode == 1 and "hf-none seed 0 is in" in twice.stderr, twice.stderr


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax is not installed")
def test_jax_compile_cache_runs_at_a_tiny_size() -> None:
    """bench/jax_compile_cache.py end to end: fresh JAX trial processes, one side sharing a
    persistent cache folder, which they fill."""
    proc = _run(
        "bench/jax_compile_cache.py",
        "--rounds",
        "2",
        "--architectures",
        "1",
        "--train-size",
        "256",
        "--epochs",
        "1",
        "--threads",
        "1",
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    head = next(line for line in proc.stdout.splitlines() if line.startswith("mnist_mlp on JAX"))
    assert int(head.split("; ")[-1].split()[0]) > 0, head  # files in the shared cache
    assert any(line.strip().startswith("compile_s") for line in proc.stdout.splitlines())


@pytest.mark.slow
def test_time_to_accuracy_runs_for_real_at_a_tiny_size() -> None:
    """A smoke run of the benchmark itself (real workers, real Keras, a few seconds per
    system): no pruning and strict promotion ASHA (``--promote-wait``) end with a table row
    each. It writes one more results file under bench/results (ignored by git)."""
    proc = _run(
        str(BENCH / "time_to_accuracy.py"), "--seeds", "1", "--budget", "4", "--epochs", "2",
        "--train-size", "500", "--val-size", "200", "--systems", "hf-none,hf-asha-promote-wait",
        timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| hf-")]
    assert sorted(r.split("|")[1].strip() for r in rows) == ["hf-asha-promote-wait", "hf-none"]
    assert "hf-asha-promote-wait seed 0:" in proc.stdout + proc.stderr


def _replay(
    rule: str, pool: list[list[float]], target: float, seed: int = 0, **kw: float
) -> float | None:
    sys.path.insert(0, str(BENCH))
    import tta_replay

    curves = [(accs, 1.0) for accs in pool]
    return tta_replay.Replay(
        __import__("random").Random(seed), curves, target, len(pool[0]), rule=rule, **kw
    ).run()


def test_tta_replay_runs_each_rule_as_written() -> None:
    """One curve (3 epochs, rung at epoch 1, target reached at the end): no pruning and the
    default rule train the first trial straight through (3 epoch lengths); ``--promote-wait``
    pauses the first two at the rung (fewer than η values); the third makes three, all tied,
    and ties go on (as hyperfleet's ``promotable``): it trains on and ends at 2 + 2 = 4."""
    pool = [[0.90, 0.95, 0.99]]
    assert _replay("none", pool, 0.98) == 3.0
    assert _replay("asha", pool, 0.98) == 3.0
    assert _replay("asha-wait", pool, 0.98) == 4.0
    assert _replay("none", pool, 0.995) is None  # never reached: None, not a time
    # a start of 0.5 epoch lengths: 0.5 + 3; for the strict rule the third trial starts at
    # 1.5 (the first two's start and epoch) + 0.5 and trains its 3 epochs without a pause
    assert _replay("none", pool, 0.98, overhead=0.5) == 3.5
    assert _replay("asha-wait", pool, 0.98, overhead=0.5) == 5.0
    # timed, an epoch of this curve (1 s) is half the pool's median (2 s): half the time
    assert _replay("none", pool, 0.98, epoch_s=2.0) == 1.5


def test_tta_replay_shows_promotions_paying_where_the_first_rung_predicts() -> None:
    """One config in ten is good and its first epoch says so: no pruning trains ~10 trials of
    9 epochs to find it, ASHA one epoch of each (the others pause at the first rung)."""
    import statistics

    pool = [[0.95, *[0.97] * 7, 0.99]] + [[0.90 - i / 1000, *[0.95] * 7, 0.96] for i in range(9)]
    times = {
        rule: [_replay(rule, pool, 0.98, seed) for seed in range(300)] for rule in ("none", "asha")
    }
    none, asha = (statistics.median(t for t in times[r] if t is not None) for r in times)
    assert asha < 0.6 * none, (asha, none)


def test_tta_replay_prints_its_table_and_refuses_bad_input_in_one_line(tmp_path: Path) -> None:
    good = [{"epoch": e, "t": float(e), "val_accuracy": 0.95 + 0.004 * e} for e in (1, 2, 3)]
    bad = [{"epoch": e, "t": float(e), "val_accuracy": 0.90 + 0.004 * e} for e in (1, 2, 3)]
    trials = [
        {"epochs": epochs, "complete": True, "pruned": False, "end": 3.0, "val_accuracy": acc}
        for epochs, acc in [(good, 0.962), (bad, 0.912), (bad, 0.912)]
    ]
    runs = [
        {"system": "hf-none", "seed": s, "clock": 0.0, "budget": 60.0, "trials": trials}
        for s in range(2)
    ]
    recorded = tmp_path / "tta.json"
    recorded.write_text(json.dumps({"meta": {"epochs": 3}, "runs": runs}))
    proc = _run(str(BENCH / "tta_replay.py"), str(recorded), "--replays", "50", timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "6 curves of hf-none (3 epochs)" in proc.stdout
    assert "| 95.70 % (−0.5) |" in proc.stdout, proc.stdout  # 0.962 - 0.005
    junk = {
        "number.json": 42,
        "no-epochs.json": {"runs": [{**runs[0], "trials": [{"complete": True, "end": 1.0}]}]},
        "null-accuracy.json": {
            "meta": {"epochs": 3},
            "runs": [{**runs[0], "trials": [{**trials[0], "val_accuracy": None}]}],
        },
        "no-times.json": {
            "meta": {"epochs": 3},
            "runs": [
                {**runs[0], "trials": [{**t, "epochs": [{**e, "t": 0.0} for e in good]}]}
                for t in trials
            ],
        },
    }
    for name, content in junk.items():
        (tmp_path / name).write_text(json.dumps(content))
    for args, reason in [
        ([str(tmp_path / "missing.json")], "No such file"),
        ([str(recorded), "--system", "hf-median"], "no fully trained hf-median trials"),
        ([str(recorded), "--eta", "1"], "--eta"),
        ([str(recorded), "--overhead", "nan"], "--overhead must be a finite number"),
        ([str(tmp_path / "number.json")], "not a time_to_accuracy.py results file"),
        ([str(tmp_path / "no-epochs.json")], "not a time_to_accuracy.py results file"),
        ([str(tmp_path / "null-accuracy.json")], "no hf-none run with a fully trained trial"),
        ([str(tmp_path / "no-times.json"), "--timed"], "recorded times say nothing"),
    ]:
        proc = _run(str(BENCH / "tta_replay.py"), *args, timeout=120)
        assert proc.returncode == 2 and reason in proc.stderr, (args, proc.stderr)
        assert "Traceback" not in proc.stderr
