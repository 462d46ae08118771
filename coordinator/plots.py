"""PNG plots of one experiment (matplotlib, Agg; no pyplot global state).

``plot_all`` writes:

* ``loss_over_time.png``: each trial's loss at the time it ended, with the running best
  (:func:`coordinator.rules.best_so_far`: pruned trials are drawn apart and never move it);
* ``params.png``: each parameter against loss (log axis for log-scaled parameters, jittered
  strips for categorical ones), the best trial starred;
* ``learning_curves.png``: validation loss (or the early-stopping rule's metric) per epoch: the 5
  best finished trials in colour, the others in grey, stopped trials ending in a red x;
* ``timeline.png``: one row per worker (and GPU), a bar per attempt, so idle gaps show.
"""

from __future__ import annotations

import datetime as dt
import math
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from coordinator import rules
from coordinator.errors import ConfigError
from coordinator.inspect import (
    best_row,
    best_so_far_rows,
    column_scales,
    ok_rows,
    trial_row,
    typed,
)

_STATE_COLORS = {"done": "tab:green", "error": "tab:red", "running": "tab:blue"}
_RETRY_COLOR = "tab:gray"
TOP_CURVES = 5
#: the best curves' colours: no red (stopped trials) or grey (the other finished ones)
_TOP_COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown")


def plot_all(
    exp_key: str,
    docs: list[dict[str, Any]],
    out_dir: Path,
    *,
    scales: Mapping[str, str] | None = None,
    now: dt.datetime | None = None,
) -> tuple[list[Path], dict[str, str]]:
    """Write the plots of ``docs`` (trial documents) into ``out_dir``.

    Returns the files written and ``{file name: why it was skipped}``.
    """
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create {out_dir}: {e.strerror or e}") from e
    docs = [_plottable(d) for d in docs]
    rows = [trial_row(d) for d in docs]
    now = now or dt.datetime.now(dt.UTC).replace(tzinfo=None)
    makers = {
        "loss_over_time.png": lambda: loss_over_time(exp_key, rows),
        "params.png": lambda: params_vs_loss(exp_key, rows, column_scales(docs, scales or {})),
        "learning_curves.png": lambda: learning_curves(exp_key, docs),
        "timeline.png": lambda: timeline(exp_key, docs, now),
    }
    written: list[Path] = []
    skipped: dict[str, str] = {}
    for name, make in makers.items():
        fig = make()
        if isinstance(fig, str):
            skipped[name] = fig
            continue
        path = out_dir / name
        try:
            FigureCanvasAgg(fig)
            fig.savefig(path, dpi=110)
        except OSError as e:
            raise ConfigError(f"cannot write {path}: {e.strerror or e}") from e
        written.append(path)
    return written, skipped


#: fields the plots read, with the types they need; any other type reads as missing
_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "book_time": (dt.datetime,),
    "ended": (dt.datetime,),
    "refresh_time": (dt.datetime,),
    "worker": (dict,),
    "misc": (dict,),
    "params": (dict,),
    "result": (dict,),
    "epochs": (list,),
    "attempt_history": (list,),
}


def _plottable(doc: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``doc`` without the fields of a wrong type (another program's junk), with
    only dict epochs and attempts whose dates are dates."""
    out = dict(doc)
    for name, types in _FIELD_TYPES.items():
        if name in out and typed(out[name], *types) is None:
            del out[name]
    if "epochs" in out:
        out["epochs"] = [e for e in out["epochs"] if isinstance(e, Mapping)]
    if "attempt_history" in out:
        out["attempt_history"] = [
            h
            for h in out["attempt_history"]
            if isinstance(h, Mapping)
            and typed(h.get("started"), dt.datetime)
            and typed(h.get("at"), dt.datetime)
        ]
    misc = out.get("misc")
    if misc is not None and not isinstance(misc.get("vals", {}), Mapping):
        out["misc"] = {k: v for k, v in misc.items() if k != "vals"}
    return out


def _time_unit(span_s: float) -> tuple[float, str]:
    """Divisor and name of the unit that suits a span of ``span_s`` seconds."""
    if span_s < 180:
        return 1.0, "seconds"
    if span_s < 3 * 3600:
        return 60.0, "minutes"
    return 3600.0, "hours"


def _use_log(values: list[float]) -> bool:
    return bool(values) and min(values) > 0 and max(values) / min(values) > 100


def loss_over_time(exp_key: str, rows: list[dict[str, Any]]) -> Figure | str:
    ok = [r for r in ok_rows(rows) if r.get("ended") is not None]
    series = best_so_far_rows(ok)  # full trials only: the line `best` would draw
    stopped = [r for r in ok if r.get("pruned") is not None]
    if not series and not stopped:
        return "no successful trial yet"
    t0 = min(r["book_time"] or r["ended"] for r in ok)
    div, unit = _time_unit((max(r["ended"] for r in ok) - t0).total_seconds())

    def since(r: dict[str, Any]) -> float:
        return (r["ended"] - t0).total_seconds() / div

    minutes = [since(r) for r, _, _ in series]
    losses = [loss for _, loss, _ in series]
    best = [b for _, _, b in series]
    fig = Figure(figsize=(8, 4.5))
    ax = fig.add_subplot()
    ax.scatter(minutes, losses, s=18, alpha=0.6, label="trial loss")
    if stopped:  # their loss is that of an unfinished training: shown, never the best
        ax.scatter(
            [since(r) for r in stopped],
            [r["loss"] for r in stopped],
            s=18,
            marker="x",
            color="tab:orange",
            alpha=0.6,
            label=f"stopped early ({len(stopped)})",
        )
    if series:
        ax.step(minutes, best, where="post", color="tab:red", lw=2, label="best so far")
    failed = [r for r in rows if r["state"] == "error" and r.get("ended") is not None]
    if failed:
        for r in failed:
            ax.axvline((r["ended"] - t0).total_seconds() / div, color="tab:red", alpha=0.25, lw=1)
        ax.plot([], [], color="tab:red", alpha=0.4, label=f"failed trial ({len(failed)})")
    if _use_log([r["loss"] for r in ok]):
        ax.set_yscale("log")
    ax.set_xlabel(f"{unit} since the first trial started")
    ax.set_ylabel("loss")
    best_text = f"best {best[-1]:.4g}" if best else "no full trial yet"
    ax.set_title(f"{exp_key}: loss per trial ({len(ok)} ok), {best_text}")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right")
    fig.tight_layout()
    return fig


def _scale_of(column: str, scales: Mapping[str, str], values: list[Any]) -> str:
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    known = scales.get(column, scales.get(column.rsplit(".", 1)[-1]))  # labels: often the leaf
    if known == "log" and numeric:
        return "log"
    if known == "categorical" or (known is None and not numeric):
        return "categorical"
    if any(not isinstance(v, (int, float)) or isinstance(v, bool) for v in values):
        return "categorical"
    if all(isinstance(v, int) for v in values) and len(set(values)) <= 6:
        return "categorical"
    return "log" if _use_log(values) else "linear"


def params_vs_loss(
    exp_key: str, rows: list[dict[str, Any]], scales: Mapping[str, str]
) -> Figure | str:
    ok = ok_rows(rows)
    names = sorted({c for r in ok for c in r if c.startswith("params.")})
    if not ok or not names:
        return "no successful trial with parameters yet"
    ncols = min(3, len(names))
    nrows = math.ceil(len(names) / ncols)
    fig = Figure(figsize=(4.2 * ncols, 3.4 * nrows))
    best = best_row(ok)
    assert best is not None  # ``ok`` is not empty
    log_loss = _use_log([r["loss"] for r in ok])
    rng = random.Random(0)
    for i, name in enumerate(names):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        have = [r for r in ok if r.get(name) is not None]
        values = [r[name] for r in have]
        losses = [r["loss"] for r in have]
        order = [r["tid"] for r in have]
        scale = _scale_of(name, scales, values)
        if scale == "categorical":
            cats = sorted({str(v) for v in values}, key=_natural)
            index = {c: j for j, c in enumerate(cats)}
            xs = [index[str(v)] + rng.uniform(-0.18, 0.18) for v in values]
            ax.set_xticks(range(len(cats)), cats, rotation=30 if len(cats) > 4 else 0)
            ax.set_xlim(-0.6, len(cats) - 0.4)
            best_x = index[str(best[name])] if best.get(name) is not None else None
        else:
            xs = values
            if scale == "log" and min(values) > 0:
                ax.set_xscale("log")
            else:
                ax.xaxis.set_major_locator(MaxNLocator(4))
            best_x = best.get(name)
        ax.scatter(xs, losses, c=order, cmap="viridis", s=16, alpha=0.75)
        if best_x is not None:
            ax.scatter([best_x], [best["loss"]], marker="*", s=160, color="tab:red", zorder=3)
        if log_loss:
            ax.set_yscale("log")
        suffix = {"log": " (log)", "categorical": " (choice)"}.get(scale, "")
        ax.set_xlabel(name.removeprefix("params.") + suffix)
        if i % ncols == 0:
            ax.set_ylabel("loss")
        ax.grid(alpha=0.3)
    fig.suptitle(f"{exp_key}: parameters against loss (colour: trial order, star: best)")
    fig.tight_layout()
    return fig


def _natural(text: str) -> tuple[int, float, str]:
    try:
        return (0, float(text), text)
    except ValueError:
        return (1, 0.0, text)


def learning_curves(exp_key: str, docs: list[dict[str, Any]]) -> Figure | str:
    """The metric per epoch: the best finished trials in colour, the other finished ones in
    grey, and the trials an early-stopping rule stopped ending in a red x where it stopped them."""
    with_epochs = [d for d in docs if d.get("epochs")]
    stopped = [d for d in with_epochs if rules.pruned(d) is not None]
    finished = [d for d in rules.ranked(with_epochs) if rules.pruned(d) is None]
    ranked = finished[:TOP_CURVES]
    if not ranked and not stopped:
        return "no successful trial reported per-epoch metrics"
    metric = next((rules.pruned(d).get("metric") for d in stopped), None)  # type: ignore[union-attr]
    if metric is None:
        shown = ranked or stopped
        metric = "val_loss" if any("val_loss" in e for d in shown for e in d["epochs"]) else "loss"
    fig = Figure(figsize=(8, 4.5))
    ax = fig.add_subplot()
    values: list[float] = []

    def curve(d: dict[str, Any]) -> tuple[list[Any], list[float]]:
        points = [
            (e.get("epoch", i + 1), e[metric])
            for i, e in enumerate(d["epochs"])
            if isinstance(e.get(metric), (int, float)) and math.isfinite(e[metric])
        ]
        values.extend(y for _, y in points)
        return [x for x, _ in points], [y for _, y in points]

    for d in finished[TOP_CURVES:]:
        ax.plot(*curve(d), color="tab:gray", alpha=0.35, lw=0.8)
    for d in stopped:
        xs, ys = curve(d)
        if xs:
            ax.plot(xs, ys, color="tab:red", alpha=0.3, lw=0.8)
            ax.plot(xs[-1:], ys[-1:], "x", color="tab:red", ms=5)
    if stopped:
        ax.plot([], [], "x-", color="tab:red", alpha=0.6, label=f"stopped early ({len(stopped)})")
    if len(finished) > TOP_CURVES:
        ax.plot(
            [],
            [],
            color="tab:gray",
            alpha=0.5,
            label=f"other finished ({len(finished) - TOP_CURVES})",
        )
    for d, color in zip(ranked, _TOP_COLORS, strict=False):
        label = f"tid {d['tid']} (loss {d['result']['loss']:.4g})"
        ax.plot(*curve(d), marker="o", ms=3, color=color, label=label)
    if _use_log(values):
        ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    title = f"{exp_key}: {metric} per epoch, {len(ranked)} best finished trials"
    ax.set_title(title + (f", {len(stopped)} stopped early (x)" if stopped else ""))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _worker_label(worker: Mapping[str, Any]) -> str:
    host = worker.get("host")
    pid = worker.get("pid")
    label = f"{host}:{pid}" if host and pid else str(worker.get("id", "?"))
    gpu = worker.get("gpu") or worker.get("cuda_visible_devices")
    if gpu and gpu != "none":
        label += f" gpu {gpu}"
    return label


def timeline(exp_key: str, docs: list[dict[str, Any]], now: dt.datetime) -> Figure | str:
    labels: dict[str, str] = {}
    for d in docs:
        if d.get("worker", {}).get("id"):
            labels[str(d["worker"]["id"])] = _worker_label(d["worker"])
    bars: list[tuple[str, dt.datetime, dt.datetime, str]] = []
    for d in docs:
        for h in d.get("attempt_history") or []:
            if h.get("started") and h.get("at"):
                owner = str(h.get("owner", "?"))
                bars.append((labels.get(owner, owner), h["started"], h["at"], _RETRY_COLOR))
        state = {1: "running", 2: "done", 3: "error"}.get(d.get("state"))
        start = d.get("book_time")
        if state is None or start is None or not d.get("worker"):
            continue
        end = now if state == "running" else d.get("ended") or d.get("refresh_time") or start
        bars.append((_worker_label(d["worker"]), start, end, _STATE_COLORS[state]))
    if not bars:
        return "no trial has started yet"
    t0 = min(b[1] for b in bars)
    t_end = max(b[2] for b in bars)
    span = max((t_end - t0).total_seconds(), 1e-9)
    div, unit = _time_unit(span)
    rows = sorted({b[0] for b in bars})
    fig = Figure(figsize=(10, 1.8 + 0.45 * len(rows)))
    ax = fig.add_subplot()
    for y, row in enumerate(rows):
        mine = [b for b in bars if b[0] == row]
        ax.broken_barh(
            [
                ((s - t0).total_seconds() / div, (e - s).total_seconds() / div)
                for _, s, e, _ in mine
            ],
            (y - 0.35, 0.7),
            facecolors=[c for *_, c in mine],
            edgecolor="white",
            linewidth=0.4,
        )
        busy = _union_seconds([(s, e) for _, s, e, _ in mine])
        ax.text(span / div * 1.01, y, f"busy {100 * busy / span:.0f}%", va="center", fontsize=8)
    ax.set_yticks(range(len(rows)), rows)
    ax.set_xlim(0, span / div * 1.12)
    ax.set_ylim(-0.6, len(rows) - 0.4)
    ax.invert_yaxis()
    ax.set_xlabel(f"{unit} since the first trial started (gaps: worker idle)")
    ax.set_title(f"{exp_key}: trials per worker", loc="left")
    handles = [Patch(color=c, label=s) for s, c in _STATE_COLORS.items()]
    handles.append(Patch(color=_RETRY_COLOR, label="lost/crashed attempt"))
    ax.legend(
        handles=handles,
        loc="lower right",
        bbox_to_anchor=(1.0, 1.0),
        ncol=4,
        fontsize=8,
        frameon=False,
    )
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


def _union_seconds(spans: list[tuple[dt.datetime, dt.datetime]]) -> float:
    total, cur_s, cur_e = 0.0, None, None
    for s, e in sorted(spans):
        if cur_e is None or s > cur_e:
            if cur_e is not None:
                total += (cur_e - cur_s).total_seconds()
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    if cur_e is not None:
        total += (cur_e - cur_s).total_seconds()
    return total
