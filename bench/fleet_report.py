"""Tables and the plot of bench/fleet_sim.py's runs (one dict per simulated search)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

SEQUENTIAL = ("tpe-hyperopt", 1)
STOCK = "tpe-hyperopt"

Group = tuple[str, str, int, int]  # objective, algo, workers, queue


def regret_curve(run: Mapping[str, Any]) -> np.ndarray:
    """Regret after each result: best loss among the first n results minus the minimum."""
    return np.minimum.accumulate(np.asarray(run["losses"], dtype=float)) - run["minimum"]


def groups(runs: Iterable[Mapping[str, Any]]) -> dict[Group, list[Mapping[str, Any]]]:
    out: dict[Group, list[Mapping[str, Any]]] = defaultdict(list)
    for run in runs:
        out[(run["objective"], run["algo"], run["workers"], run.get("queue", 0))].append(run)
    return out


def regrets_at(runs: Sequence[Mapping[str, Any]], n: int) -> np.ndarray:
    return np.array([regret_curve(r)[n - 1] for r in runs if len(r["losses"]) >= n])


def _fmt(x: float) -> str:
    if not np.isfinite(x):
        return "–"
    if x == 0:
        return "0"
    return f"{x:.3g}" if 1e-3 <= abs(x) < 1e4 else f"{x:.2e}"


def _ratio(a: float, b: float) -> str:
    if not (np.isfinite(a) and np.isfinite(b)) or b <= 0:
        return "–"
    return f"{a / b:.2f}"


def _order(algo: str) -> tuple[int, str]:
    return ({"tpe-hyperopt": 0, "rand": 9}.get(algo, 1), algo)


def summary(runs: Iterable[Mapping[str, Any]], at: Sequence[int]) -> list[dict[str, Any]]:
    """One row per (objective, algorithm, W, queue): median and IQR of regret at each n in ``at``,
    the ratios at ``max(at)`` vs sequential TPE and vs hyperopt's TPE at the same W, duplicates."""
    by_group = groups(runs)
    last = max(at)
    rows = []
    for (objective, algo, w, queue), members in sorted(
        by_group.items(), key=lambda kv: (kv[0][0], kv[0][3], kv[0][2], _order(kv[0][1]))
    ):
        row: dict[str, Any] = {
            "objective": objective,
            "algo": algo,
            "workers": w,
            "queue": queue,
            "seeds": len(members),
        }
        for n in at:
            r = regrets_at(members, n)
            q = np.percentile(r, [25, 50, 75]) if r.size else [np.nan] * 3
            row[f"q25@{n}"], row[f"median@{n}"], row[f"q75@{n}"] = (float(x) for x in q)
        seq = by_group.get((objective, *SEQUENTIAL, queue)) or by_group.get(
            (objective, *SEQUENTIAL, 0), []
        )
        stock = by_group.get((objective, STOCK, w, queue), [])
        mine = row[f"median@{last}"]
        row["vs_sequential"] = mine / _med(seq, last) if _med(seq, last) > 0 else np.nan
        row["vs_stock"] = mine / _med(stock, last) if _med(stock, last) > 0 else np.nan
        row["near_dup_share"] = sum(m["near_duplicates"] for m in members) / max(
            1, sum(m["suggestions"] for m in members)
        )
        row["cpu_s"] = float(np.mean([m["cpu_s"] for m in members]))
        rows.append(row)
    return rows


def _med(runs: Sequence[Mapping[str, Any]], n: int) -> float:
    r = regrets_at(runs, n)
    return float(np.median(r)) if r.size else np.nan


def markdown(runs: Iterable[Mapping[str, Any]], at: Sequence[int]) -> str:
    rows = summary(list(runs), at)
    last = max(at)
    head = ["objective", "algorithm", "W", "seeds"]
    head += [f"regret@{n} median [IQR]" for n in at]
    head += [f"÷ sequential @{last}", f"÷ hyperopt TPE same W @{last}", "near-dup", "CPU s/run"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        w = f"{row['workers']}" + (f"+{row['queue']}q" if row["queue"] else "")
        cells = [row["objective"], row["algo"], w, str(row["seeds"])]
        for n in at:
            cells.append(
                f"{_fmt(row[f'median@{n}'])} [{_fmt(row[f'q25@{n}'])}, {_fmt(row[f'q75@{n}'])}]"
            )
        cells.append(_ratio(row["vs_sequential"], 1.0))
        cells.append(_ratio(row["vs_stock"], 1.0))
        cells.append(f"{100 * row['near_dup_share']:.2f} %")
        cells.append(f"{row['cpu_s']:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def targets(runs: Iterable[Mapping[str, Any]], algo: str, at: int = 300) -> str:
    """The issue's targets for ``algo``: at W = 1 the same searches as hyperopt's TPE; at W = 32
    and 128 median regret after ``at`` results <= 1.1x sequential TPE's and below hyperopt's TPE
    at the same W; near-duplicates < 1 %."""
    by_group = groups(list(runs))
    lines = [
        f"| objective | W | seeds | median regret@{at} {algo} | sequential TPE | hyperopt TPE "
        "same W | ÷ sequential (≤ 1.1) | ÷ hyperopt TPE (< 1) | near-dup (< 1 %) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for objective in sorted({g[0] for g in by_group}):
        seq = by_group.get((objective, *SEQUENTIAL, 0), [])
        same = by_group.get((objective, algo, 1, 0), [])
        stock_by_seed = {r["seed"]: r["losses"] for r in seq}
        equal = sum(r["losses"] == stock_by_seed.get(r["seed"]) for r in same)
        if same:
            lines.append(
                f"| {objective} | 1 | {len(same)} | identical searches to hyperopt's TPE: "
                f"{equal}/{len(same)} seeds | | | | | |"
            )
        for w in (32, 128):
            mine = by_group.get((objective, algo, w, 0), [])
            stock = by_group.get((objective, STOCK, w, 0), [])
            if not mine:
                continue
            m, q, h = _med(mine, at), _med(seq, at), _med(stock, at)
            dup = sum(r["near_duplicates"] for r in mine) / max(
                1, sum(r["suggestions"] for r in mine)
            )
            r_seq, r_stock = m / q if q > 0 else np.nan, m / h if h > 0 else np.nan
            lines.append(
                f"| {objective} | {w} | {len(mine)} | {_fmt(m)} | {_fmt(q)} | {_fmt(h)} | "
                f"{r_seq:.2f} {'met' if r_seq <= 1.1 else 'missed'} | "
                f"{r_stock:.2f} {'met' if r_stock < 1 else 'missed'} | "
                f"{100 * dup:.2f} % {'met' if dup < 0.01 else 'missed'} |"
            )
    return "\n".join(lines)


def plot(runs: Iterable[Mapping[str, Any]], path: Path, liar: str = "worst") -> None:
    """Median regret against the number of results, one panel per objective: sequential TPE,
    hyperopt's TPE and the fleet-aware TPE (``liar``) at the largest two W, random search."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_group = groups(runs)
    objectives = sorted({g[0] for g in by_group})
    ws = sorted({g[2] for g in by_group if g[2] > 1})[-2:]
    fig, axes = plt.subplots(1, len(objectives), figsize=(5 * len(objectives), 4), squeeze=False)
    styles = {ws[-1]: "-", **({ws[0]: "--"} if len(ws) > 1 else {})} if ws else {}
    for ax, objective in zip(axes[0], objectives, strict=True):
        lines: list[tuple[str, int, str, str]] = [("tpe-hyperopt", 1, "k", "-")]
        for w, style in styles.items():
            lines += [("tpe-hyperopt", w, "tab:red", style), (f"tpe-{liar}", w, "tab:blue", style)]
        lines.append(("rand", 1, "tab:gray", ":"))
        for algo, w, color, style in lines:
            members = by_group.get((objective, algo, w, 0))
            if not members:
                continue
            n = min(len(m["losses"]) for m in members)
            curves = np.array([regret_curve(m)[:n] for m in members])
            label = {
                ("tpe-hyperopt", 1): "sequential TPE (W=1)",
                ("rand", 1): "random search",
            }.get((algo, w), f"{'hyperopt TPE' if algo == STOCK else 'fleet TPE, ' + liar} W={w}")
            x = np.arange(1, n + 1)
            ax.plot(x, np.maximum(np.median(curves, axis=0), 1e-9), style, color=color, label=label)
        ax.set_yscale("log")
        ax.set_title(objective)
        ax.set_xlabel("results")
        ax.set_ylabel("median regret")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
