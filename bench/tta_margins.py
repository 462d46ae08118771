"""How ``bench/time_to_accuracy.py``'s verdict depends on its target: re-analyse recorded runs
with the target at hf-none's median final best minus 0.5 (the benchmark's), 0.3, 0.2, 0.1 and 0
points. Prints, per system, the median time to target in epoch lengths and (in brackets) how
many seeds reached it. An analysis of the same runs, not a new measurement.

    .venv/bin/python bench/tta_margins.py bench/results/tta-<time>.json ...
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import time_to_accuracy as tta  # noqa: E402

MARGINS = (0.005, 0.003, 0.002, 0.001, 0.0)


def main(paths: list[str]) -> None:
    for path in paths:
        loaded = json.loads(Path(path).read_text())
        runs = loaded["runs"] if isinstance(loaded, dict) else loaded
        base = [tta.summarize_run(r, None)["best"] for r in runs if r["system"] == "hf-none"]
        base = [b for b in base if b is not None]
        if not base:
            print(f"{path}: no hf-none run to set a target from")
            continue
        print(f"{path}: hf-none final bests {sorted(round(b, 4) for b in base)}")
        for margin in MARGINS:
            target = statistics.median(base) - margin
            cells = []
            for system in dict.fromkeys(r["system"] for r in runs):
                per = [
                    tta.summarize_run(r, target)["norm_time_to_target"]
                    for r in runs
                    if r["system"] == system
                ]
                median = tta._median(per)
                reached = sum(p is not None for p in per)
                cells.append(f"{system} {'-' if median is None else f'{median:.0f}'}({reached})")
            print(f"  margin {margin:.3f}, target {target:.4f}: " + ", ".join(cells))


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: tta_margins.py bench/results/tta-<time>.json ...")
    main(sys.argv[1:])
