"""How ``bench/time_to_accuracy.py``'s verdict depends on its target and on its yardstick:
re-analyse recorded runs

1. with the target at hf-none's median final best minus 0.5 (the benchmark's), 0.3, 0.2, 0.1
   and 0 points: per system, the median time to target in its own epoch lengths and (in
   brackets) how many seeds reached it;
2. at the benchmark's target, in three units: seconds, the system's own median epoch (the
   benchmark's unit: it corrects for load, but also rewards a system whose epochs are longer,
   e.g. one that picks bigger models), and hf-none's median epoch of the same seed (one unit
   for all); each also as a ratio to hf-none.

An analysis of the same runs, not a new measurement. With ``--pool`` the files' runs are
analysed as one (e.g. seeds 0-4 of one run and 5-14 of a ``--first-seed 5`` run).

    .venv/bin/python bench/tta_margins.py [--pool] bench/results/tta-<time>.json ...
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import time_to_accuracy as tta  # noqa: E402

MARGINS = (0.005, 0.003, 0.002, 0.001, 0.0)


def main(paths: list[str], pool: bool = False) -> None:
    groups = [(" + ".join(paths), tta.pooled(paths)[0])] if pool else []
    for path in [] if pool else paths:
        loaded = json.loads(Path(path).read_text())
        groups.append((path, loaded["runs"] if isinstance(loaded, dict) else loaded))
    for path, runs in groups:
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
        _yardsticks(runs, statistics.median(base) - tta.TARGET_MARGIN)


def _epoch_s(run: dict) -> float | None:
    return tta.summarize_run(run, None)["epoch_s"]


def _yardsticks(runs: list[dict], target: float) -> None:
    """Time to the benchmark's target in seconds, own epochs and hf-none's epochs."""
    none = {(r.get("source"), r.get("seed")): r for r in runs if r["system"] == "hf-none"}
    rows: dict[str, tuple[float | None, float | None, float | None]] = {}
    for system in dict.fromkeys(r["system"] for r in runs):
        wall, own, common = [], [], []
        for run in (r for r in runs if r["system"] == system):
            summary = tta.summarize_run(run, target)
            seconds = summary["time_to_target"]
            base = none.get((run.get("source"), run.get("seed")))
            unit = _epoch_s(base) if base is not None else None
            wall.append(seconds)
            own.append(summary["norm_time_to_target"])
            common.append(seconds / unit if seconds is not None and unit else None)
        rows[system] = (tta._median(wall), tta._median(own), tta._median(common))
    print(f"  at target {target:.4f}: seconds / own epochs / hf-none's epochs (x hf-none)")
    ref = rows.get("hf-none")
    for system, values in rows.items():
        cells = []
        for i, value in enumerate(values):
            if value is None:
                cells.append("-")
                continue
            ratio = ref[i] if ref is not None else None
            cells.append(f"{value:.1f}" + (f" ({value / ratio:.2f}x)" if ratio else ""))
        print(f"    {system:22s} " + " / ".join(cells))


if __name__ == "__main__":
    args = sys.argv[1:]
    pool = "--pool" in args
    args = [a for a in args if a != "--pool"]
    if not args:
        sys.exit("usage: tta_margins.py [--pool] bench/results/tta-<time>.json ...")
    try:
        main(args, pool)
    except ValueError as e:  # pooled files of other settings
        sys.exit(f"tta_margins.py: {e}")
