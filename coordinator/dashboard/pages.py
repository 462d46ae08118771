"""What each page shows, as plain data for its template or its JSON poll.

Counts, the best trial, trials/min and ETA come from :func:`coordinator.inspect.summarize` (the
CLI's ``status``) over the cached trials; rows from :func:`coordinator.inspect.trial_row`. The
templates escape every string; nothing here builds HTML.
"""

from __future__ import annotations

import datetime as dt
import math
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from coordinator import defaults, inspect, rules
from coordinator.dashboard import states
from coordinator.dashboard.cache import (
    CachedOutcomes,
    Caches,
    ExperimentList,
    TrialCache,
    best_series,
    curve_tids,
    timestamp,
)
from coordinator.errors import ConfigError
from coordinator.states import TrialState

if TYPE_CHECKING:
    from coordinator.store import TrialStoreBase

#: hours of the workers page's timeline
TIMELINE_HOURS = 2.0
#: seconds a summary is reused while no trial changes (trials/min and ETA move with the clock)
SUMMARY_MAX_AGE_S = 5.0
#: the timeline draws at most this many trials per worker (the latest)
TIMELINE_MAX_PER_WORKER = 300


def _ran(entry: Mapping[str, Any]) -> str:
    """An attempt history entry's seconds: a paused segment's ``duration_s``, else ``ran_s``
    (claim to last heartbeat of an attempt handed back or lost: "≥ ..."), else a dash."""
    if inspect.number(entry.get("duration_s")) is not None:
        return age(entry["duration_s"])
    if rules.ran_seconds(entry.get("ran_s")) is not None:
        return "≥ " + age(entry["ran_s"])
    return "—"


def age(seconds: float | None) -> str:
    """``0.2 s``, ``42 s``, ``3.5 min``, ``2.1 h``, or an em dash: tenths below 10 s (as the
    CLI's :func:`coordinator.inspect.fmt_duration`), so a 0.2 s trial never reads ``0 s``."""
    seconds = inspect.number(seconds)
    if seconds is None or not math.isfinite(seconds):
        return "—"
    if seconds < 9.95:
        return f"{max(seconds, 0.0):.1f} s"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def when(value: Any) -> str:
    """A stored date as ``YYYY-MM-DD HH:MM:SS`` UTC, or an em dash."""
    if not isinstance(value, dt.datetime):
        return "—"
    return value.strftime("%Y-%m-%d %H:%M:%S")


def rate(per_min: float | None) -> str:
    """Trials per minute to the precision a reader uses: ``2589``, ``41``, ``2.4``, ``0.12``,
    ``<0.01``, or an em dash (never ``2588.71``)."""
    per_min = inspect.number(per_min)
    if per_min is None or not math.isfinite(per_min) or per_min < 0:
        return "—"
    if per_min >= 99.5:
        return f"{per_min:.0f}"
    if per_min == 0:
        return "0"
    if per_min < 0.01:
        return "<0.01"
    return f"{per_min:.2g}"


def outage_text(message: str) -> str:
    """A database outage's message as a page shows it: the store's messages end with what a
    *command* should do next ("rerun the same command"); a page retries by itself, so that
    advice is dropped (the page adds how it recovers)."""
    what, sep, _advice = message.partition("; nothing was lost")
    return what + "; nothing was lost: start the server again" if sep else message


def pruning_label(doc: Any) -> str | None:
    """The experiment's early-stopping rule (``pruning``) in a few words, ``None`` for none."""
    if not isinstance(doc, Mapping) or doc.get("rule") in (None, "none"):
        return None
    return f"{doc.get('rule')} on {doc.get('metric')} ({doc.get('direction', 'min')})"


def _summarize(
    cache: TrialCache, exp: Mapping[str, Any]
) -> tuple[inspect.ExperimentSummary, dict[str, int]]:
    s = inspect.summarize(CachedOutcomes(cache), exp, [])  # type: ignore[arg-type]
    counts = {inspect.state_name(state): n for state, n in s.counts.items()}
    stopped = [e for e in cache.entries() if e.state == "pruned"]
    paused = sum(1 for e in stopped if rules.paused(e.outcome) is not None)
    if stopped:  # DONE trials that were stopped early: their own chip
        counts["done"] -= len(stopped)
        counts["pruned"] = len(stopped) - paused
    if paused:  # --promote: stopped at a rung with a checkpoint, may still be promoted
        counts["paused"] = paused
    if s.malformed:  # as `status`: counted apart, in no state
        counts[inspect.MALFORMED] = s.malformed
    return s, counts


def summary(
    cache: TrialCache, exp: Mapping[str, Any], workers: list[inspect.WorkerView]
) -> dict[str, Any]:
    """One experiment's line: the CLI's summary (same rules) plus what the page adds. The
    O(trials) part is computed again only when a trial or the experiment changed, or after
    :data:`SUMMARY_MAX_AGE_S` (trials/min and ETA move with the clock)."""
    s, counts = cache.derived(
        "summary",
        (exp.get("version"), exp.get("status"), exp.get("cancel_requested")),
        lambda: _summarize(cache, exp),
        SUMMARY_MAX_AGE_S,
    )
    mine = [w for w in workers if w.exp_key in (None, s.exp_key)]
    return {
        "exp_key": s.exp_key,
        "status": s.status,
        "space": s.space,
        "algo": exp.get("algo"),
        "pruning": pruning_label(exp.get("pruning")),
        "counts": counts,
        "total": sum(counts.values()),
        "finished": s.finished,
        "max_evals": s.max_evals,
        "best_tid": s.best_tid,
        "best_number": s.best_number,  # within the experiment (rules.trial_number)
        "best_loss": s.best_loss,
        "rate_per_min": s.rate_per_min,
        "rate": rate(s.rate_per_min),
        "eta_s": s.eta_s,
        "eta": age(s.eta_s),
        "workers": sum(w.live for w in mine),
        "created": when(exp.get("created")),
        "finished_at": when(exp.get("finished")),
        "cancel_requested": exp.get("cancel_requested") is True,
    }


#: an unknown key is echoed in its error at most this long; at most this many known keys named
ECHO_CHARS = 80
KNOWN_NAMED = 20


def experiment_doc(
    store: TrialStoreBase,
    listing: ExperimentList,
    exp_key: str,
    *,
    on_miss: Callable[[], None] = lambda: None,
) -> dict[str, Any]:
    """The experiment document of ``exp_key`` (one indexed read), the listed stand-in of a
    plain-fmin key, or (``on_miss`` first: the rate limit) one indexed count of its trials; an
    unknown key is a :class:`ConfigError` that echoes at most :data:`ECHO_CHARS` of it and names
    known keys from the cached list (no scan of the trials per request)."""
    exp = store.get_experiment(exp_key)
    if exp is not None:
        return exp
    stand_in = listing.stand_in(exp_key)
    if stand_in is not None:
        return stand_in
    on_miss()
    if store.count(exp_key, list(TrialState)):  # plain fmin, newer than the cached list
        return {"_id": exp_key, "status": inspect.PLAIN_FMIN}
    listed = listing.get()
    known = [inspect.fmt_value(inspect.key_text(e.get("_id")), 60) for e in listed[:KNOWN_NAMED]]
    more = f" and {len(listed) - KNOWN_NAMED} more" if len(listed) > KNOWN_NAMED else ""
    hint = f"known: {', '.join(known)}{more}" if known else "the database holds no experiments"
    shown = inspect.fmt_value(exp_key, ECHO_CHARS)
    raise ConfigError(f"no experiment {shown!r} in database {store.db_name!r} ({hint})")


def experiments(
    store: TrialStoreBase, caches: Caches, listing: ExperimentList
) -> list[dict[str, Any]]:
    """Every experiment's summary, newest first."""
    workers = worker_views(store)
    rows = [summary(caches.get(inspect.key_text(e.get("_id"))), e, workers) for e in listing.get()]
    return rows[::-1]


def worker_views(store: TrialStoreBase, now: dt.datetime | None = None) -> list[inspect.WorkerView]:
    """Every registry row (``inspect.WorkerView``: heartbeat age, stale flag) at server time
    ``now`` (a cache's last refresh saves a round trip), or the server's time now."""
    return inspect.worker_views(store, stale_s=defaults.STALE_WORKER_S, now=now)


def trials_payload(
    cache: TrialCache,
    exp: Mapping[str, Any],
    workers: list[inspect.WorkerView],
    *,
    since: int,
    token: str | None,
) -> dict[str, Any]:
    """What the experiment page's poll gets: every trial (first poll, or the dashboard
    restarted) or those changed after sequence number ``since``; the learning curves of the
    trials it draws; the "best so far" line (``cache.best_series``); the summary line."""
    entries = cache.entries()
    full = since <= 0 or token != cache.token
    changed = entries if full else [e for e in entries if e.seq > since]
    drawn = cache.derived("curves", None, lambda: curve_tids(entries), math.inf)
    wanted = set(drawn)
    return {
        "cache": cache.token,
        "seq": cache.seq,
        "full": full,
        "now": timestamp(cache.now),
        "columns": cache.columns(),
        "trials": [
            e.to_json(with_curve=isinstance(e.tid, (int, str)) and e.tid in wanted) for e in changed
        ],
        "curve_tids": drawn,
        "epochs_reported": cache.derived(
            "epochs", None, lambda: any(e.curve is not None for e in entries), math.inf
        ),
        "best_so_far": cache.derived("best", None, lambda: best_series(entries), math.inf),
        "param_scales": param_scales(cache, exp),
        "importance": importance_panel(cache, exp),
        "summary": summary(cache, exp, workers),
    }


#: seconds between two recomputations of a changing experiment's parameter scales / importance
SCALES_EVERY_S = 10.0
IMPORTANCE_EVERY_S = 30.0


def _space(cache: TrialCache, exp: Mapping[str, Any]) -> Any:
    """The experiment's hyperopt space (built-in or plugin spaces only: the dashboard loads no
    ``--spaces`` file), built once per cache; ``None`` when unknown here."""
    key = (exp.get("space"), repr(exp.get("settings")))
    return cache.remember("space", key, lambda: inspect.ParamDecoder(exp).space)


def param_scales(cache: TrialCache, exp: Mapping[str, Any]) -> dict[str, str]:
    """``{params column: "log" | "categorical" | "linear"}`` for the columns whose
    distribution the experiment's space declares (:func:`coordinator.inspect.param_scales`:
    ``hp.loguniform`` and the other log distributions are ``"log"``), so the page draws a
    log-distributed parameter on a log axis; columns of an unknown space are left out (the page
    then guesses from the values, as ``hyperfleet plot`` does)."""
    columns = [c for c in cache.columns() if c.startswith("params.")]

    def make() -> dict[str, str]:
        scales = inspect.param_scales(_space(cache, exp))
        if not scales:
            return {}
        by = inspect.column_scales(cache.outcomes(), scales)
        known = {c: by.get(c, by.get(c.rsplit(".", 1)[-1])) for c in columns}
        return {c: scale for c, scale in known.items() if scale is not None}

    key = (tuple(columns), len(cache.entries()))
    return cache.remember("scales", key, make, SCALES_EVERY_S)


def importance_panel(cache: TrialCache, exp: Mapping[str, Any]) -> dict[str, Any]:
    """Which hyperparameters mattered (:func:`coordinator.importance.importances`, Optuna's
    PED-ANOVA over the full trials, as ``hyperfleet importance``), recomputed when the number of
    full trials changed, at most every :data:`IMPORTANCE_EVERY_S`: ``{"method", "trials",
    "pruned", "rows": [{"label", "share", "active"}], "skipped"}``, or ``{"note": why not}``
    (Optuna not installed, too few full trials)."""
    full = sum(1 for e in cache.entries() if e.counted)

    def make() -> dict[str, Any]:
        from coordinator import importance

        try:
            report = importance.importances(cache.outcomes(), _space(cache, exp))
        except ConfigError as e:
            return {"note": str(e)}
        return {
            "method": report.method,
            "trials": report.trials,
            "pruned": report.pruned,
            "rows": [
                {"label": r.label, "share": r.share, "active": r.active} for r in report.importances
            ],
            "skipped": report.skipped,
        }

    return cache.remember("importance", full, make, IMPORTANCE_EVERY_S)


# -- one trial ------------------------------------------------------------------------------------


def trial(doc: Mapping[str, Any], exp_key: str) -> dict[str, Any]:
    """The trial page's sections (values as stored; the template escapes them)."""
    result = doc.get("result") if isinstance(doc.get("result"), Mapping) else {}
    epochs = [e for e in inspect.typed(doc.get("epochs"), list) or [] if isinstance(e, Mapping)]
    metric_names: dict[str, None] = {}
    for e in epochs:
        metric_names.update(dict.fromkeys(map(str, e)))
    error = doc.get("error") if isinstance(doc.get("error"), Mapping) else {}
    attachments = [
        str(a[0]) for a in inspect.typed(doc.get("_attachments"), list) or [] if _pair(a)
    ]
    # the state every page shows: a trial an early-stopping rule stopped is "pruned", not "done"
    state = states.display_state({**doc, "problem": rules.trial_problem(doc)})
    stopped = rules.pruned(doc)
    extras = {k: v for k, v in result.items() if k not in ("loss", "status", "history", "params")}
    return {
        "exp_key": exp_key,
        "tid": doc.get("tid"),
        "state": state,
        "running": doc.get("state") == TrialState.RUNNING,
        "loss": result.get("loss"),
        "status": result.get("status"),
        "failure": result.get("failure"),
        "pruned": _stopped_text(stopped),
        "facts": [
            ("attempt", doc.get("attempt", 0)),
            ("counted failed attempts", doc.get("attempts", 0)),
            ("reserved", when(doc.get("book_time"))),
            ("ended", when(doc.get("ended"))),
            ("duration", age(doc.get("duration_s"))),
            *(  # --promote: the segments before the last pause (duration is the last one's)
                [("earlier segments", age(doc["segments_duration_s"]))]
                if inspect.number(doc.get("segments_duration_s")) is not None
                else []
            ),
            ("last heartbeat", when(doc.get("refresh_time"))),
            ("lease expires", when(doc.get("lease_expires"))),
            ("space", doc.get("space")),
        ],
        "params": sorted(inspect.flatten(_dict(doc.get("params")), "").items()),
        "result": sorted(inspect.flatten(extras, "").items()),
        "metric_names": list(metric_names),
        "epochs": epochs,
        "curve": {
            name: [e.get(name) if _plain_number(e.get(name)) else None for e in epochs]
            for name in metric_names
        },
        "attempts": [
            {
                "attempt": a.get("attempt"),
                "owner": a.get("owner"),
                "outcome": a.get("outcome"),
                "reason": a.get("reason"),
                "started": when(a.get("started")),
                "at": when(a.get("at")),
                "ran": _ran(a),
            }
            for a in inspect.typed(doc.get("attempt_history"), list) or []
            if isinstance(a, Mapping)
        ],
        "error": {
            "type": error.get("type"),
            "message": error.get("message"),
            "traceback": error.get("traceback"),
            "at": when(error.get("at")),
        }
        if error
        else None,
        "worker": sorted(inspect.flatten(_dict(doc.get("worker")), "").items()),
        "owner": doc.get("owner"),
        "has_model": defaults.MODEL_ATTACHMENT in attachments,
        "attachments": attachments,
    }


def _stopped_text(record: Mapping[str, Any] | None) -> str | None:
    """``stopped after epoch 2 by median (val_loss 0.41 > 0.38)`` for a pruned trial
    (``paused after ...`` for one paused at a rung, ``--promote``)."""
    if record is None:
        return None
    verb = "paused" if record.get("paused") is True else "stopped"
    text = f"{verb} after epoch {inspect.fmt_value(record.get('epoch'))}"
    if record.get("rule") is not None:
        text += f" by {inspect.fmt_value(record.get('rule'))}"
    value, threshold = record.get("value"), record.get("threshold")
    if _plain_number(value) and _plain_number(threshold):
        metric = inspect.fmt_value(record.get("metric") or "metric")
        text += f" ({metric} {value:.4g}, threshold {threshold:.4g})"
    return text


def _dict(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _pair(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and len(value) > 0


def _plain_number(value: Any) -> bool:
    """A finite int or float (NaN would make the page's JSON invalid)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# -- workers --------------------------------------------------------------------------------------


@dataclass
class Bar:
    tid: Any
    exp_key: str
    state: str
    x: float
    width: float
    title: str
    color: str


@dataclass
class Lane:
    worker_id: str
    label: str
    bars: list[Bar]


#: tick steps of the workers timeline, seconds (a step is chosen to give at most ~8 ticks)
_TICK_STEPS = (0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600)
_TICK_STEPS += (7200, 10800, 21600, 43200)


def time_ticks(start: dt.datetime, end: dt.datetime, width: int, most: int = 8) -> list[Any]:
    """Ticks of a time axis from ``start`` to ``end`` drawn ``width`` wide: ``(x, label)`` at
    round clock times (a step of 1 s to 12 h, or days), labelled in the page's ISO 24-hour
    format (``HH:MM:SS``, ``HH:MM`` for steps of whole minutes, ``MM-DD HH:MM`` across days)."""
    span = max((end - start).total_seconds(), 1e-9)
    step = next(
        (s for s in _TICK_STEPS if span / s <= most), 86400 * math.ceil(span / 86400 / most)
    )
    epoch = dt.datetime(1970, 1, 1)
    first = math.ceil((start - epoch).total_seconds() / step) * step
    ticks = []
    days = end.date() != start.date()
    fmt = "%m-%d %H:%M" if days else ("%H:%M" if step % 60 == 0 else "%H:%M:%S")
    i = 0
    while first + i * step <= (end - epoch).total_seconds() + 1e-6:
        moment = epoch + dt.timedelta(seconds=round(first + i * step, 3))
        x = (moment - start).total_seconds() / span * width
        label = moment.strftime(fmt) + (f".{moment.microsecond // 100000}" if step < 1 else "")
        ticks.append((round(x, 1), label))
        i += 1
    return ticks


def _state_order(name: str) -> tuple[int, str]:
    names = list(states.STATE_STYLES)
    return (names.index(name), name) if name in names else (len(names), name)


def _workers_url(exp_key: str | None, hours: float, *, show_all: bool) -> str:
    """The workers page with the same experiment and window, every worker or the recent ones."""
    params = {"key": exp_key} if exp_key is not None else {}
    if hours != TIMELINE_HOURS:
        params["hours"] = f"{hours:g}"
    if show_all:
        params["all"] = "1"
    return "/workers" + (f"?{urllib.parse.urlencode(params)}" if params else "")


def workers_page(
    store: TrialStoreBase,
    caches: Caches,
    listing: ExperimentList,
    *,
    hours: float = TIMELINE_HOURS,
    width: int = 1000,
    exp_key: str | None = None,
    show_all: bool = False,
) -> dict[str, Any]:
    """The registry rows (heartbeat ages on the server clock, stale flagged; without
    ``show_all`` only those alive, stopped or silent for at most
    :data:`~coordinator.defaults.RECENT_WORKERS_S`, and how many older ones are not shown), where
    each worker's current trial lives, and a timeline of the trials per worker of the last ``hours``
    (of experiment ``exp_key`` only, if given), fitted to the span they cover: from the first
    shown trial's start to the last one's end (now while one runs), so a 75-s search fills the
    width instead of being a sliver of a fixed window."""
    now = store.server_time()
    views = worker_views(store, now)
    listed, older = (views, 0) if show_all else inspect.recent_workers(views)
    entries = []
    for exp in listing.get():
        key = inspect.key_text(exp.get("_id"))
        entries.extend((key, e) for e in caches.get(key).entries())
    # a tid of another program's may be a list (unhashable): such a trial is no worker's
    where = {e.tid: key for key, e in entries if isinstance(e.tid, (int, str))}
    window = now - dt.timedelta(hours=hours)
    shown = []
    for key, e in entries:
        if e.worker_id is None or e.book_time is None or exp_key not in (None, key):
            continue
        end = e.ended or (now if e.state == "running" else e.book_time)
        if end >= window:
            shown.append((key, e, max(e.book_time, window), min(max(end, e.book_time), now)))
    start = min((b for _, _, b, _ in shown), default=window)
    stop = max((f for _, _, _, f in shown), default=now)
    span = max((stop - start).total_seconds(), 1.0)
    stop = start + dt.timedelta(seconds=span)
    lanes: dict[str, Lane] = {}
    for view in views:
        gpu = f"GPU {view.gpu}" if view.gpu not in (None, "", "none") else "CPU"
        lanes[view.id] = Lane(view.id, f"{view.host} {gpu} (pid {view.pid})", [])
    for key, e, begin, end in shown:
        lane = lanes.setdefault(e.worker_id, Lane(e.worker_id, e.worker_label or e.worker_id, []))  # type: ignore[arg-type]
        x0 = (begin - start).total_seconds() / span
        x1 = (end - start).total_seconds() / span
        lane.bars.append(
            Bar(
                tid=e.tid,
                exp_key=key,
                state=e.state,
                x=round(x0 * width, 1),
                width=round(max(1.0, (x1 - x0) * width), 1),
                title=f"tid {e.tid} of {key}: {states.style(e.state).label}, "
                f"{when(e.book_time)} → {when(e.ended) if e.ended else 'now'}",
                color=states.style(e.state).color,
            )
        )
    for lane in lanes.values():
        lane.bars = lane.bars[-TIMELINE_MAX_PER_WORKER:]
    present = dict.fromkeys(b.state for lane in lanes.values() for b in lane.bars)
    return {
        "now": when(now),
        "workers": [
            {
                "view": v,
                "age": age(v.age_s),
                "current_exp": where.get(v.current_tid),
                "last_seen": when(v.last_seen),
            }
            for v in listed
        ],
        "older": older,
        "older_note": inspect.older_workers_note(older, None) if older else "",
        "show_all": show_all,
        "registered": len(views),
        "all_url": _workers_url(exp_key, hours, show_all=True),
        "recent_url": _workers_url(exp_key, hours, show_all=False),
        "lanes": [lane for lane in lanes.values() if lane.bars],
        "hours": hours,
        "exp_key": exp_key,
        "stale_s": defaults.STALE_WORKER_S,
        "width": width,
        "start": when(start),
        "end": when(stop),
        "span": age(span),
        "ticks": time_ticks(start, stop, width),
        "legend": [
            (name, states.style(name).label, states.style(name).color)
            for name in sorted(present, key=_state_order)
        ],
    }
