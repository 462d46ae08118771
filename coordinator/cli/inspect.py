"""Inspection commands: ``status``, ``workers``, ``top``, ``show``, ``export``, ``plot``.

They only read; the queries and the flattening live in :mod:`coordinator.inspect`, imported
inside each command (it needs the store, hence pymongo).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from coordinator.cli.options import (
    exp_key_option,
    mongo_options,
    output_option,
    spaces_option,
    stale_option,
)
from coordinator.defaults import EXPORT_FORMATS, RECENT_WORKERS_S
from coordinator.errors import ConfigError
from coordinator.shown import shown
from coordinator.states import TrialState, WorkerStatus

if TYPE_CHECKING:
    from coordinator import inspect as ins
    from coordinator.store import TrialStoreBase

#: how much of one long field (an error message, a traceback line) `show` prints
LONG_CHARS = 2000
#: the last lines of a stored traceback that `show` prints
TRACEBACK_LINES = 60

_EXP_KEY_HELP = "the experiment (its --exp-key)"
_SPACES_HELP = "extra search spaces (the --spaces the search used), to decode queued trials' params"


# -- status ------------------------------------------------------------------------------------


@click.command()
@mongo_options()
@exp_key_option("only this experiment [default: all]")
@stale_option()
def status(mongo: str, db: str, exp_key: str | None, stale_s: float) -> None:
    """Experiments: trials by state, best loss, trials/min, live workers, ETA."""
    from coordinator import inspect as ins
    from coordinator.store import connect

    store = connect(mongo, db)
    exps = [ins.get_experiment(store, exp_key)] if exp_key else ins.all_experiments(store)
    if not exps:
        click.echo(f"no experiments in database {db!r}")
        return
    workers = ins.worker_views(store, stale_s=stale_s)
    for i, exp in enumerate(exps):
        if i:
            click.echo()
        _print_summary(ins.summarize(store, exp, workers))


def _print_summary(s: ins.ExperimentSummary) -> None:
    from coordinator import inspect as ins

    total = f"/{s.max_evals}" if s.max_evals else ""
    space = f"  space {shown(s.space, bare=True)}" if s.space else ""
    over = s.status == "done"
    label = shown(s.status, bare=True)
    if over and s.best_loss is None:
        label += ", no trial succeeded"  # "[done]" alone read as a success
    click.echo(f"experiment {shown(s.exp_key, bare=True)}  [{label}]{space}")
    malformed = f", malformed {s.malformed} (skipped)" if s.malformed else ""
    click.echo(f"  trials    {s.finished}{total} finished: " + _counts(s.counts) + malformed)
    if s.pruned:
        done = s.counts.get(TrialState.DONE, 0)
        paused = f" ({s.paused} paused at a rung)" if s.paused else ""
        click.echo(f"  pruned    {s.pruned} of the {done} done trials were stopped early{paused}")
    if s.promoted:
        trials = "trial" if s.promoted == 1 else "trials"
        click.echo(f"  promoted  {s.promoted} {trials} resumed from a rung (--promote)")
    if s.best_loss is not None:
        tid = shown(s.best_tid, bare=True)
        click.echo(f"  best      loss {s.best_loss:.6g} (trial {s.best_number}, tid {tid})")
    else:
        click.echo(f"  best      - (no successful trial{'' if over else ' yet'})")
    rate = "-" if s.rate_per_min is None else f"{_rate(s.rate_per_min)} trials/min"
    eta = f", ETA {ins.fmt_duration(s.eta_s)}" if s.eta_s is not None else ""
    click.echo(f"  rate      {rate}{eta}")
    listed, older = ins.recent_workers(s.workers)
    live = sum(w.live for w in listed)
    stale = sum(w.stale for w in listed)
    gone = len(listed) - live - stale  # stopped (or another state a foreign writer left)
    click.echo(
        f"  workers   {live} live"
        + (f", {stale} STALE" if stale else "")
        + (f", {gone} stopped" if gone else "")
    )
    for w in listed:
        click.echo("    " + _worker_line(w))
    if older:
        click.echo("    " + ins.older_workers_note(older, "`hyperfleet workers --all` lists them"))


def _counts(counts: dict[TrialState, int]) -> str:
    return ", ".join(f"{s.name.lower()} {counts.get(s, 0)}" for s in TrialState)


def _worker_line(w: ins.WorkerView) -> str:
    from coordinator import inspect as ins

    trial = f"tid {shown(w.current_tid, bare=True)}" if w.current_tid is not None else "idle"
    gpu = f" gpu {shown(w.gpu, bare=True)}" if w.gpu and w.gpu != "none" else ""
    seen = "never" if w.age_s is None else f"{ins.fmt_duration(w.age_s)} ago"
    if w.ahead:
        seen = f"{ins.fmt_duration(-w.age_s)} in the future"  # type: ignore[operator]
    flag = "  STALE (no heartbeat)" if w.stale else ""
    if not w.stale and w.state != WorkerStatus.ALIVE:
        flag = f"  {shown(w.state, bare=True)}"
    return f"{shown(w.id, bare=True)}{gpu}: {trial}, last heartbeat {seen}{flag}"


# -- workers -----------------------------------------------------------------------------------


@click.command()
@mongo_options()
@stale_option()
@click.option(
    "--all",
    "include_old",
    is_flag=True,
    help=f"also list the workers stopped or silent for over {RECENT_WORKERS_S / 3600:g} h "
    "(killed ones, long gone)",
)
def workers(mongo: str, db: str, stale_s: float, include_old: bool) -> None:
    """Workers from their heartbeats: host, GPU, current trial, last heartbeat."""
    from coordinator import inspect as ins
    from coordinator.store import connect

    store = connect(mongo, db)
    views = ins.worker_views(store, stale_s=stale_s)
    older = 0
    if not include_old:
        views, older = ins.recent_workers(views)
    if not views:
        click.echo("no live or recently stopped workers")
        if older:
            click.echo(ins.older_workers_note(older))
        return
    rows = [
        {
            "worker": w.id,
            "host": w.host,
            "pid": w.pid,
            "gpu": w.gpu,
            "exp_key": w.exp_key or "any",
            "tid": w.current_tid,
            "last_heartbeat": w.last_seen,
            "age": ins.fmt_duration(w.age_s) if not w.ahead else "in the future",
            "state": ("STALE (clock ahead)" if w.ahead else "STALE") if w.stale else w.state,
        }
        for w in views
    ]
    names = list(rows[0])
    click.echo(ins.format_table(rows, names, [n.replace("_", " ") for n in names]))
    if older:
        click.echo(ins.older_workers_note(older))


# -- top ---------------------------------------------------------------------------------------


@click.command()
@mongo_options()
@exp_key_option(_EXP_KEY_HELP, required=True)
@click.option("-n", "limit", type=click.IntRange(min=1), default=10, show_default=True)
@click.option(
    "--by",
    default="loss",
    show_default=True,
    metavar="FIELD",
    help="column to rank on, e.g. loss, duration_s, result.val_accuracy, params.lr",
)
@click.option("--desc", is_flag=True, help="largest first (e.g. for accuracy)")
@click.option("--all-states", is_flag=True, help="include failed, running and queued trials")
@spaces_option(_SPACES_HELP)
def top(
    mongo: str,
    db: str,
    exp_key: str,
    limit: int,
    by: str,
    desc: bool,
    all_states: bool,
    spaces: tuple[str, ...],
) -> None:
    """The best trials: decoded params and main metrics, best first."""
    from coordinator import inspect as ins
    from coordinator.store import connect

    store = connect(mongo, db)
    rows = ins.load_rows(store, exp_key, spaces=spaces)
    pool = rows if all_states else ins.ok_rows(rows)
    if not pool:
        known = ins.columns(rows)
        if by not in known and rows:
            ins.sort_rows(rows, by)  # raises the unknown-field error
        click.echo(f"experiment {exp_key}: no successful trials yet ({len(rows)} trials)")
        return
    # on loss, the ranking rule (as `best`: a trial stopped early never outranks a full one)
    ranked = ins.rank_rows(pool, by, descending=desc)[:limit]
    metrics = [
        c
        for c in ins.columns(ranked)
        if c.startswith("result.") and not c.startswith("result.pruned.") and _numeric(ranked, c)
    ]
    metrics.sort(key=lambda c: (not c.startswith("result.val_"), "acc" not in c))
    params = [c for c in ins.columns(ranked) if c.startswith("params.")]
    names = ["tid", "trial"] + (["state"] if all_states else []) + ["loss"]
    if any(r.get("pruned") is not None for r in ranked):
        names.append("pruned")  # the epoch an early-stopping rule stopped it at
    if any(r.get("paused") for r in ranked):
        names.append("paused")  # --promote: paused at that epoch's rung, not stopped for good
    if by not in names:
        names.append(by)
    names += [c for c in metrics[:4] if c not in names]
    names += ["duration_s", "worker.host"]
    names += [c for c in ("worker.gpu",) if any(r.get(c) not in (None, "none") for r in ranked)]
    names += [c for c in params if c not in names]
    for rank, row in enumerate(ranked, 1):
        row["#"] = rank
    headers = ["#"] + [c.removeprefix("params.").removeprefix("result.") for c in names]
    click.echo(ins.format_table(ranked, ["#", *names], headers))


def _numeric(rows: list[dict[str, Any]], column: str) -> bool:
    values = [r.get(column) for r in rows if r.get(column) is not None]
    return bool(values) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in values
    )


# -- show --------------------------------------------------------------------------------------


def _trial_by_tid(store: TrialStoreBase, exp_key: str, text: str) -> dict[str, Any] | None:
    """The trial whose tid is ``text`` read as an integer, else the one whose tid is the
    string ``text`` (hyperopt's Trials take any tid: docs/hyperopt-compat.md)."""
    try:
        number: int | None = int(text)
    except ValueError:
        number = None
    if number is not None and -(2**63) <= number < 2**63:
        doc = store.get_trial(exp_key, number)
        if doc is not None:
            return doc
    return store.get_trial(exp_key, text)  # type: ignore[arg-type]  # any tid, as hyperopt's


@click.command()
@mongo_options()
@exp_key_option(_EXP_KEY_HELP, required=True)
@click.argument("tid_text", metavar="TID")
@spaces_option(_SPACES_HELP)
def show(mongo: str, db: str, exp_key: str, tid_text: str, spaces: tuple[str, ...]) -> None:
    """One trial: params, result, per-epoch metrics, timing, worker, attempts, error.

    TID is the trial's tid as `top` lists it: an integer, or the string tid of a plain-fmin
    trial (hyperopt lets Trials use any tid, e.g. "id0")."""
    from coordinator import inspect as ins
    from coordinator import rules
    from coordinator.store import connect

    store = connect(mongo, db)
    exp = ins.get_experiment(store, exp_key)
    doc = _trial_by_tid(store, exp_key, tid_text)
    if doc is None:
        hint = "`hyperfleet top --all-states` lists them"
        tids = [d.get("tid") for d in store.trial_outcomes(exp_key)]
        ints = sorted(t for t in tids if isinstance(t, int) and not isinstance(t, bool))
        if tid_text.isdigit() and 1 <= int(tid_text) <= len(ints):  # a trial number, not a tid
            tid_of = ints[int(tid_text) - 1]
            hint = (
                f"trial {tid_text} of this experiment (as status and best number them) is "
                f"tid {tid_of}: `hyperfleet show --exp-key {exp_key} {tid_of}`"
            )
        raise ConfigError(
            f"experiment {exp_key!r} has no trial {shown(tid_text, bare=True)}; {hint}"
        )
    tid = doc.get("tid")
    decoder = ins.ParamDecoder(exp, spaces)
    problem = rules.trial_problem(doc, space=ins.typed(exp.get("space"), str))
    if problem is None and not doc.get("params"):
        problem = decoder.problem(doc)
    if problem is not None:
        click.echo(f"tid {shown(tid, bare=True)} of {exp_key}: {ins.MALFORMED} ({problem})")
        click.echo("    not a usable trial document: no count, search or best trial includes it")
        return
    params = ins.typed(doc.get("params"), dict) or decoder(doc)
    result = ins.typed(doc.get("result"), dict) or {}
    pruned = ins.pruned_text(doc)
    number = rules.trial_number(tid, (d.get("tid") for d in store.trial_outcomes(exp_key)))
    click.echo(
        f"tid {shown(tid, bare=True)} (trial {number}) of {exp_key}: "
        f"{ins.state_name(doc.get('state'))}" + (f", {pruned}" if pruned else "")
    )
    # a Keras result's ``history`` and ``params`` repeat the epochs and params shown below
    _section("result", {k: v for k, v in result.items() if k not in ("history", "params")})
    _section("params", ins.flatten(params or {}, ""))
    now = store.server_time()
    running_s = (
        (now - doc["book_time"]).total_seconds()
        if doc.get("state") == TrialState.RUNNING and ins.when(doc.get("book_time"))
        else None
    )
    _section(
        "timing",
        {
            "started": ins.when(doc.get("book_time")),
            "ended": ins.when(doc.get("ended")),
            "duration": ins.fmt_duration(ins.number(doc.get("duration_s")))
            if ins.number(doc.get("duration_s")) is not None
            else None,
            # --promote: the segments before the last pause (duration is the last one's)
            "earlier segments": ins.fmt_duration(ins.number(doc.get("segments_duration_s")))
            if ins.number(doc.get("segments_duration_s")) is not None
            else None,
            **_named(doc.get("timing")),  # the phases (docs/schema.md)
            "running for": ins.fmt_duration(running_s) if running_s is not None else None,
            "last heartbeat": ins.when(doc.get("refresh_time")),
            "lease expires": ins.when(doc.get("lease_expires")),
        },
    )
    _section("worker", {**_named(doc.get("worker")), "owner": doc.get("owner")})
    checkpoint = ins.typed(doc.get("checkpoint"), dict) or {}
    _section(
        "attempts",
        {
            "reservations": doc.get("attempt", 0),
            "failed attempts": doc.get("attempts", 0),
            "resumed from epoch": doc.get("resumed_from_epoch"),
            "checkpoint at epoch": checkpoint.get("epoch"),
        },
    )
    for h in ins.typed(doc.get("attempt_history"), list) or []:
        if not isinstance(h, dict):
            continue
        attempt, owner, outcome = (
            shown(h.get(k), bare=True) for k in ("attempt", "owner", "outcome")
        )
        progress = ", ".join(
            f"{label} {shown(h[key], bare=True)}"
            for key, label in (
                ("resumed_from_epoch", "resumed after epoch"),
                ("epochs_recorded", "epochs recorded"),
                ("checkpoint_epoch", "checkpoint at epoch"),
            )
            if h.get(key) is not None
        )
        ran = ins.number(h.get("duration_s"))  # --promote: a paused segment's seconds
        if ran is not None:
            progress = ", ".join(filter(None, (progress, f"ran {ran:.3f} s")))
        least = rules.ran_seconds(h.get("ran_s"))  # handed back: claim to last heartbeat
        if least is not None and ran is None:  # whole seconds, rounded down: a lower bound
            progress = ", ".join(filter(None, (progress, f"ran at least {int(least)} s")))
        click.echo(
            f"    attempt {attempt} by {owner}: {outcome} "
            f"({shown(h.get('reason'), LONG_CHARS, bare=True)}) at {ins.fmt_value(h.get('at'))}"
            + (f"; {progress}" if progress else "")
        )
    epochs = [e for e in ins.typed(doc.get("epochs"), list) or [] if isinstance(e, dict)]
    if epochs:
        click.echo(f"epochs ({len(epochs)})")
        flat = [ins.flatten(e, "") for e in epochs]
        names = list(dict.fromkeys(["epoch"] + [c for row in flat for c in row]))
        click.echo(_indent(ins.format_table(flat, names)))
    error = _named(doc.get("error"))
    if error:
        kind, message = shown(error.get("type"), bare=True), error.get("message")
        click.echo(f"error: {kind}: {shown(message, LONG_CHARS, bare=True)}")
        if isinstance(error.get("traceback"), str):
            lines = error["traceback"].rstrip().splitlines()
            cut = (
                [f"…({len(lines) - TRACEBACK_LINES} lines)"] if len(lines) > TRACEBACK_LINES else []
            )
            tail = [shown(line, LONG_CHARS, bare=True) for line in lines[-TRACEBACK_LINES:]]
            click.echo(_indent("\n".join(cut + tail)))


def _named(value: Any) -> dict[str, Any]:
    """A sub-document's fields under text names; anything but a dict (junk) reads as empty."""
    return {str(k): v for k, v in value.items()} if isinstance(value, dict) else {}


def _section(title: str, values: dict[str, Any]) -> None:
    from coordinator import inspect as ins

    kept = {k: v for k, v in values.items() if v is not None and k != "traceback"}
    if not kept:
        return
    click.echo(title)
    names = {k: shown(k, bare=True) for k in kept}  # a field name may come from anyone too
    width = max(len(name) for name in names.values())
    for key, value in kept.items():
        text = json.dumps(value) if isinstance(value, (dict, list)) else ins.fmt_field(key, value)
        click.echo(f"    {names[key].ljust(width)}  {shown(text, LONG_CHARS, bare=True)}")


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in text.splitlines())


# -- export ------------------------------------------------------------------------------------


@click.command()
@mongo_options()
@exp_key_option(_EXP_KEY_HELP, required=True)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(EXPORT_FORMATS),
    default=None,
    help="[default: from the file's extension (.csv, .json, .jsonl); csv when it has none]",
)
@output_option("output", "file to write [default: stdout]")
@spaces_option(_SPACES_HELP)
def export(
    mongo: str,
    db: str,
    exp_key: str,
    fmt: str | None,
    output: Path | None,
    spaces: tuple[str, ...],
) -> None:
    """Every trial as one flat row: params (nested ones too), metrics, timing, worker, state."""
    if fmt is None:
        suffix = output.suffix.lstrip(".").lower() if output else ""
        if suffix and suffix not in EXPORT_FORMATS:
            raise click.BadParameter(
                f"cannot tell the format from {output.name!r}: name the file .csv, .json or "
                ".jsonl, or pass --format",
                param_hint="'-o'",
            )
        fmt = suffix or "csv"
    from coordinator import inspect as ins
    from coordinator.store import connect

    store = connect(mongo, db)
    rows = ins.load_rows(store, exp_key, spaces=spaces)
    text = ins.render_export(rows, fmt)
    if output is None:
        sys.stdout.write(text)
        return
    ins.write_text(output, text)
    click.echo(f"wrote {len(rows)} trials of {exp_key} to {output} ({fmt})", err=True)


# -- plot --------------------------------------------------------------------------------------


@click.command()
@mongo_options()
@exp_key_option(_EXP_KEY_HELP, required=True)
@output_option(
    "out_dir", "directory for the PNG files (created if needed)", directory=True, required=True
)
@spaces_option(_SPACES_HELP)
def plot(mongo: str, db: str, exp_key: str, out_dir: Path, spaces: tuple[str, ...]) -> None:
    """PNGs: loss over time, each parameter against loss, learning curves, worker timeline."""
    try:
        from coordinator import plots
    except ImportError as e:
        raise ConfigError(f"plotting needs matplotlib ({e}): pip install 'hyperfleet[plot]'") from e
    from coordinator import inspect as ins
    from coordinator.store import connect

    store = connect(mongo, db)
    exp = ins.get_experiment(store, exp_key)
    every = ins.load_trials(store, exp_key)
    docs = ins.usable_trials(every, exp)
    if len(docs) < len(every):
        click.echo(f"skipped {len(every) - len(docs)} malformed documents", err=True)
    decoder = ins.ParamDecoder(exp, spaces)
    written, skipped = plots.plot_all(
        exp_key, docs, out_dir, scales=ins.param_scales(decoder.space), now=store.server_time()
    )
    for path in written:
        click.echo(str(path))
    for name, why in skipped.items():
        click.echo(f"skipped {name}: {why}", err=True)


def _rate(per_min: float) -> str:
    """3 significant digits, never in e-notation (a quick search finishes 1,300 trials/min)."""
    return f"{per_min:.0f}" if per_min >= 100 else f"{per_min:.3g}"
