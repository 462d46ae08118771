"""How ``bench/time_to_accuracy.py``'s verdict depends on its target and on its yardstick:
re-analyse recorded runs

1. with the target at hf-none's median final best minus 0.5 (the benchmark's), 0.3, 0.2, 0.1
   and 0 points: per system, the median time to target in its own epoch lengths and (in
   brackets) how many seeds reached it;
2. at the benchmark's target, in three units: seconds, the system's own median epoch (the
   benchmark's unit: it corrects for load, but also rewards a system whose epochs are longer,
   e.g. one that picks bigger models), and hf-none's median epoch of the same seed (one unit
   for all); each also as a ratio to hf-none, with a 90 % bootstrap interval of that ratio
   over the seeds (how far the verdict could move with other seeds).

An analysis of the same runs, not a new measurement. With ``--pool`` the files' runs are
analysed as one (e.g. seeds 0-4 of one run and 5-14 of a ``--first-seed 5`` run).

    .venv/bin/python bench/tta_margins.py [--pool] bench/results/tta-<time>.json ...
"""

from __future__ import annotations

import json
import math
import random
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import time_to_accuracy as tta  # noqa: E402

MARGINS = (0.005, 0.003, 0.002, 0.001, 0.0)


def _runs(path: str) -> list[dict]:
    """The runs of results file ``path``; ValueError naming the file if it is not one."""
    try:
        loaded = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: cannot be read ({getattr(e, 'strerror', None) or e})") from e
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not JSON ({e})") from e
    runs = loaded.get("runs") if isinstance(loaded, dict) else loaded
    if not isinstance(runs, list) or not all(
        isinstance(r, dict)
        and isinstance(r.get("system"), str)
        and isinstance(r.get("trials"), list)
        for r in runs
    ):
        raise ValueError(f"{path}: not a results file of bench/time_to_accuracy.py (no runs)")
    return runs


def main(paths: list[str], pool: bool = False) -> int:
    """Print the analysis of each file (or of all of them pooled); how many were analysed."""
    loaded = [(path, _runs(path)) for path in paths]  # each file checked before any output
    groups = [(" + ".join(paths), tta.pooled(paths)[0])] if pool else loaded
    analysed = 0
    for path, runs in groups:
        base = [tta.summarize_run(r, None)["best"] for r in runs if r["system"] == "hf-none"]
        base = [b for b in base if b is not None]
        if not base:
            print(f"{path}: no hf-none run to set a target from")
            continue
        analysed += 1
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
    return analysed


def _epoch_s(run: dict) -> float | None:
    return tta.summarize_run(run, None)["epoch_s"]


Times = tuple[float | None, float | None, float | None]  #: seconds, own epochs, hf-none's epochs


def _yardsticks(runs: list[dict], target: float) -> None:
    """Time to the benchmark's target in seconds, own epochs and hf-none's epochs; for each
    system a bootstrap interval of its ratio to hf-none over the seeds."""
    none = {(r.get("source"), r.get("seed")): r for r in runs if r["system"] == "hf-none"}
    per_seed: dict[str, dict[tuple, Times]] = {}
    for run in runs:
        summary = tta.summarize_run(run, target)
        seconds = summary["time_to_target"]
        base = none.get((run.get("source"), run.get("seed")))
        unit = _epoch_s(base) if base is not None else None
        common = seconds / unit if seconds is not None and unit else None
        per_seed.setdefault(run["system"], {})[(run.get("source"), run.get("seed"))] = (
            seconds,
            summary["norm_time_to_target"],
            common,
        )
    print(f"  at target {target:.4f}: seconds / own epochs / hf-none's epochs (x hf-none)")
    ref = per_seed.get("hf-none", {})
    ref_medians = [tta._median([t[i] for t in ref.values()]) for i in range(3)]
    for system, seeds in per_seed.items():
        cells = []
        for i in range(3):
            value = tta._median([t[i] for t in seeds.values()])
            if value is None:
                cells.append("-")
                continue
            ratio = ref_medians[i]
            cells.append(f"{value:.1f}" + (f" ({value / ratio:.2f}x)" if ratio else ""))
        print(f"    {system:22s} " + " / ".join(cells))
        pairs = {seed: (times, ref[seed]) for seed, times in seeds.items() if seed in ref}
        if system != "hf-none" and len(pairs) >= 3:
            spans = [_interval([(s[i], n[i]) for s, n in pairs.values()]) for i in range(3)]
            shown = ["-" if span is None else f"{span[0]:.2f}-{span[1]:.2f}" for span in spans]
            print(f"    {'':22s} 90 % interval of the ratio: " + " / ".join(shown))


#: resamples of the seeds for :func:`_interval`
RESAMPLES = 2000


def _interval(pairs: list[tuple[float | None, float | None]]) -> tuple[float, float] | None:
    """A 90 % bootstrap interval of median(system) / median(hf-none): the seeds resampled with
    replacement (each seed's pair of runs together), ``RESAMPLES`` times, with a fixed seed so
    that the same files print the same interval. ``None`` (target not reached) is slower than
    any time; a resample where hf-none's median is ``None`` has no ratio, and fewer than half
    of them with one gives no interval."""
    rng = random.Random(0)
    ratios = []
    for _ in range(RESAMPLES):
        sample = [rng.choice(pairs) for _ in pairs]
        system = tta._median([s for s, _ in sample])
        none = tta._median([n for _, n in sample])
        if none is None or none <= 0:
            continue
        ratios.append(math.inf if system is None else system / none)
    if len(ratios) < RESAMPLES // 2:
        return None
    ratios.sort()
    return ratios[int(0.05 * len(ratios))], ratios[int(0.95 * len(ratios)) - 1]


USAGE = "usage: tta_margins.py [--pool] bench/results/tta-<time>.json ..."

if __name__ == "__main__":
    args = sys.argv[1:]
    if {"-h", "--help"} & set(args):
        print(USAGE + "\n\n" + (__doc__ or ""))
        sys.exit(0)
    pool = "--pool" in args
    args = [a for a in args if a != "--pool"]
    if not args:
        sys.exit(USAGE)
    try:
        analysed = main(args, pool)
    except ValueError as e:  # a file that is not a results file; pooled files of other settings
        sys.exit(f"tta_margins.py: {e}")
    except (KeyError, TypeError) as e:  # a results file with a damaged run
        sys.exit(
            f"tta_margins.py: a run in {', '.join(args)} lacks a field or has a wrong one ({e!r})"
        )
    if not analysed:
        sys.exit("tta_margins.py: nothing to analyse: each file needs hf-none runs (the yardstick)")
