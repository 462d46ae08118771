"""Rules that every part of hyperfleet applies the same way: the one place each is written.

They read plain documents (trial and experiment documents as stored, or rows built from them), so
the coordinator, the workers, the inspection commands and the store all agree — e.g. ``status``
and ``search`` always name the same best trial.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from coordinator import defaults
from coordinator.shown import shown
from coordinator.states import TrialState

T = TypeVar("T")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def ok_loss(doc: Mapping[str, Any]) -> float | None:
    """The loss of a successful trial: DONE (the integer state, not a look-alike such as ``"2"``),
    ``result.status == "ok"`` and a finite numeric ``result.loss``; ``None`` for anything else.
    A pruned trial (:func:`pruned`) has one too — its last reported value, which TPE learns
    from — but ranks after every full trial (:func:`ranked`) and is never the best
    (:func:`best_trial`)."""
    state = doc.get("state")
    if not _is_number(state) or state != TrialState.DONE:
        return None
    result = doc.get("result")
    if not isinstance(result, Mapping) or result.get("status") != "ok":
        return None
    loss = result.get("loss")
    if not _is_number(loss) or not math.isfinite(loss):
        return None
    return float(loss)


def is_ok_trial(doc: Mapping[str, Any]) -> bool:
    """Whether ``doc`` is a successful trial (see :func:`ok_loss`)."""
    return ok_loss(doc) is not None


def pruned(doc: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The ``result.pruned`` record (epoch, rule, metric, value, threshold) of a trial that an
    early-stopping rule stopped; ``None`` for any other trial."""
    result = doc.get("result")
    record = result.get("pruned") if isinstance(result, Mapping) else None
    return record if isinstance(record, Mapping) else None


def paused(doc: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The ``result.pruned`` record of a DONE trial paused at a rung (``--promote``: it may
    still be promoted); ``None`` for any other trial."""
    record = pruned(doc)
    if doc.get("state") == int(TrialState.DONE) and record and record.get("paused") is True:
        return record
    return None


def seconds(value: Any) -> float | None:
    """``value`` as seconds if a finite number >= 0, else ``None`` (a document read back may
    hold junk)."""
    return float(value) if _is_number(value) and math.isfinite(value) and value >= 0 else None


#: the longest an attempt's ``ran_s`` may say it ran (longer: junk dates, not a run)
MAX_RAN_S = 366 * 86400.0


def ran_seconds(value: Any) -> float | None:
    """An attempt's ``ran_s`` if it is seconds a run can have (0 to :data:`MAX_RAN_S`), else
    ``None``."""
    ran = seconds(value)
    return ran if ran is not None and ran <= MAX_RAN_S else None


def earlier_segments_s(doc: Mapping[str, Any]) -> float | None:
    """The seconds a trial promoted from rungs (``--promote``) ran before the segment now
    ending: the ``duration_s`` of each ``paused`` entry of its attempt history, summed (junk
    counts nothing); ``None`` for a trial never paused."""
    history = doc.get("attempt_history")
    entries = [
        entry
        for entry in (history if isinstance(history, list) else [])
        if isinstance(entry, Mapping) and entry.get("outcome") == "paused"
    ]
    if not entries:
        return None
    return round(sum(seconds(entry.get("duration_s")) or 0.0 for entry in entries), 6)


def ranked(items: Iterable[T], doc: Callable[[T], Mapping[str, Any]] | None = None) -> list[T]:
    """The ranking rule, the one order every reader shows trials in (``best``, ``search``,
    ``top``, ``export``'s ``rank``, the plots and the dashboard's charts): the successful
    trials of ``items`` (:func:`ok_loss`), best first — full trials by loss, then tid
    (:func:`tid_order`); after all of them the pruned ones (:func:`pruned`: their loss is that of
    an unfinished training), by the same key. Failed, unfinished and malformed trials are left
    out: a document whose ``problem`` is set (:func:`trial_problem`, as the store's lean reads
    record it) is malformed; documents read whole should be checked by the caller.

    ``doc`` gives the trial document of an item (``items`` are documents when it is ``None``),
    so callers rank their own wrappers (rows, cache entries) without copying them.
    """
    as_doc: Callable[[Any], Mapping[str, Any]] = doc or (lambda d: d)
    keyed = [(rank_key(as_doc(item)), item) for item in items]
    return [item for _, item in sorted(((k, i) for k, i in keyed if k is not None), key=_first)]


def _first(pair: tuple[Any, Any]) -> Any:
    return pair[0]


def rank_key(doc: Mapping[str, Any]) -> tuple[bool, float, tuple[int, Any]] | None:
    """The sort key of :func:`ranked` (pruned?, loss, tid), ``None`` for a trial it leaves out."""
    loss = ok_loss(doc)
    if loss is None or doc.get("problem"):
        return None
    return (pruned(doc) is not None, loss, tid_order(doc.get("tid")))


def best_trial(docs: Iterable[Mapping[str, Any]]) -> Any:
    """The best trial of ``docs``: the first of :func:`ranked` unless that is pruned (a pruned
    trial never is the best: its loss is that of an unfinished training), else ``None``."""
    first = next(iter(ranked(docs)), None)
    return first if first is not None and pruned(first) is None else None


def best_so_far(
    items: Iterable[T],
    doc: Callable[[T], Mapping[str, Any]] | None = None,
    when: Callable[[Mapping[str, Any]], Any] | None = None,
) -> list[tuple[T, float, float]]:
    """The running best over time: ``(item, its loss, best loss up to it)`` for each trial that
    can be the best (:func:`best_trial`'s: successful, not pruned, not failed, not malformed)
    in the order of ``when(doc)`` (default: the ``ended`` date; items without one are left out).
    So the line of every "best so far" chart starts at, and ends on, a trial ``best`` would name.
    """
    as_doc: Callable[[Any], Mapping[str, Any]] = doc or (lambda d: d)
    moment = when or ended
    counted = []
    for item in items:
        d = as_doc(item)
        key = rank_key(d)
        at = moment(d)
        if key is not None and not key[0] and at is not None:
            counted.append((at, key[2], key[1], item))
    counted.sort(key=lambda c: (c[0], c[1]))
    series, best = [], math.inf
    for _, _, loss, item in counted:
        best = min(best, loss)
        series.append((item, loss, best))
    return series


def ended(doc: Mapping[str, Any]) -> dt.datetime | None:
    """When a trial ended (its ``ended`` date), ``None`` for anything but a date."""
    value = doc.get("ended")
    return value if isinstance(value, dt.datetime) else None


def no_success_reason(docs: Iterable[Mapping[str, Any]]) -> str:
    """Why none of the trial documents ``docs`` is a best trial (:func:`best_trial`), in one
    clause that says what happened (all pruned, all failed, none ran) and points at the
    failures only if there are."""
    usable = [d for d in docs if trial_problem(d) is None]
    pruned_n = sum(1 for d in usable if pruned(d) is not None)
    errors = sum(1 for d in usable if d.get("state") == TrialState.ERROR)
    cancelled = sum(1 for d in usable if d.get("state") == TrialState.CANCEL)
    pending = sum(1 for d in usable if d.get("state") in (TrialState.NEW, TrialState.RUNNING))
    parts = [
        f"{n} {what}"
        for n, what in (
            (pruned_n, "pruned by the early-stopping rule (a pruned trial is never the best)"),
            (errors, "failed"),
            (cancelled, "cancelled"),
            (pending, "still queued or running"),
        )
        if n
    ]
    others = len(usable) - pruned_n - errors - cancelled - pending
    if others:
        parts.append(f"{others} finished without an ok status and a finite loss")
    if not parts:
        return "no trial ran"
    text = "of its trials " + ", ".join(parts)
    if errors:
        text += "; see the errors with the mongo shell: "
        text += "db.jobs.find({state: 3}, {tid: 1, error: 1})"
    return text


def tid_order(tid: Any) -> tuple[int, Any]:
    """Sort key for trial ids: numbers first, then anything else by ``str`` (hyperopt allows
    any tid, e.g. ``"a"``), ``None`` last; mixed types never raise."""
    if tid is None:
        return (2, "")
    return (0, tid) if _is_number(tid) else (1, str(tid))


def trial_number(tid: Any, tids: Iterable[Any]) -> int:
    """A trial's number within its experiment: its 1-based place among the experiment's
    ``tids`` in tid order. The tid counter is shared by every experiment of a database (a
    12-trial search's best can be tid 43); this number is what a person counts ("trial 12").
    It never changes once given: later trials get larger tids."""
    key = tid_order(tid)
    return 1 + sum(1 for t in tids if tid_order(t) < key)


def cancel_requested(exp: Mapping[str, Any] | None) -> bool:
    """Whether the experiment document ``exp`` asks every process to stop its search."""
    return bool(exp) and exp.get("cancel_requested") is True


def max_attempts(exp: Mapping[str, Any] | None, default: int = defaults.MAX_ATTEMPTS) -> int:
    """How many lost or crashed attempts a trial of experiment ``exp`` gets before it is ERROR
    (``default`` where ``exp`` records no valid ``max_attempts``)."""
    value = (exp or {}).get("max_attempts")
    if _is_number(value) and value >= 1:
        return int(value)
    return default


#: the fields :func:`trial_problem` reads: a read that projects must include them all
TRIAL_FIELDS = (
    "_id",
    "exp_key",
    "tid",
    "state",
    "result",
    "misc",
    "owner",
    "attempt",
    "attempts",
    "version",
    "space",
    "error.type",
    "error.message",
)
#: ``error.type`` of a document marked ERROR because it could not be used (it stays unusable)
MALFORMED = "MalformedTrial"
_COUNTERS = ("attempt", "attempts", "version")


def is_int(value: Any) -> bool:
    """Whether ``value`` is an integer (a bool is not one, as documents read it)."""
    return isinstance(value, int) and not isinstance(value, bool)


def trial_problem(
    doc: Any, labels: Iterable[str] | None = None, space: str | None = None
) -> str | None:
    """Why ``doc`` cannot be used as a trial document (one line), or ``None`` when it can.

    The one rule for every reader: workers never reserve such a document (one of hyperfleet's
    own is marked ERROR with this reason, anything else is left alone), the coordinator's view of
    a search skips it, inspection shows it as "malformed". Usable means hyperopt's job protocol
    with the types hyperopt and hyperfleet rely on: an ``_id`` that is no document or array,
    an integer ``state`` that names a state,
    a ``tid`` (an integer, or a string as hyperopt allows), a ``misc`` with that ``tid`` and
    ``idxs``/``vals`` of equal lists, a ``result`` dict with a string ``status`` (and a numeric
    ``loss`` where it has one, always with ``"ok"``), a string or missing ``exp_key``,
    ``owner`` and ``space``, non-negative integer counters, a non-negative integer ``tid``
    (the counter never issues a negative one) and only finite scalars in ``misc.vals``.
    ``spec`` may hold anything.

    ``labels`` (a search's hyperparameter labels) adds what a search's algorithm needs: an
    integer ``tid`` and ``misc.idxs``/``misc.vals`` that cover exactly these labels, each
    ``[]`` or ``[tid]`` with one numeric value. ``space`` (an experiment's named search space)
    refuses documents of any other space. A document once marked ERROR for being unusable
    (``error.type`` :data:`MALFORMED`) stays unusable.
    """
    if not isinstance(doc, Mapping):
        return f"not a document but {type(doc).__name__}"
    error = doc.get("error")
    if isinstance(error, Mapping) and error.get("type") == MALFORMED:
        return str(error.get("message") or "marked unusable")
    if isinstance(doc.get("_id"), Mapping | list):  # not a key any reader can index by
        return f"_id is a {type(doc.get('_id')).__name__}, not an ObjectId"
    exp_key = doc.get("exp_key")
    if exp_key is not None and not isinstance(exp_key, str):
        return f"exp_key is {type(exp_key).__name__}, not a string"
    tid = doc.get("tid")
    if tid is None:
        return "no tid"
    if not (is_int(tid) or isinstance(tid, str)):
        return f"tid is {type(tid).__name__}, not an integer"
    if is_int(tid) and tid < 0:
        return f"tid {tid} is negative (the tid counter never issues one)"
    state = doc.get("state")
    if not is_int(state) or state not in TrialState._value2member_map_:
        return f"state {state!r} is not one of the integer states 0-4"
    for name in ("owner", "space"):
        value = doc.get(name)
        if value is not None and not (isinstance(value, str) and value):
            return f"{name} {shown(value)} is not a non-empty string"
    if "space" in doc and doc["space"] is None:
        return "space is null"
    for name in ("epochs", "attempt_history"):  # lists the store appends to
        if doc.get(name) is not None and not isinstance(doc[name], list):
            return f"{name} is {type(doc[name]).__name__}, not a list"
    if state == TrialState.NEW and doc.get("owner") is not None:
        return "queued (NEW) but owned"
    for name in _COUNTERS:
        value = doc.get(name, 0)
        if value is not None and not (is_int(value) and value >= 0):
            return f"{name} {shown(value)} is not a non-negative integer"
    problem = _result_problem(doc.get("result"))
    if problem is not None:
        return problem
    problem = _misc_problem(doc.get("misc"), tid)
    if problem is None and space is not None and doc.get("space") != space:
        problem = f"space {shown(doc.get('space'))} is not the experiment's ({space!r})"
    if problem is not None or labels is None:
        return problem
    return _search_problem(doc["misc"], tid, set(labels))


def _result_problem(result: Any) -> str | None:
    if not isinstance(result, Mapping):
        return "no result dict" if result is None else "result is not a dict"
    status = result.get("status")
    if not isinstance(status, str):
        return f"result.status {shown(status)} is not a string"
    loss = result.get("loss")
    if loss is not None and not _is_number(loss):
        return f"result.loss {shown(loss)} is not a number"
    if status == "ok" and loss is None:
        return "result.status is ok without a loss"
    return None


def _misc_problem(misc: Any, tid: Any) -> str | None:
    if not isinstance(misc, Mapping):
        return "no misc" if misc is None else "misc is not a dict"
    same_kind = is_int(misc.get("tid")) == is_int(tid)  # 1 and 1.0 or True are not the tid
    if "tid" not in misc or misc["tid"] != tid or not same_kind:
        return f"misc.tid {shown(misc.get('tid'))} is not the tid {shown(tid)}"
    idxs, vals = misc.get("idxs"), misc.get("vals")
    if not isinstance(idxs, Mapping) or not isinstance(vals, Mapping):
        return "misc.idxs or misc.vals is not a dict"
    if set(idxs) != set(vals):
        return "misc.idxs and misc.vals name different parameters"
    for label, ids in idxs.items():
        values = vals[label]
        if not isinstance(ids, list) or not isinstance(values, list) or len(ids) != len(values):
            return f"misc.idxs/vals of {shown(label)} are not lists of one length"
        for value in values:
            if isinstance(value, (list, tuple, Mapping)):
                return f"misc.vals of {shown(label)} holds a {type(value).__name__}"
            if _is_number(value) and not math.isfinite(value):
                return f"misc.vals of {shown(label)} holds {value!r}, not a finite number"
    return None


def _search_problem(misc: Mapping[str, Any], tid: Any, labels: set[str]) -> str | None:
    if not is_int(tid):
        return f"tid {shown(tid)} is not an integer"
    if set(misc["idxs"]) != labels:
        return "its parameters are not this search's"
    for label, ids in misc["idxs"].items():
        if ids not in ([], [tid]):
            return f"misc.idxs of {shown(label)} is neither [] nor [tid]"
        if not all(_is_number(v) for v in misc["vals"][label]):
            return f"misc.vals of {shown(label)} is not numeric"
    from_tid = misc.get("from_tid")
    if from_tid is not None and not is_int(from_tid):
        return "misc.from_tid is not an integer"
    return None
