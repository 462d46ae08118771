"""What an ideal ASHA sampling at random could reach on ``bench/time_to_accuracy.py``'s workload:
replay recorded learning curves through an ideal no-pruning search and an ideal promotion ASHA.

The curves are those of the trials a system trained through every epoch in recorded runs
(``hf-none`` by default: with no pruning every trial's whole curve is known). Each replay
draws a sequence of them at random (random search: hyperopt's TPE suggests at random for its
first 20 trials, which is where the benchmark's target is reached) and runs it through

* ``none``: 2 workers, each trains the next trial through all its epochs;
* ``asha`` / ``asha-wait``: hyperfleet's promotion ASHA with the default rule or
  ``--promote-wait`` (rungs at epochs ``min · η^k``; a trial reaching a rung goes on if it is
  in the best ``1/η`` of the values recorded there, the best of fewer than ``η`` too unless
  ``-wait``; otherwise it pauses; a worker that comes free resumes the paused trial that now
  ranks in its rung's best ``1/η``, highest rung first, before it starts a new one).

It is ideal: an epoch costs one unit of time whatever the trial (``--timed``: its recorded
seconds, in the pool's median epochs; the good models are often the slower ones), and each start
of a trial and each resume costs ``--overhead`` units (default 0). The time to target is when a
trial that trained through every epoch first ends at or above the target (the benchmark's rule),
in epoch lengths of wall time, with the benchmark's target (hf-none's median final best minus 0.5
points) and stricter ones. The ratio asha / none of the median times estimates what promotions
gain on these curves while configurations are drawn at random: an estimate under these
assumptions, not a bound. A model-based sampler learns sooner under ASHA, whose first trials are
short (TPE's 20 random start-up results come after ~20 epochs instead of 180), and the replay
cannot say how much that adds: the measured runs (docs/benchmarks.md) fell on both sides of
their replays, within their seeds' spread.

    .venv/bin/python bench/tta_replay.py bench/results/tta-<time>.json [--replays 2000]
        [--system hf-none] [--eta 3] [--min-epochs 1] [--overhead 0] [--timed]
"""

from __future__ import annotations

import argparse
import heapq
import math
import random
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import time_to_accuracy as tta  # noqa: E402

MARGINS = (0.005, 0.003, 0.002, 0.001)
WORKERS = tta.WORKERS
HORIZON = 2000.0  #: a replay that has not reached the target by then never does


Curve = tuple[list[float], float]  #: validation accuracy epoch by epoch, seconds per epoch


def curves(runs: list[dict], system: str, epochs: int) -> list[Curve]:
    """The validation accuracies, epoch by epoch, of ``system``'s fully trained trials, and
    each one's median epoch (seconds between its epochs' ends)."""
    out = []
    for run in runs:
        if run.get("system") != system:
            continue
        for trial in run.get("trials") or []:
            accs = [e.get("val_accuracy") for e in trial.get("epochs") or []]
            if (
                trial.get("complete")
                and len(accs) == epochs
                and all(isinstance(a, (int, float)) for a in accs)
            ):
                times = [e.get("t") or 0.0 for e in trial["epochs"]]
                steps = [b - a for a, b in zip(times, times[1:], strict=False)] or [1.0]
                out.append(([float(a) for a in accs], statistics.median(steps)))
    return out


@dataclass
class Replay:
    """One search over a drawn sequence of curves; :meth:`run` returns the time to target."""

    draw: random.Random
    pool: list[Curve]
    target: float
    epochs: int
    eta: int = 3
    min_epochs: int = 1
    overhead: float = 0.0
    rule: str = "none"  #: none, asha or asha-wait
    epoch_s: float | None = None  #: timed: an epoch of a trial costs its seconds / this
    rungs: dict[int, dict[int, float]] = field(default_factory=dict)
    paused: dict[int, set[int]] = field(default_factory=dict)
    trials: list[Curve] = field(default_factory=list)

    def cost(self, tid: int, epochs: int) -> float:
        """What training ``epochs`` epochs of trial ``tid`` takes, in epoch lengths."""
        if self.epoch_s is None:
            return float(epochs)
        return epochs * self.trials[tid][1] / self.epoch_s

    def rung_epochs(self) -> list[int]:
        out, at = [], self.min_epochs
        while at < self.epochs:
            out.append(at)
            at *= self.eta
        return out

    def goes_on(self, rung: int, tid: int) -> bool:
        """Whether ``tid``'s value is among the best ``1/η`` at ``rung``; ties go on, as in
        :func:`coordinator.pruning.asha.promotable`."""
        values = self.rungs[rung]
        keep = len(values) // self.eta
        if keep == 0:
            if self.rule == "asha-wait":
                return False
            keep = 1
        cut = sorted(values.values(), reverse=True)[keep - 1]
        return values[tid] >= cut

    def next_stop(self, tid: int, after: int) -> int:
        """The epoch where trial ``tid``, trained through ``after``, next stops to be judged."""
        if self.rule == "none":
            return self.epochs
        return next((e for e in self.rung_epochs() if e > after), self.epochs)

    def next_job(self) -> tuple[int, int]:
        """(tid, epoch it resumes after): a promotion if one is due, else a new trial."""
        if self.rule != "none":
            for rung in sorted(self.paused, reverse=True):
                for tid in sorted(self.paused[rung]):
                    if self.goes_on(rung, tid):
                        self.paused[rung].discard(tid)
                        return tid, self.rung_epochs()[rung]
        self.trials.append(self.draw.choice(self.pool))
        return len(self.trials) - 1, 0

    def run(self) -> float | None:
        events: list[tuple[float, int, int, int]] = []  # (time, worker, tid, epoch reached)
        for worker in range(WORKERS):
            tid, after = self.next_job()
            stop = self.next_stop(tid, after)
            heapq.heappush(
                events, (self.overhead + self.cost(tid, stop - after), worker, tid, stop)
            )
        rung_of = {e: k for k, e in enumerate(self.rung_epochs())}
        while events:
            now, worker, tid, epoch = heapq.heappop(events)
            judged = tid
            if now > HORIZON:
                return None
            curve = self.trials[tid][0]
            if epoch == self.epochs:
                if curve[-1] >= self.target:
                    return now
                tid, after = self.next_job()
            else:
                rung = rung_of[epoch]
                self.rungs.setdefault(rung, {})[tid] = curve[epoch - 1]
                if self.goes_on(rung, tid):
                    after = epoch  # on to the next rung without a pause
                else:
                    self.paused.setdefault(rung, set()).add(tid)
                    tid, after = self.next_job()
            stop = self.next_stop(tid, after)
            start = 0.0 if tid == judged and after == epoch else self.overhead
            heapq.heappush(events, (now + start + self.cost(tid, stop - after), worker, tid, stop))
        return None


def replay(
    pool: list[Curve],
    target: float,
    epochs: int,
    *,
    rule: str,
    timed: bool,
    replays: int,
    seed: int,
    eta: int,
    min_epochs: int,
    overhead: float,
) -> list[float | None]:
    return [
        Replay(
            random.Random(f"{seed}/{i}"),
            pool,
            target,
            epochs,
            eta=eta,
            min_epochs=min_epochs,
            overhead=overhead,
            rule=rule,
            epoch_s=statistics.median(s for _, s in pool) if timed else None,
        ).run()
        for i in range(replays)
    ]


def _inputs(paths: list[str], system: str, timed: bool) -> tuple[list[Curve], float, int]:
    """The pool of curves, hf-none's median final best and the epochs, from results files
    ``paths``; ValueError naming the files if they do not hold what the replay needs."""
    named = ", ".join(paths)
    try:
        runs, meta = tta.pooled(paths)
        epochs = int(meta.get("epochs") or 9)
        pool = curves(runs, system, epochs)
        finals = [tta.summarize_run(r, None)["best"] for r in runs if r.get("system") == "hf-none"]
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{named}: not a time_to_accuracy.py results file ({e!r})") from e
    if not pool:
        raise ValueError(f"{named}: no fully trained {system} trials of {epochs} epochs")
    finals = [b for b in finals if b is not None]
    if not finals:
        raise ValueError(f"{named}: no hf-none run with a fully trained trial sets the target")
    if timed and not statistics.median(s for _, s in pool) > 0:
        raise ValueError(f"{named}: the epochs' recorded times say nothing (--timed)")
    return pool, statistics.median(finals), epochs


def _interval(
    times: list[float | None], base: list[float | None], draw: random.Random, n: int = 200
) -> tuple[str, str]:
    """The 5th and 95th percentiles of median(times) / median(base) over ``n`` resamples of
    the replays ("inf": the resampled median never reached the target)."""
    ratios = []
    for _ in range(n):
        pick = [draw.randrange(len(times)) for _ in times]
        top = tta._median([times[i] for i in pick])
        bottom = tta._median([base[i] for i in pick])
        ratios.append(math.inf if top is None or not bottom else top / bottom)
    ratios.sort()
    return tuple(  # type: ignore[return-value]
        "inf" if math.isinf(r) else f"{r:.2f}" for r in (ratios[n // 20], ratios[-n // 20 - 1])
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="+", help="bench/results/tta-<time>.json (pooled)")
    parser.add_argument("--system", default="hf-none", help="whose curves [hf-none]")
    parser.add_argument("--replays", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eta", type=int, default=3)
    parser.add_argument("--min-epochs", type=int, default=1)
    parser.add_argument("--overhead", type=float, default=0.0, help="epochs per start/resume")
    parser.add_argument(
        "--timed",
        action="store_true",
        help="an epoch of a trial lasts its recorded seconds (in the pool's median epochs), "
        "not one unit: good models are often the slower ones",
    )
    args = parser.parse_args(argv)
    if args.replays < 1 or args.eta < 2 or args.min_epochs < 1:
        parser.error("--replays and --min-epochs must be ≥ 1, --eta ≥ 2")
    if not (math.isfinite(args.overhead) and args.overhead >= 0):
        parser.error("--overhead must be a finite number ≥ 0")
    try:
        pool, base, epochs = _inputs(args.results, args.system, args.timed)
    except (OSError, ValueError) as e:
        print(f"tta_replay: {e}", file=sys.stderr)
        return 2
    if args.system != "hf-none":
        print(
            f"note: {args.system}'s fully trained trials only: with pruning they are the ones "
            "it let through, not a random sample",
            file=sys.stderr,
        )
    print(
        f"{len(pool)} curves of {args.system} ({epochs} epochs), {args.replays} replays, "
        f"η = {args.eta}, rungs from epoch {args.min_epochs}, {args.overhead:g} epochs per "
        f"start or resume; times in {'the pool' if args.timed else 'unit'} epoch lengths of wall "
        f"time ({'each trial its own recorded epoch' if args.timed else 'every epoch alike'}), "
        f"{WORKERS} workers; in brackets, the share of replays that reached the target, and "
        "for each ratio of medians its 90 % bootstrap interval over the replays"
    )
    print()
    print("| target | none | asha | asha-wait | asha / none | asha-wait / none |")
    print("|---|---|---|---|---|---|")
    for margin in MARGINS:
        target = base - margin
        times = {
            rule: replay(
                pool,
                target,
                epochs,
                rule=rule,
                replays=args.replays,
                seed=args.seed,
                eta=args.eta,
                min_epochs=args.min_epochs,
                overhead=args.overhead,
                timed=args.timed,
            )
            for rule in ("none", "asha", "asha-wait")
        }
        medians = {rule: tta._median(values) for rule, values in times.items()}

        def cell(rule: str, medians: dict = medians, times: dict = times) -> str:
            reached = sum(v is not None for v in times[rule]) / len(times[rule])
            value = medians[rule]
            shown = "never" if value is None else f"{value:.1f}"
            return f"{shown} ({100 * reached:.0f} %)"

        def ratio(rule: str, medians: dict = medians, times: dict = times) -> str:
            if medians[rule] is None or not medians["none"]:
                return "–"
            low, high = _interval(times[rule], times["none"], random.Random(args.seed))
            return f"{medians[rule] / medians['none']:.2f}× ({low}–{high})"

        print(
            f"| {100 * target:.2f} % (−{100 * margin:.1f}) | {cell('none')} | {cell('asha')} "
            f"| {cell('asha-wait')} | {ratio('asha')} | {ratio('asha-wait')} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
