"""Where the embedded SecantusDB server spends its CPU during the issue-19 benchmark.

Runs ``bench/hf_bench.py``'s ``run_hyperfleet`` (500 trivial trials, 2 workers, the same server
options as ``bench/run.py``) with ``py-spy record`` attached to the server process, sampling
only while the server is on CPU (no ``--idle``). Writes the collapsed stacks and prints a
summary: the share of samples under each of a few server functions (inclusive) and the top
self-time functions.

    .venv/bin/python bench/server_profile.py [N] [--out DIR] [--no-sync] [--log-level L]

``--no-sync`` and ``--log-level`` change the server's start options (to price them).
Benchmark-only: patches ``EmbeddedServer`` in this process; nothing in coordinator/ changes.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from coordinator import server as server_mod  # noqa: E402

PY_SPY = Path(sys.executable).parent / "py-spy"

#: inclusive buckets: a sample counts for every bucket whose pattern is in its stack
BUCKETS = {
    "wire recv/decode (wire.py)": "secantus/wire.py",
    "command dispatch (commands.py)": "secantus/commands.py",
    "storage (storage.py)": "secantus/storage.py",
    "query matching (query.py)": "secantus/query.py",
    "update apply (update.py)": "secantus/update.py",
    "expressions ($$NOW pipelines)": "secantus/expressions.py",
    "aggregate.py": "secantus/aggregate.py",
    "projection.py": "secantus/projection.py",
    "sortkey.py": "secantus/sortkey.py",
    "ordering.py": "secantus/ordering.py",
    "bson encode": "bson/__init__.py",
    "logging": "logging/__init__.py",
    "metrics.py": "secantus/metrics.py",
    "changestreams.py": "secantus/changestreams.py",
    "sessions.py": "secantus/sessions.py",
    "transactions.py": "secantus/transactions.py",
}


def parse_collapsed(path: Path) -> tuple[list[tuple[list[str], int]], int]:
    stacks = []
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";")]
        stacks.append((frames, n))
        total += n
    return stacks, total


def summarize(path: Path, top: int = 40) -> dict[str, object]:
    stacks, total = parse_collapsed(path)
    inclusive: collections.Counter[str] = collections.Counter()
    self_time: collections.Counter[str] = collections.Counter()
    func_incl: collections.Counter[str] = collections.Counter()
    for frames, n in stacks:
        joined = ";".join(frames)
        for name, pat in BUCKETS.items():
            if pat in joined:
                inclusive[name] += n
        self_time[frames[-1]] += n
        for f in set(frames):
            func_incl[f] += n
    return {
        "samples": total,
        "buckets_pct": {k: round(100 * v / total, 1) for k, v in inclusive.most_common()},
        "top_self_pct": [(f, round(100 * v / total, 1)) for f, v in self_time.most_common(top)],
        "top_inclusive_pct": [
            (f, round(100 * v / total, 1)) for f, v in func_incl.most_common(top * 2)
        ],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("n", nargs="?", type=int, default=500)
    ap.add_argument("--out", default="/tmp/server-profile")
    ap.add_argument("--no-sync", action="store_true")
    ap.add_argument("--log-level", default=None)
    ap.add_argument("--rate", type=int, default=250)
    ap.add_argument("--no-spy", action="store_true", help="no profiler: timings only")
    ap.add_argument(
        "--catalog-cache",
        action="store_true",
        help="start the server through bench/secantusd_catalog_cache.py",
    )
    ap.add_argument(
        "--no-gil",
        dest="gil",
        action="store_false",
        help="sample every thread not idle (py-spy's heuristics count threads "
        "blocked in recv/sendall as busy here); default: only the GIL holder",
    )
    ap.add_argument("--summarize", default=None, help="only summarize this collapsed file")
    args = ap.parse_args()
    if args.summarize:
        print(json.dumps(summarize(Path(args.summarize)), indent=1))
        return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%H%M%S")
    folded = out / f"server-{stamp}.txt"
    spy: list[subprocess.Popen[bytes]] = []

    orig_init = server_mod.EmbeddedServer.__init__
    orig_start = server_mod.EmbeddedServer._start
    orig_cmd = server_mod._daemon_command

    def init(self, *a, **kw):  # type: ignore[no-untyped-def]
        if args.no_sync:
            kw["sync"] = False
        orig_init(self, *a, **kw)

    def start(self, timeout_s):  # type: ignore[no-untyped-def]
        r = orig_start(self, timeout_s)
        if args.no_spy:
            return r
        spy.append(
            subprocess.Popen(
                [
                    str(PY_SPY),
                    "record",
                    "--pid",
                    str(self.process.pid),
                    "--rate",
                    str(args.rate),
                    "--format",
                    "raw",
                    "--output",
                    str(folded),
                    "--nonblocking",
                    *(["--gil"] if args.gil else []),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        time.sleep(1.0)  # let py-spy attach
        return r

    def daemon_command():  # type: ignore[no-untyped-def]
        if args.catalog_cache:  # experiment: bench/secantusd_catalog_cache.py
            return [
                sys.executable,
                str(Path(__file__).resolve().parent / "secantusd_catalog_cache.py"),
            ]
        return orig_cmd()

    server_mod._daemon_command = daemon_command

    server_mod.EmbeddedServer.__init__ = init  # type: ignore[method-assign]
    server_mod.EmbeddedServer._start = start  # type: ignore[method-assign]
    if args.log_level:
        orig_popen = subprocess.Popen

        class Popen(orig_popen):  # type: ignore[misc,valid-type]
            def __init__(self, cmd, *a, **kw):  # type: ignore[no-untyped-def]
                if isinstance(cmd, list) and "--log-level" in cmd:
                    cmd = list(cmd)
                    cmd[cmd.index("--log-level") + 1] = args.log_level
                super().__init__(cmd, *a, **kw)

        server_mod.subprocess.Popen = Popen  # type: ignore[misc]

    import hf_bench  # noqa: E402  (after patching: it imports EmbeddedServer by name)

    hf_bench.EmbeddedServer = server_mod.EmbeddedServer
    result = hf_bench.run_hyperfleet(args.n)
    for p in spy:
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.terminate()
    keep = {
        k: result[k]
        for k in ("trials_per_s", "cpu_ms_per_trial", "server_ops_per_trial", "server_ops")
    }
    keep["load"] = os.getloadavg()
    keep["sync"] = not args.no_sync
    keep["catalog_cache"] = args.catalog_cache
    print(json.dumps(keep))
    if folded.exists():
        s = summarize(folded, top=25)
        print(json.dumps(s, indent=1))
        print("collapsed stacks:", folded)


if __name__ == "__main__":
    main()
