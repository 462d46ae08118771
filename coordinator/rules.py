"""Rules that every part of hyperfleet applies the same way: the one place each is written.

They read plain documents (trial and experiment documents as stored, or rows built from them), so
the coordinator, the workers, the inspection commands and the store all agree — e.g. ``status``
and ``search`` always name the same best trial.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from coordinator import defaults
from coordinator.states import TrialState


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def ok_loss(doc: Mapping[str, Any]) -> float | None:
    """The loss of a successful trial: DONE (the integer state, not a look-alike such as ``"2"``),
    ``result.status == "ok"`` and a finite numeric ``result.loss``; ``None`` for anything else.
    A pruned trial (:func:`pruned`) has one too — its last reported value, which TPE learns
    from — but is never the best (:func:`best_trial`)."""
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


def best_trial(docs: Iterable[Mapping[str, Any]]) -> Any:
    """The best successful trial of ``docs`` (lowest loss, then lowest tid), or ``None``.
    Pruned trials never are: their loss is that of an unfinished training."""
    ok = [d for d in docs if is_ok_trial(d) and pruned(d) is None]
    if not ok:
        return None
    return min(ok, key=lambda d: (ok_loss(d), tid_order(d.get("tid"))))


def tid_order(tid: Any) -> tuple[int, Any]:
    """Sort key for trial ids: numbers first, then anything else by ``str`` (hyperopt allows
    any tid, e.g. ``"a"``), ``None`` last; mixed types never raise."""
    if tid is None:
        return (2, "")
    return (0, tid) if _is_number(tid) else (1, str(tid))


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
