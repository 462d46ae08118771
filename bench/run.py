"""hyperfleet's benchmarks, side by side with their baselines in one run.

    .venv/bin/python bench/run.py                 # 500 and 5,000 trials (the recorded figures)
    .venv/bin/python bench/run.py --sizes 100     # a quick check

Per size: hyperfleet (embedded server, 2 ``hyperfleet worker`` processes, TPE, ``quadratic`` with
no sleep), hyperopt's in-memory ``fmin(Trials())`` (the ceiling), stock hyperopt 0.3.0 +
pymongo 3.13 tuned (2 ``hyperopt-mongo-worker --no-subprocesses --poll-interval=0.1``, fmin poll
0.05 s, queue 8) and Optuna with 2 processes on SQLite and PostgreSQL. Once: stock hyperopt with
its defaults (``--default-n`` trials), and bench/worker_overhead.py when it exists. Baselines run
in their own virtualenvs under bench/.venvs (created on first use). Baselines slower than
``--cap-s`` are stopped there and reported as the rate over what they finished. Writes
bench/results/<time>.json and .md and prints the table.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import baselines
import hf_bench

from coordinator.server import EmbeddedServer

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"


def load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def machine() -> dict[str, Any]:
    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kb = next(
        int(line.split()[1])
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal")
    )
    rev = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=BENCH
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain"], capture_output=True, text=True, cwd=BENCH
    ).stdout.strip()
    return {
        "host": platform.node(),
        "os": platform.platform(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kb / 2**20, 1),
        "python": platform.python_version(),
        "git": rev + (" (with uncommitted changes)" if dirty else ""),
    }


def measured(label: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run one benchmark; record the load around it; a failure becomes a row that says why."""
    print(
        f"[{dt.datetime.now():%H:%M:%S}] {label} (load {load()}) ...", file=sys.stderr, flush=True
    )
    before = load()
    try:
        row = fn()
    except Exception as e:  # noqa: BLE001 - one failed baseline must not lose the others
        traceback.print_exc()
        error = " ".join(f"{type(e).__name__}: {e}".split())
        row = {"system": label, "error": error[:300]}
    row["load_before"], row["load_after"] = before, load()
    print(f"    {json.dumps(row)}", file=sys.stderr, flush=True)
    return row


def with_server(fn: Callable[[str], dict[str, Any]]) -> dict[str, Any]:
    with EmbeddedServer(":memory:") as server:
        return fn(server.uri.split("//", 1)[1].rstrip("/"))


def stock(python: Path, n: int, mode: str, cap_s: float, log_dir: Path) -> dict[str, Any]:
    def go(hostport: str) -> dict[str, Any]:
        cmd = [str(python), str(BENCH / "stock_hyperopt.py"), "--mongo", hostport]
        cmd += ["--n", str(n), "--mode", mode, "--timeout", str(cap_s), "--log-dir", str(log_dir)]
        return baselines.run_json(cmd, timeout_s=cap_s + 600)

    return with_server(go)


def optuna(python: Path, storage: str, label: str, n: int, cap_s: float) -> dict[str, Any]:
    cmd = [str(python), str(BENCH / "optuna_bench.py"), "--storage", storage, "--label", label]
    cmd += ["--n", str(n), "--timeout", str(cap_s)]
    return baselines.run_json(cmd, timeout_s=cap_s + 600)


def run_all(args: argparse.Namespace) -> dict[str, Any]:
    stock_py = baselines.ensure_venv("stock")
    optuna_py = baselines.ensure_venv("optuna")
    work = Path(tempfile.mkdtemp(prefix="hf-bench-"))
    report: dict[str, Any] = {
        "started": f"{dt.datetime.now():%Y-%m-%d %H:%M:%S}",
        "command": " ".join([".venv/bin/python", "bench/run.py", *sys.argv[1:]]),
        "machine": machine(),
        "versions": {
            "hyperfleet venv": baselines.versions(
                sys.executable, ["hyperopt", "pymongo", "SecantusDB", "numpy"]
            ),
            "stock venv": baselines.versions(stock_py, ["hyperopt", "pymongo", "numpy"]),
            "optuna venv": baselines.versions(
                optuna_py, ["optuna", "SQLAlchemy", "psycopg2-binary", "numpy"]
            ),
        },
        "rows": [],
    }
    rows = report["rows"]
    pg_url, pg_stop = None, None
    if not args.no_postgres:
        try:
            pg_url, pg_stop = baselines.start_postgres()
            report["versions"]["postgresql"] = subprocess.run(
                ["psql", "--version"], capture_output=True, text=True
            ).stdout.strip()
        except RuntimeError as e:
            report["postgres_skipped"] = str(e)
    try:
        for n in args.sizes:
            rows.append(measured(f"hyperfleet n={n}", lambda n=n: hf_bench.run_hyperfleet(n)))
            if n <= args.no_isolate_max:
                rows.append(
                    measured(
                        f"hyperfleet --no-isolate n={n}",
                        lambda n=n: hf_bench.run_hyperfleet(n, isolate=False),
                    )
                )
            rows.append(measured(f"in-memory n={n}", lambda n=n: baselines.in_memory_hyperopt(n)))
            rows.append(
                measured(
                    f"stock tuned n={n}",
                    lambda n=n: stock(stock_py, n, "tuned", args.cap_s, work),
                )
            )
            sqlite = f"sqlite:///{work}/optuna-{n}.db"
            rows.append(
                measured(
                    f"optuna sqlite n={n}",
                    lambda n=n, s=sqlite: optuna(optuna_py, s, "SQLite", n, args.cap_s),
                )
            )
            if pg_url is not None:
                rows.append(
                    measured(
                        f"optuna postgresql n={n}",
                        lambda n=n: optuna(optuna_py, pg_url, "PostgreSQL", n, args.cap_s),
                    )
                )
        if args.default_n:
            n = args.default_n
            rows.append(
                measured(
                    f"stock defaults n={n}",
                    lambda: stock(stock_py, n, "default", args.cap_s, work),
                )
            )
    finally:
        if pg_stop is not None:
            pg_stop()
    overhead = BENCH / "worker_overhead.py"
    if overhead.exists() and not args.no_keras:
        proc = measured("worker overhead (Keras)", lambda: _worker_overhead(overhead))
        report["worker_overhead"] = proc
    else:
        why = "--no-keras" if overhead.exists() else "bench/worker_overhead.py not present"
        report["worker_overhead"] = {"skipped": why}
    if not args.no_queries:
        print(f"[{dt.datetime.now():%H:%M:%S}] store query costs ...", file=sys.stderr, flush=True)
        queries = subprocess.run(
            [sys.executable, str(BENCH / "store_queries.py")], capture_output=True, text=True
        )
        report["store_queries"] = queries.stdout.strip() or queries.stderr[-1500:]
    report["finished"] = f"{dt.datetime.now():%Y-%m-%d %H:%M:%S}"
    return report


def _worker_overhead(script: Path) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=1800
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    out: dict[str, Any] = {"exit": proc.returncode, "output": proc.stdout[-3000:]}
    if lines:
        with contextlib.suppress(json.JSONDecodeError):
            out["result"] = json.loads(lines[-1])
    if proc.returncode != 0:
        out["stderr"] = proc.stderr[-1500:]
    return out


# -- the table --------------------------------------------------------------------------------


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:,.1f}" if value >= 10 else f"{value:.2f}"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {v}" for k, v in value.items())
    return str(value)


def table(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        f"machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, {m['os']}, "
        f"Python {m['python']}, git {m['git']}",
        f"command: {report['command']}  ({report['started']} – {report['finished']})",
    ]
    for venv_name, vers in report["versions"].items():
        lines.append(f"{venv_name}: {_fmt(vers)}")
    if "postgres_skipped" in report:
        lines.append(f"PostgreSQL skipped: {report['postgres_skipped']}")
    lines += [
        "",
        "| system | trials | done | s | trials/s | overhead ms/trial | dispatch p50/p95 ms "
        "| load before → after |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in report["rows"]:
        if "error" in r:
            lines.append(f"| {r['system']} | | | | failed: {r['error']} | | | {r['load_before']} |")
            continue
        capped = " (capped)" if r["done"] < r["n"] else ""
        dispatch = (
            f"{r['dispatch_median_ms']:.0f} / {r['dispatch_p95_ms']:.0f}"
            if "dispatch_median_ms" in r
            else "–"
        )
        lines.append(
            f"| {r['system']} | {r['n']} | {r['done']}{capped} | {_fmt(r['seconds'])} "
            f"| {_fmt(r['trials_per_s'])} | {_fmt(r.get('overhead_ms'))} | {dispatch} "
            f"| {r['load_before']} → {r['load_after']} |"
        )
    lines.append("")
    for r in report["rows"]:
        if r.get("system", "").startswith("hyperfleet") and "error" not in r:
            lines.append(
                f"{r['system']} n={r['n']}: coordinator per call at ~N trials: refresh ms "
                f"{{{_fmt(r['refresh_ms_at'])}}}, suggest ms {{{_fmt(r['suggest_ms_at'])}}}; "
                f"CPU ms per trial {{{_fmt(r['cpu_ms_per_trial'])}}}"
            )
    lines += ["", "ratios (same run):"] + ratios(report)
    wo = report.get("worker_overhead", {})
    if "output" in wo:
        lines += ["", "worker overhead (Keras, bench/worker_overhead.py):", wo["output"].rstrip()]
    else:
        lines += ["", f"worker overhead (Keras): {_fmt(wo.get('skipped') or wo)}"]
    if report.get("store_queries"):
        lines += ["", "store query costs (bench/store_queries.py):", report["store_queries"]]
    return "\n".join(lines)


def ratios(report: dict[str, Any]) -> list[str]:
    ok = [r for r in report["rows"] if "error" not in r]
    out = []
    for n in sorted({r["n"] for r in ok}):
        by = {r["system"]: r for r in ok if r["n"] == n}
        hf = by.get("hyperfleet")
        if hf is None:
            continue
        rate = hf["trials_per_s"]

        def ratio(name: str, rate: float = rate, by: dict[str, Any] = by) -> float | None:
            base = next((r for s, r in by.items() if s.startswith(name)), None)
            return None if base is None else rate / base["trials_per_s"]

        checks: list[tuple[str, float | None, float]] = [
            ("hyperfleet / stock tuned", ratio("stock hyperopt (tuned)"), 8.0 if n == 500 else 0),
            (
                "hyperfleet / optuna SQLite",
                ratio("optuna") if "SQLite" in str(by) else None,
                2.0 if n == 500 else 0,
            ),
            (
                "hyperfleet / optuna PostgreSQL",
                next((rate / r["trials_per_s"] for s, r in by.items() if "PostgreSQL" in s), None),
                0,
            ),
            (
                "hyperfleet / in-memory hyperopt",
                ratio("hyperopt in-memory"),
                0.6 if n >= 5000 else 0,
            ),
        ]
        parts = [f"n={n}: hyperfleet {rate:.1f} trials/s"]
        if n == 500:
            parts.append(f"target ≥ 100: {'met' if rate >= 100 else 'MISSED'}")
        for name, value, target in checks:
            if value is None:
                continue
            verdict = ""
            if target:
                verdict = f" (target ≥ {target:g}: {'met' if value >= target else 'MISSED'})"
            parts.append(f"{name} = {value:.2f}{verdict}")
        p50, p95 = hf["dispatch_median_ms"], hf["dispatch_p95_ms"]
        parts.append(
            f"dispatch p50 {p50:.0f} ms (target < 50: {'met' if p50 < 50 else 'MISSED'}), "
            f"p95 {p95:.0f} ms (target < 200: {'met' if p95 < 200 else 'MISSED'})"
        )
        out.append("  " + "; ".join(parts))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes", default="500,5000", type=lambda s: [int(x) for x in s.split(",")]
    )
    parser.add_argument("--cap-s", type=float, default=180.0, help="time cap per baseline run")
    parser.add_argument(
        "--default-n", type=int, default=50, help="stock defaults: trials (0: skip)"
    )
    parser.add_argument(
        "--no-isolate-max",
        type=int,
        default=1000,
        help="also run hyperfleet --no-isolate at sizes up to this",
    )
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--no-keras", action="store_true", help="skip bench/worker_overhead.py")
    parser.add_argument("--no-queries", action="store_true", help="skip bench/store_queries.py")
    args = parser.parse_args()
    report = run_all(args)
    RESULTS.mkdir(exist_ok=True)
    stamp = f"{dt.datetime.now():%Y%m%d-%H%M%S}"
    text = table(report)
    (RESULTS / f"{stamp}.json").write_text(json.dumps(report, indent=1, default=str))
    (RESULTS / f"{stamp}.md").write_text(text + "\n")
    print(text)
    print(f"\nwritten: bench/results/{stamp}.json and .md", file=sys.stderr)


if __name__ == "__main__":
    main()
