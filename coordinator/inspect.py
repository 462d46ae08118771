"""Reading a search back: flat trial rows, experiment summaries, worker views, exports.

Everything here reads through the store contract (:class:`~coordinator.store.TrialStoreBase`)
and never writes. The CLI (``coordinator.cli.inspect``), the plots (``coordinator.plots``) and
the notebook API (``coordinator.trials.trial_rows``) share these functions, so a column has one
name everywhere.

A *row* is one trial flattened into ``{column: scalar}``: nested parameter choices become dotted
columns (``params.optimizer.name``, ``params.optimizer.lr``), list items get their index
(``params.layers.0``). Dates stay ``datetime`` (naive UTC) in rows and become ISO 8601 in exports.

A document that :func:`coordinator.rules.trial_problem` refuses (another program's junk, a state
``"2"``, no ``misc``...) becomes a *malformed* row: its ``tid``, ``state`` ``"malformed"`` and
the ``problem``; it is never counted as a state, never a successful or best trial.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from coordinator import defaults, rules
from coordinator.errors import ConfigError, SpaceError, counted
from coordinator.states import ExperimentStatus, TrialState, WorkerStatus

if TYPE_CHECKING:  # typed against the contract; importing a backend here would cost every reader
    from coordinator.store import TrialStoreBase

logger = logging.getLogger(__name__)

EXPORT_FORMATS = defaults.EXPORT_FORMATS
#: a worker whose last heartbeat is older than this is flagged stale
DEFAULT_STALE_S = defaults.STALE_WORKER_S
#: columns shown first, in this order, wherever they exist
_LEADING = ("tid", "trial", "state", "status", "loss", "rank")
_TRAILING_PREFIXES = ("worker.", "error.")
_TRAILING = (
    "epochs",
    "duration_s",
    "segments_duration_s",
    "book_time",
    "ended",
    "attempt",
    "failed_attempts",
)
_RESULT_SKIPPED = frozenset({"loss", "status", "history", "params"})
_WORKER_FIELDS = (
    "id",
    "host",
    "pid",
    "gpu",
    "cuda_visible_devices",
    "threads",
    "save_models",
    "steps_per_execution",
    "jax_compile_cache",
)


# -- rows ------------------------------------------------------------------------------------------


def flatten(value: Any, prefix: str) -> dict[str, Any]:
    """``{"a": {"b": 1}, "c": [2, 3]}`` under ``p`` -> ``{"p.a.b": 1, "p.c.0": 2, "p.c.1": 3}``."""
    if isinstance(value, Mapping):
        flat: dict[str, Any] = {}
        for key, item in value.items():
            flat.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    if isinstance(value, (list, tuple)):
        flat = {}
        for i, item in enumerate(value):
            flat.update(flatten(item, f"{prefix}.{i}" if prefix else str(i)))
        return flat
    return {prefix: value}


#: the ``state`` column of a document that cannot be used (:func:`coordinator.rules.trial_problem`)
MALFORMED = "malformed"


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def typed(value: Any, *types: type) -> Any:
    """``value`` when it is one of ``types``, else ``None``: every field read from a document
    goes through this, so a wrong type reads as missing (``bool`` is never a number here)."""
    if isinstance(value, bool) and bool not in types:
        return None
    return value if isinstance(value, types) else None


def number(value: Any) -> int | float | None:
    """An int or float field (not ``bool``), else ``None``."""
    return typed(value, int, float)


def when(value: Any) -> dt.datetime | None:
    """A date field, else ``None``."""
    return typed(value, dt.datetime)


def key_text(value: Any) -> str:
    """An experiment's ``_id`` as text (another program's may be an ObjectId or a number)."""
    return value if isinstance(value, str) else str(value)


def malformed_row(doc: Mapping[str, Any], problem: str) -> dict[str, Any]:
    """The row of a document nobody can use: its tid (as text unless a number), ``state``
    ``"malformed"`` and the ``problem``; none of its other content."""
    tid = doc.get("tid")
    if not (rules.tid_order(tid)[0] == 0 or tid is None):
        tid = fmt_value(tid, 40)
    return {"tid": tid, "state": MALFORMED, "status": None, "loss": None, "problem": problem}


def state_name(state: Any) -> str:
    try:
        return TrialState(state).name.lower()
    except ValueError:
        return str(state)


def trial_row(doc: Mapping[str, Any], params: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One trial document as a flat row (see the module docstring for the column names).

    ``params`` replaces the document's own decoded ``params`` (for trials not yet evaluated).
    Fields of unexpected types are left out rather than raising.
    """
    result = _mapping(doc.get("result"))
    loss = result.get("loss")
    row: dict[str, Any] = {
        "tid": doc.get("tid"),
        "state": state_name(doc.get("state")),
        "status": result.get("status"),
        "loss": loss if isinstance(loss, (int, float)) and not isinstance(loss, bool) else None,
    }
    row.update(flatten(params if params is not None else doc.get("params") or {}, "params"))
    # ``history`` repeats ``epochs`` and ``params`` the params: both stay out of the row
    extras = {k: v for k, v in result.items() if k not in _RESULT_SKIPPED}
    row.update(flatten(extras, "result"))
    epochs = doc.get("epochs")
    epochs = epochs if isinstance(epochs, list) else []
    if epochs:
        row.update(flatten(epochs[-1], "last_epoch"))
    row["epochs"] = len(epochs)
    row["pruned"] = _pruned_epoch(doc)
    if rules.paused(doc) is not None:  # --promote: may still be resumed
        row["paused"] = True
    if typed(doc.get("promotions"), int):
        row["promotions"] = doc["promotions"]  # --promote: times resumed from a rung
    row["duration_s"] = number(doc.get("duration_s"))
    if number(doc.get("segments_duration_s")) is not None:  # --promote: earlier segments
        row["segments_duration_s"] = number(doc.get("segments_duration_s"))
    row.update(flatten(_mapping(doc.get("timing")), "timing"))  # phases (docs/schema.md)
    row["book_time"] = when(doc.get("book_time"))
    row["ended"] = when(doc.get("ended"))
    row["attempt"] = typed(doc.get("attempt", 0), int)
    # ``attempts`` counts the failed ones: named so it cannot be read as "attempt"'s total
    row["failed_attempts"] = typed(doc.get("attempts", 0), int)
    worker = _mapping(doc.get("worker"))
    for name in _WORKER_FIELDS:
        row[f"worker.{name}"] = worker.get(name)
    error = _mapping(doc.get("error"))
    row["error.type"] = error.get("type")
    row["error.message"] = error.get("message")
    return row


def columns(rows: Iterable[Mapping[str, Any]]) -> list[str]:
    """The union of the rows' columns: id and outcome first, params, metrics, timing, worker."""
    seen: dict[str, None] = {}
    for row in rows:
        seen.update(dict.fromkeys(row))
    names = list(seen)
    lead = [c for c in _LEADING if c in seen]
    tail = [c for c in _TRAILING if c in seen] + [
        c for c in names if c.startswith(_TRAILING_PREFIXES)
    ]
    params = sorted(c for c in names if c.startswith("params."))
    middle = [c for c in names if c not in lead and c not in tail and c not in params]
    return lead + params + middle + tail


# -- experiments and trials ------------------------------------------------------------------------


#: the status shown for trials without an experiment document (plain hyperopt fmin)
PLAIN_FMIN = "plain fmin"


def get_experiment(store: TrialStoreBase, exp_key: str) -> dict[str, Any]:
    """The experiment document of ``exp_key``; an unknown key is a :class:`ConfigError` that
    names the known ones."""
    exp = store.get_experiment(exp_key)
    if exp is not None:
        return exp
    if store.count(exp_key, list(TrialState)):  # plain hyperopt fmin: trials, no experiment doc
        return {"_id": exp_key, "status": PLAIN_FMIN}
    known = [fmt_value(key_text(e.get("_id")), 60) for e in all_experiments(store)]
    hint = f"known: {', '.join(known)}" if known else "the database holds no experiments"
    raise ConfigError(f"no experiment {exp_key!r} in database {store.db_name!r} ({hint})")


def all_experiments(store: TrialStoreBase) -> list[dict[str, Any]]:
    """Every experiment document, oldest first, then one stand-in (status ``plain fmin``) per
    exp key that has trials but no document: plain ``hyperopt.fmin`` writes none."""
    exps = store.list_experiments()
    # another program's experiment ``_id`` may be a document (unhashable): only text keys can
    # name a plain-fmin experiment, so only they are compared
    known = {key for e in exps if isinstance(key := e.get("_id"), str)}
    plain = {k for k in store.trial_exp_keys() if isinstance(k, str) and k not in known}
    return exps + [{"_id": key, "status": PLAIN_FMIN} for key in sorted(plain)]


def load_trials(store: TrialStoreBase, exp_key: str) -> list[dict[str, Any]]:
    """Every trial document of ``exp_key`` by tid (without hyperopt's bulky ``spec``)."""
    return store.trials(exp_key, with_spec=False)


def load_rows(
    store: TrialStoreBase, exp_key: str, *, spaces: Iterable[str] = ()
) -> list[dict[str, Any]]:
    """Flat rows of every trial of ``exp_key``; queued and running trials get their params
    decoded from ``misc.vals`` when the experiment's search space is known here. Documents
    :func:`rules.trial_problem` refuses become :func:`malformed_row` rows. Each row's ``rank``
    is its place in :func:`rules.ranked` (1 = the best; pruned trials after the full ones;
    ``None`` for failed, unfinished and malformed trials)."""
    exp = get_experiment(store, exp_key)
    docs = load_trials(store, exp_key)
    decode = ParamDecoder(exp, spaces)
    rows = []
    for d in docs:
        problem = rules.trial_problem(d, space=typed(exp.get("space"), str))
        if problem is None and not d.get("params"):
            problem = decode.problem(d)
        if problem is not None:
            rows.append(malformed_row(d, problem))
        else:
            rows.append(trial_row(d, None if d.get("params") else decode(d)))
    tids = [d.get("tid") for d in docs]
    for row in rows:  # the number a person counts, beside the database-wide tid
        row["trial"] = rules.trial_number(row.get("tid"), tids)
    add_ranks(rows)
    return rows


def usable_trials(
    docs: Iterable[dict[str, Any]], exp: Mapping[str, Any] | None = None
) -> list[dict[str, Any]]:
    """The documents of ``docs`` that :func:`rules.trial_problem` accepts (as trials of
    experiment ``exp``'s space, when it names one)."""
    space = typed((exp or {}).get("space"), str)
    return [d for d in docs if rules.trial_problem(d, space=space) is None]


class ParamDecoder:
    """Decodes ``misc.vals`` (hyperopt's index lists) into params with the experiment's space,
    for trials no worker has decoded yet. Unknown spaces decode to ``None``.

    The space (hence hyperopt) is built on first use: reading a search whose trials all carry
    their decoded ``params`` never imports hyperopt."""

    def __init__(self, exp: Mapping[str, Any], spaces: Iterable[str] = ()) -> None:
        self._exp = exp
        self._spaces = tuple(spaces)
        self._built = False
        self._space: Any = None
        self._labels: list[str] | None = None

    def _build(self) -> None:
        if self._built:
            return
        self._built = True
        name = typed(self._exp.get("space"), str)
        if not name:
            return
        try:
            from search_spaces import get_space, load_spaces

            for path in self._spaces:
                load_spaces(path)
            space = get_space(name)
            settings = _mapping(self._exp.get("settings"))
            self._space = space.hyperopt_space(space.resolve_settings(dict(settings)))
            self._labels = list(param_scales(self._space))
        except (SpaceError, ConfigError) as e:
            logger.debug("cannot decode params of %s: %s", self._exp.get("_id"), e)

    @property
    def space(self) -> Any:
        self._build()
        return self._space

    def problem(self, doc: Mapping[str, Any]) -> str | None:
        """Why ``doc``'s ``misc`` cannot be decoded with this space
        (:func:`rules.trial_problem` with the space's labels); ``None`` when it can, or when the
        space is unknown here (nothing is decoded then)."""
        self._build()
        if self._labels is None:
            return None
        return rules.trial_problem(doc, self._labels)

    def __call__(self, doc: Mapping[str, Any]) -> dict[str, Any] | None:
        misc = _mapping(doc.get("misc"))
        if not misc.get("vals") or self.space is None or self.problem(doc) is not None:
            return None
        from hyperopt import base, space_eval

        try:
            return space_eval(self._space, base.spec_from_misc(misc))
        except Exception as e:  # noqa: BLE001 - another program's misc: show no params
            logger.debug("tid %s: params not decodable: %.200s", doc.get("tid"), e)
            return None


_LOG_DISTS = {"loguniform", "qloguniform", "lognormal", "qlognormal"}
_CATEGORICAL_DISTS = {"randint", "categorical", "uniformint"}


def param_scales(space: Any) -> dict[str, str]:
    """``{label: "log" | "categorical" | "linear"}`` for every hyperparameter of a hyperopt
    space (``{}`` for ``None``)."""
    if space is None:
        return {}
    from hyperopt import pyll

    scales: dict[str, str] = {}
    for node in pyll.dfs(pyll.as_apply(space)):
        if node.name != "hyperopt_param":
            continue
        label = node.pos_args[0].obj
        dist = node.pos_args[1].name
        if dist in _LOG_DISTS:
            scales[label] = "log"
        elif dist in _CATEGORICAL_DISTS:
            scales[label] = "categorical"
        else:
            scales[label] = "linear"
    return scales


def column_labels(docs: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """``{params column: hyperopt label}``, matched on value: a float parameter's value in
    ``params`` is the one in ``misc.vals`` (labels need not match parameter names)."""
    found: dict[str, str] = {}
    for d in docs:
        vals = _mapping(_mapping(d.get("misc")).get("vals"))
        floats = {
            v[0]: k for k, v in vals.items() if isinstance(v, list) and v and type(v[0]) is float
        }
        for column, value in flatten(_mapping(d.get("params")), "params").items():
            if type(value) is float and value in floats:
                found.setdefault(column, floats[value])
    return found


def column_scales(docs: Iterable[Mapping[str, Any]], scales: Mapping[str, str]) -> dict[str, str]:
    """:func:`param_scales`'s ``scales`` keyed by leaf name (as given) and by params column
    (through :func:`column_labels`)."""
    by_column = {c: scales[label] for c, label in column_labels(docs).items() if label in scales}
    return {**scales, **by_column}


def sort_rows(
    rows: list[dict[str, Any]], by: str = "loss", *, descending: bool = False
) -> list[dict[str, Any]]:
    """``rows`` sorted on column ``by`` (rows without a value last); an unknown column is a
    :class:`ConfigError` listing the sortable ones."""
    names = columns(rows)
    known = [c for c in names if any(_sortable(r.get(c)) for r in rows)]
    if rows and by not in names:  # a known column without values yet (e.g. loss) is no error
        raise ConfigError(
            f"unknown field {by!r} for --by; sortable fields here: {', '.join(known)}"
        )
    present = [r for r in rows if _sortable(r.get(by))]
    missing = [r for r in rows if not _sortable(r.get(by))]
    present.sort(
        key=lambda r: (_sort_key(r[by]), rules.tid_order(r.get("tid"))), reverse=descending
    )
    return present + missing


def _sortable(value: Any) -> bool:
    if value is None or isinstance(value, bool):
        return value is not None
    if isinstance(value, float):
        return not math.isnan(value)
    return isinstance(value, (int, str, dt.datetime))


def _sort_key(value: Any) -> tuple[int, Any]:
    if isinstance(value, (int, float)):
        return (0, value)
    if isinstance(value, dt.datetime):
        return (1, value.timestamp())
    return (2, str(value))


def _as_trial(row: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of a row that :mod:`coordinator.rules` reads, in trial-document form."""
    name = str(row.get("state", "")).upper()
    state = TrialState[name] if name in TrialState.__members__ else row.get("state")
    result = {"status": row.get("status"), "loss": row.get("loss")}
    if row.get("pruned") is not None:
        result["pruned"] = {"epoch": row["pruned"]}
    return {"tid": row.get("tid"), "state": state, "result": result, "ended": row.get("ended")}


def _pruned_epoch(doc: Mapping[str, Any]) -> int | None:
    """The ``pruned`` column: the epoch at which an early-stopping rule stopped the trial."""
    record = rules.pruned(doc)
    return None if record is None else record.get("epoch")


def pruned_text(doc: Mapping[str, Any]) -> str:
    """``"pruned at epoch 2 by asha: val_loss 0.41, threshold 0.35"`` for a trial an
    early-stopping rule stopped (``"paused at ..."`` for one paused at a rung, ``--promote``);
    ``""`` for any other."""
    record = rules.pruned(doc)
    if record is None:
        return ""
    paused = record.get("paused")  # True: paused now; False: paused until the search ended
    verb = "paused" if paused is True else "pruned"
    text = f"{verb} at epoch {record.get('epoch')} by {record.get('rule')}"
    if record.get("metric") is not None:
        text += f": {record['metric']} {fmt_value(record.get('value'))}"
        if record.get("threshold") is None and isinstance(paused, bool):
            text += " (too few values at its rung to rank it when it paused)"  # < η values
        else:
            text += f", threshold {fmt_value(record.get('threshold'))}"
    if paused is False:
        text += "; still paused when the search ended"
    return text


def ok_rows(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows of successful trials (:func:`coordinator.rules.is_ok_trial`)."""
    return [r for r in rows if rules.is_ok_trial(_as_trial(r))]


def best_row(rows: Iterable[dict[str, Any]]) -> dict[str, Any] | None:
    """The row of the best trial (:func:`coordinator.rules.best_trial`), or ``None``."""
    first = next(iter(ranked_rows(rows)), None)
    return first if first is not None and first.get("pruned") is None else None


def ranked_rows(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows of successful trials, best first (:func:`coordinator.rules.ranked`: pruned
    trials after the full ones; failed, unfinished and malformed rows left out)."""
    return rules.ranked(rows, _as_trial)


def add_ranks(rows: Iterable[dict[str, Any]]) -> None:
    """Set each row's ``rank``: 1 for the best, in :func:`ranked_rows` order; ``None`` for the
    rows that order leaves out."""
    rows = list(rows)
    for row in rows:
        row["rank"] = None
    for place, row in enumerate(ranked_rows(rows), 1):
        row["rank"] = place


def rank_rows(
    rows: list[dict[str, Any]], by: str = "loss", *, descending: bool = False
) -> list[dict[str, Any]]:
    """``rows`` in the order ``top`` lists them: on ``loss`` the ranking rule
    (:func:`ranked_rows`; ``descending``: worst full trial first, pruned ones still after
    them), followed by the rows it leaves out; on any other column :func:`sort_rows`."""
    if by != "loss":
        return sort_rows(rows, by, descending=descending)
    best_first = ranked_rows(rows)
    if descending:
        full = [r for r in best_first if r.get("pruned") is None]
        best_first = full[::-1] + [r for r in best_first if r.get("pruned") is not None][::-1]
    chosen = {id(r) for r in best_first}
    return best_first + [r for r in sort_rows(rows, by) if id(r) not in chosen]


def best_so_far_rows(rows: Iterable[dict[str, Any]]) -> list[tuple[dict[str, Any], float, float]]:
    """:func:`coordinator.rules.best_so_far` over rows: ``(row, loss, best so far)`` by end time."""
    return rules.best_so_far(rows, _as_trial)


# -- summaries ---------------------------------------------------------------------------------


@dataclass
class WorkerView:
    id: str
    host: str | None
    pid: int | None
    gpu: str | None
    exp_key: str | None
    current_tid: int | None
    state: str
    last_seen: dt.datetime | None
    age_s: float | None
    stale: bool
    #: its last heartbeat is stamped ahead of the server's clock (a hand edit, another clock):
    #: no proof of life, so stale (the store's live_workers leaves it out too)
    ahead: bool = False

    @property
    def live(self) -> bool:
        """ALIVE and heartbeating: neither stopped nor stale."""
        return self.state == WorkerStatus.ALIVE and not self.stale

    def recent(self, window_s: float) -> bool:
        """Whether a listing shows it without ``--all``: its last heartbeat (or its stop) is at
        most ``window_s`` old. A row without a usable ``last_seen`` is shown (flagged stale):
        nothing says it is old."""
        return self.age_s is None or self.age_s <= window_s

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any], now: dt.datetime, stale_s: float) -> WorkerView:
        seen = when(doc.get("last_seen"))
        age = (now - seen).total_seconds() if seen is not None else None
        ahead = age is not None and age < -FUTURE_SLACK_S
        state = doc.get("state", WorkerStatus.ALIVE.value)
        state = state if isinstance(state, str) else str(state)
        gpu = typed(doc.get("gpu"), str, int) or typed(doc.get("cuda_visible_devices"), str, int)
        return cls(
            id=key_text(doc.get("_id")),
            host=typed(doc.get("host"), str),
            pid=typed(doc.get("pid"), int),
            gpu=str(gpu) if gpu not in (None, "") else None,
            exp_key=typed(doc.get("exp_key"), str),
            current_tid=typed(doc.get("current_tid"), int, str),
            state=state,
            last_seen=seen,
            age_s=age,
            stale=state == WorkerStatus.ALIVE and (age is None or age > stale_s or ahead),
            ahead=ahead,
        )


#: a heartbeat stamped this far ahead of the server's clock is no sign of life (as the store's)
FUTURE_SLACK_S = 5.0


def worker_views(
    store: TrialStoreBase, *, stale_s: float = DEFAULT_STALE_S, now: dt.datetime | None = None
) -> list[WorkerView]:
    """Every row of the heartbeat registry (stopped ones too), newest first, ages at server
    time ``now`` (the server's time now if not given), stale ones flagged."""
    if now is None:
        now = store.server_time()
    docs = store.list_workers(alive_only=False)
    return [WorkerView.from_doc(d, now, stale_s) for d in docs]


def recent_workers(
    views: list[WorkerView], window_s: float = defaults.RECENT_WORKERS_S
) -> tuple[list[WorkerView], int]:
    """The workers a listing shows by default (alive, or stopped or silent for at most
    ``window_s``: :meth:`WorkerView.recent`) and how many older ones it leaves out."""
    shown = [v for v in views if v.recent(window_s)]
    return shown, len(views) - len(shown)


def older_workers_note(n: int, how: str | None = "--all lists them") -> str:
    """The line a listing prints for the ``n`` older workers it leaves out, and ``how`` to see
    them."""
    hours = f"{defaults.RECENT_WORKERS_S / 3600:g} h"
    note = f"{counted(n, 'older worker')} not shown (stopped or silent for over {hours})"
    return f"{note}: {how}" if how else note


@dataclass
class ExperimentSummary:
    exp_key: str
    status: str
    space: str | None
    max_evals: int | None
    counts: dict[TrialState, int]
    best_tid: int | None
    best_loss: float | None
    rate_per_min: float | None
    eta_s: float | None
    workers: list[WorkerView] = field(default_factory=list)
    pruned: int = 0  #: DONE trials an early-stopping rule stopped (``--prune``)
    paused: int = 0  #: of those, paused at a rung (``--promote``): promoted if they rank later
    promoted: int = 0  #: trials promoted from a rung at least once (``--promote``)
    #: the best trial's number within the experiment (:func:`rules.trial_number`)
    best_number: int | None = None
    #: documents of the experiment that cannot be used (:func:`rules.trial_problem`): in no count
    malformed: int = 0

    @property
    def finished(self) -> int:
        return sum(n for s, n in self.counts.items() if s.finished)


def summarize(
    store: TrialStoreBase, exp: Mapping[str, Any], workers: list[WorkerView]
) -> ExperimentSummary:
    """Counts, best trial, throughput and ETA of one experiment (times in server time); the
    documents that cannot be used (``problem`` set by ``trial_outcomes``) are only counted as
    ``malformed``."""
    exp_key = key_text(exp.get("_id"))
    every = store.trial_outcomes(exp_key)
    # rules.trial_problem(space=): another space's are not its trials
    space = typed(exp.get("space"), str)
    docs = [d for d in every if not d.get("problem") and (not space or d.get("space") == space)]
    counts = dict.fromkeys(TrialState, 0)
    for d in docs:
        if d.get("state") in TrialState._value2member_map_:
            counts[TrialState(d["state"])] += 1
    best = rules.best_trial(docs)
    pruned = sum(1 for d in docs if rules.pruned(d) is not None)
    paused = sum(1 for d in docs if rules.paused(d) is not None)
    promoted = sum(1 for d in docs if isinstance(d.get("promotions"), int) and d["promotions"])
    finished = sum(n for s, n in counts.items() if s.finished)
    running = exp.get("status") == ExperimentStatus.RUNNING.value
    starts = [d["book_time"] for d in docs if isinstance(d.get("book_time"), dt.datetime)]
    ends = [d["ended"] for d in docs if isinstance(d.get("ended"), dt.datetime)]
    rate = eta = None
    if starts and ends:
        # up to now while a trial is queued or running; once none is, over the search's span
        # (first start to last end): a finished search's rate must not keep falling with the
        # clock (nor one whose coordinator died and left its status "running")
        active = counts[TrialState.NEW] + counts[TrialState.RUNNING] > 0
        end = store.server_time() if active else max(ends)
        minutes = (end - min(starts)).total_seconds() / 60
        if minutes > 0:
            rate = len(ends) / minutes
    max_evals = typed(exp.get("max_evals"), int)
    if running and rate and max_evals:
        eta = max(0, max_evals - finished) / rate * 60
    mine = [w for w in workers if w.exp_key in (None, exp_key)]
    return ExperimentSummary(
        exp_key=exp_key,
        status=str(exp.get("status", "unknown")),
        space=space,
        max_evals=max_evals,
        counts=counts,
        best_tid=None if best is None else best["tid"],
        best_number=None
        if best is None
        else rules.trial_number(best["tid"], (d.get("tid") for d in every)),
        best_loss=None if best is None else rules.ok_loss(best),
        rate_per_min=rate,
        eta_s=eta,
        workers=mine,
        pruned=pruned,
        paused=paused,
        promoted=promoted,
        malformed=len(every) - len(docs),
    )


# -- exports and tables ------------------------------------------------------------------------


def jsonable(value: Any) -> Any:
    """Row values for JSON and CSV: dates as ISO 8601 UTC (``...Z``), NaN/inf as ``None``."""
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(dt.UTC).replace(tzinfo=None)
        return value.isoformat(timespec="milliseconds") + "Z"
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def render_export(rows: list[dict[str, Any]], fmt: str) -> str:
    """``rows`` as CSV (one column per field, empty where a trial lacks it), a JSON array or
    JSON lines."""
    if fmt not in EXPORT_FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}: choose {', '.join(EXPORT_FORMATS)}")
    names = columns(rows)
    clean = [{c: jsonable(r.get(c)) for c in names if c in r} for r in rows]
    if fmt == "json":
        return json.dumps(clean, indent=1) + "\n"
    if fmt == "jsonl":
        return "".join(json.dumps(r) + "\n" for r in clean)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=names, lineterminator="\n")
    writer.writeheader()
    writer.writerows(clean)
    return buf.getvalue()


def write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path``; failures become one clear :class:`ConfigError`."""
    try:
        path.write_text(text)
    except OSError as e:
        raise ConfigError(f"cannot write {path}: {e.strerror or e}") from e


#: Unix times between 2001 and 2286: a result field named ``*_time`` in this range is a date
_UNIX_TIMES = (1e9, 1e10)


def fmt_field(key: str, value: Any, width: int = 200) -> str:
    """A result field for a person: a Unix time (``eval_time``, a ``*_time`` number) as an ISO
    date (UTC), a ``*_s`` number of seconds as a duration (milliseconds below 1 s: a reused
    compile's 0.016 s is not ``0.0 s``), anything else as :func:`fmt_value`."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        if key.endswith("_time") and _UNIX_TIMES[0] <= value < _UNIX_TIMES[1]:
            moment = dt.datetime.fromtimestamp(value, dt.UTC).replace(tzinfo=None)
            return moment.isoformat(sep=" ", timespec="seconds") + " UTC"
        if key.endswith("_s") and 0 <= value < 0.9995:
            return f"{value * 1000:.0f} ms"
        if key.endswith("_s") and value >= 0:
            return fmt_duration(value)
    return fmt_value(value, width)


def fmt_value(value: Any, width: int = 24) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        text = f"{value:.6g}"
    elif isinstance(value, dt.datetime):
        text = value.strftime("%Y-%m-%d %H:%M:%S")
    else:
        text = str(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def format_table(
    rows: list[Mapping[str, Any]], names: list[str], headers: list[str] | None = None
) -> str:
    """A plain-text table: one header line, then one line per row, columns padded."""
    headers = headers or names
    cells = [[fmt_value(r.get(c)) for c in names] for r in rows]
    widths = [max([len(h)] + [len(line[i]) for line in cells]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    for line in cells:
        lines.append("  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip())
    return "\n".join(lines)


def fmt_duration(seconds: float | None) -> str:
    """``0.2 s``, ``42 s``, ``3 min 5 s``, ``2 h 10 min`` (tenths below 10 s, so a short trial
    never reads as ``0 s``), or ``-``."""
    if seconds is None:
        return "-"
    if seconds < 9.95:
        return f"{max(seconds, 0.0):.1f} s"
    seconds = int(round(seconds))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"
