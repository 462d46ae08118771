"""hyperfleet's benchmarks, side by side with their baselines in one run.

    .venv/bin/python bench/run.py                 # 500 and 5,000 trials (the recorded figures)
    .venv/bin/python bench/run.py --sizes 100     # a quick check
    .venv/bin/python bench/run.py --smoke --out /tmp/bench   # what the test suite runs (~30 s)

Per size: hyperfleet (embedded server, 2 ``hyperfleet worker`` processes, TPE, ``quadratic`` with
no sleep), hyperopt's in-memory ``fmin(Trials())`` (the ceiling), stock hyperopt 0.3.0 +
pymongo 3.13 tuned (2 ``hyperopt-mongo-worker --no-subprocesses --poll-interval=0.1``, fmin poll
0.05 s, queue 8) and Optuna with 2 processes on SQLite, a JournalFileStorage file and PostgreSQL.
hyperfleet's row also counts server operations per finished trial (``serverStatus`` opcounters).
Once: stock hyperopt with its defaults (``--default-n`` trials), and bench/worker_overhead.py when
it exists. Baselines run in their own virtualenvs under bench/.venvs (created on first use;
``--venvs existing`` skips the missing ones with a note). Baselines slower than ``--cap-s`` are
stopped there and reported as the rate over what they finished. Writes bench/results/<time>.json
and .md (``--out``), prints the table, and exits 1 if any row failed.
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


def baseline_python(name: str, args: argparse.Namespace, report: dict[str, Any]) -> Path | None:
    """The interpreter of baseline venv ``name`` (created on first use unless ``--venvs
    existing``); None, with a printed and recorded note, when it is missing and not created."""
    if args.venvs == "create":
        return baselines.ensure_venv(name)
    python = baselines.existing_venv(name)
    if python is None:
        note = (
            f"{name} baselines skipped: {baselines.VENVS / name} is missing "
            f"(run bench/run.py without --venvs existing to create it)"
        )
        print(note, file=sys.stderr, flush=True)
        report["skipped"].append(note)
    return python


def run_all(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="hf-bench-"))
    report: dict[str, Any] = {
        "started": f"{dt.datetime.now():%Y-%m-%d %H:%M:%S}",
        "command": " ".join([".venv/bin/python", "bench/run.py", *sys.argv[1:]]),
        "machine": machine(),
        "versions": {
            "hyperfleet venv": baselines.versions(
                sys.executable, ["hyperopt", "pymongo", "SecantusDB", "numpy"]
            ),
        },
        "skipped": [],
        "rows": [],
    }
    stock_py = None
    if args.no_stock:
        report["skipped"].append("stock hyperopt skipped: --no-stock")
    else:
        stock_py = baseline_python("stock", args, report)
    if stock_py is not None:
        report["versions"]["stock venv"] = baselines.versions(
            stock_py, ["hyperopt", "pymongo", "numpy"]
        )
    optuna_py: Path | None = args.optuna_python or baseline_python("optuna", args, report)
    if optuna_py is not None:
        where = "optuna venv" if args.optuna_python is None else f"optuna ({optuna_py})"
        report["versions"][where] = baselines.versions(
            optuna_py, ["optuna", "SQLAlchemy", "psycopg2-binary", "numpy"]
        )
    rows = report["rows"]
    pg_url, pg_stop = None, None
    if args.no_postgres:
        report["postgres_skipped"] = "--no-postgres"
    elif optuna_py is not None:
        try:
            pg_url, pg_stop = baselines.start_postgres()
            report["versions"]["postgresql"] = subprocess.run(
                ["psql", "--version"], capture_output=True, text=True
            ).stdout.strip()
        except RuntimeError as e:
            report["postgres_skipped"] = str(e)
            print(f"PostgreSQL skipped: {e}", file=sys.stderr, flush=True)
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
            if stock_py is not None:
                rows.append(
                    measured(
                        f"stock tuned n={n}",
                        lambda n=n, py=stock_py: stock(py, n, "tuned", args.cap_s, work),
                    )
                )
            if optuna_py is None:
                continue
            storages = [
                ("SQLite", f"sqlite:///{work}/optuna-{n}.db"),
                ("JournalFileStorage", f"journal:{work}/optuna-{n}.journal"),
            ]
            if pg_url is not None:
                storages.append(("PostgreSQL", pg_url))
            for label, url in storages:
                rows.append(
                    measured(
                        f"optuna {label} n={n}",
                        lambda n=n, u=url, lb=label, py=optuna_py: optuna(py, u, lb, n, args.cap_s),
                    )
                )
        if args.default_n and stock_py is not None:
            n = args.default_n
            rows.append(
                measured(
                    f"stock defaults n={n}",
                    lambda py=stock_py: stock(py, n, "default", args.cap_s, work),
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
    lines += [f"skipped: {note}" for note in report.get("skipped", [])]
    lines += [
        "",
        "| system | trials | done | s | trials/s | overhead ms/trial | dispatch p50/p95 ms "
        "| server ops/trial | load before → after |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in report["rows"]:
        if "error" in r:
            lines.append(
                f"| {r['system']} | | | | failed: {r['error']} | | | | {r['load_before']} |"
            )
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
            f"| {_fmt(r.get('server_ops_per_trial'))} | {r['load_before']} → {r['load_after']} |"
        )
    lines.append("")
    for r in report["rows"]:
        if r.get("system", "").startswith("hyperfleet") and "error" not in r:
            lines.append(
                f"{r['system']} n={r['n']}: coordinator per call at ~N trials: refresh ms "
                f"{{{_fmt(r['refresh_ms_at'])}}}, suggest ms {{{_fmt(r['suggest_ms_at'])}}}; "
                f"CPU ms per trial {{{_fmt(r['cpu_ms_per_trial'])}}}"
            )
            if "server_ops" in r:
                lines.append(
                    f"{r['system']} n={r['n']}: server ops per trial "
                    f"{r['server_ops_per_trial']:.2f} = ({_ops(r['server_ops'])}) / {r['done']} "
                    "trials (serverStatus opcounters over the search, all clients)"
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


def _ops(ops: dict[str, int]) -> str:
    return " + ".join(f"{v} {k}" for k, v in ops.items() if v) or "0"


#: (label, which row by its system name, the target ratio hyperfleet / it by size: 0 for none)
BASELINES: list[tuple[str, Callable[[str], bool], Callable[[int], float]]] = [
    ("stock tuned", lambda s: s.startswith("stock hyperopt (tuned)"), lambda n: 8.0 * (n == 500)),
    (
        "optuna JournalFileStorage",
        lambda s: s.startswith("optuna") and "Journal" in s,
        lambda n: 0.5 * (n == 500),  # issue 19 (goal: 1)
    ),
    (
        "optuna SQLite",
        lambda s: s.startswith("optuna") and "SQLite" in s,
        lambda n: 2.0 * (n == 500),
    ),
    ("optuna PostgreSQL", lambda s: s.startswith("optuna") and "PostgreSQL" in s, lambda n: 0.0),
    (
        "in-memory hyperopt",
        lambda s: s.startswith("hyperopt in-memory"),
        lambda n: 0.6 * (n >= 5000),
    ),
]
#: issue 19's target: server operations per finished trivial trial
OPS_TARGET = 3.0


def _verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def ratios(report: dict[str, Any]) -> list[str]:
    """hyperfleet's rate over each baseline's, size by size, with the targets where set."""
    ok = [r for r in report["rows"] if "error" not in r]
    out = []
    for n in sorted({r["n"] for r in ok}):
        by = {r["system"]: r for r in ok if r["n"] == n}
        hf = by.get("hyperfleet")
        if hf is None:
            continue
        rate = hf["trials_per_s"]
        parts = [f"n={n}: hyperfleet {rate:.1f} trials/s"]
        if n == 500:
            parts.append(f"target ≥ 100: {_verdict(rate >= 100)}")
        for label, matches, target_at in BASELINES:
            base = next((r for s, r in by.items() if matches(s)), None)
            if base is None or not base["trials_per_s"]:
                continue
            value = rate / base["trials_per_s"]
            target = target_at(n)
            verdict = f" (target ≥ {target:g}: {_verdict(value >= target)})" if target else ""
            parts.append(f"hyperfleet / {label} = {value:.2f}{verdict}")
        if "server_ops_per_trial" in hf:
            per = hf["server_ops_per_trial"]
            met = _verdict(per <= OPS_TARGET)
            parts.append(f"server ops/trial {per:.2f} (target ≤ {OPS_TARGET:g}: {met})")
        p50, p95 = hf["dispatch_median_ms"], hf["dispatch_p95_ms"]
        parts.append(
            f"dispatch p50 {p50:.0f} ms (target < 50: {_verdict(p50 < 50)}), "
            f"p95 {p95:.0f} ms (target < 200: {_verdict(p95 < 200)})"
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
    parser.add_argument("--no-stock", action="store_true", help="skip stock hyperopt's rows")
    parser.add_argument(
        "--venvs",
        choices=("create", "existing"),
        default="create",
        help="baseline virtualenvs (bench/.venvs): create missing ones (downloads packages), "
        "or use those present and skip the rest with a note",
    )
    parser.add_argument(
        "--optuna-python",
        type=Path,
        help="run the Optuna rows with this interpreter (optuna 5 installed) instead of "
        "bench/.venvs/optuna",
    )
    parser.add_argument(
        "--out", type=Path, default=RESULTS, help="folder for the .json and .md results"
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="the smallest run that exercises every row: --sizes 20 --venvs existing "
        "--default-n 0 --no-isolate-max 0 --no-postgres --no-keras --no-queries",
    )
    args = parser.parse_args()
    if args.smoke:
        args.sizes, args.venvs, args.default_n, args.no_isolate_max = [20], "existing", 0, 0
        args.no_postgres = args.no_keras = args.no_queries = True
    report = run_all(args)
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = f"{dt.datetime.now():%Y%m%d-%H%M%S}"
    text = table(report)
    (args.out / f"{stamp}.json").write_text(json.dumps(report, indent=1, default=str))
    (args.out / f"{stamp}.md").write_text(text + "\n")
    print(text)
    print(f"\nwritten: {args.out / stamp}.json and .md", file=sys.stderr)
    failed = [r["system"] for r in report["rows"] if "error" in r]
    if failed:
        sys.exit(f"failed rows: {', '.join(failed)} (see the table and the traceback above)")


if __name__ == "__main__":
    main()
