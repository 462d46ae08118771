"""How long ``hyperfleet status`` takes on an empty database: the median of 5 fresh processes
(issue 19's target: < 0.3 s; ``hyperfleet --help`` for comparison).

    python bench/status_time.py [--runs 5]

It starts its own throwaway SecantusDB server; nothing is written to the database.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from coordinator.server import EmbeddedServer  # noqa: E402


def timed(argv: list[str], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        out = subprocess.run(
            [sys.executable, "-m", "coordinator", *argv], capture_output=True, text=True, cwd=ROOT
        )
        times.append(time.perf_counter() - start)
        if out.returncode != 0:
            raise SystemExit(f"hyperfleet {' '.join(argv)} failed: {out.stderr.strip()}")
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = EmbeddedServer(Path(tmp) / "db", sync=False)
        server.start()
        try:
            for argv in (["--help"], ["status", "--mongo", server.uri, "--db", "empty_status"]):
                times = timed(argv, args.runs)
                print(
                    f"hyperfleet {argv[0]}: median {statistics.median(times):.3f} s "
                    f"over {args.runs} runs ({', '.join(f'{t:.3f}' for t in times)})"
                )
        finally:
            server.stop()


if __name__ == "__main__":
    main()
