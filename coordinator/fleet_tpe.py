"""TPE that knows it runs on a fleet: a thin layer over ``hyperopt.tpe.suggest``.

hyperopt's TPE (0.3.0) was written for one evaluation at a time. On a fleet of workers it

* counts every stored trial, queued and running ones included, towards ``n_startup_jobs``, so with
  many workers it leaves random search after 20 *queued* trials, before one result exists;
* gives every pending trial an infinite loss, and sizes its "good" group (``gamma * sqrt(N)``) on
  all trials: while results are few, pending trials (of infinite loss, in arbitrary order) end up
  in the good group and the model proposes points next to them;
* returns one trial per call whatever ``len(new_ids)`` is.

:func:`suggest` keeps hyperopt's model and sampler and only changes what it is shown:

1. **Start-up on results.** Random search (``hyperopt.rand.suggest``, as stock TPE) until
   ``n_startup_jobs`` trials have a result; queued and running trials do not count, and trials
   cancelled before they ran are not shown at all.
2. **Pending trials on purpose** (a *constant liar*): each pending trial is shown with the loss
   the ``liar`` rule gives it, computed from the finite losses of finished trials:
   ``worst`` = their maximum, ``mean`` = their mean, ``best`` = their minimum, ``none`` = pending
   trials are left out. A finished trial without a loss (a failure) keeps hyperopt's infinite loss.
3. **The good group** is sized as hyperopt sizes it, on all trials shown, pending ones included
   (``ceil(gamma * sqrt(n_shown))``): at 128 workers this beat sizing it on results only
   (``split_on_results=True``) in bench/fleet_sim.py (docs/algorithms.md).
4. **Batches**: with ``len(new_ids) > 1`` one trial is suggested per id, and each later one sees
   the earlier ones as pending.

Everything else (the Parzen estimators, EI over ``n_EI_candidates``, linear forgetting, random
start-up) is hyperopt's own code. With no pending trial and one id, :func:`suggest` returns
exactly what ``hyperopt.tpe.suggest`` returns (same seed, same trials). The same seed and the same
trials give the same suggestions.

Use it as fmin's ``algo``, options bound with :func:`functools.partial`::

    algo = functools.partial(fleet_tpe.suggest, liar="worst")
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from hyperopt import base, rand, tpe

from coordinator import defaults

LIARS = defaults.LIARS
#: chosen by bench/fleet_sim.py (see docs/algorithms.md)
DEFAULT_LIAR = defaults.LIAR
N_STARTUP_JOBS = tpe._default_n_startup_jobs
PENDING_STATES = frozenset({base.JOB_STATE_NEW, base.JOB_STATE_RUNNING})


def is_pending(doc: Mapping[str, Any]) -> bool:
    """A trial without a result yet: queued (NEW) or being evaluated (RUNNING)."""
    return doc.get("state") in PENDING_STATES


def has_result(doc: Mapping[str, Any]) -> bool:
    """A trial that ran: neither pending nor cancelled before it ran (DONE, ERROR)."""
    return doc.get("state") not in PENDING_STATES and doc.get("state") != base.JOB_STATE_CANCEL


def _group_tid(doc: Mapping[str, Any]) -> int:
    """The trial id hyperopt's TPE groups a document under (``misc.from_tid`` when present)."""
    return int(doc["misc"].get("from_tid", doc["tid"]))


def _loss(doc: Mapping[str, Any]) -> float:
    loss = doc["result"].get("loss")
    if loss is None:
        return math.inf
    loss = float(loss)
    return math.inf if math.isnan(loss) else loss


def _finite_vals(doc: Mapping[str, Any]) -> bool:
    """Whether every value of ``misc.vals`` is a finite number: TPE's Parzen estimators assert
    on anything else, so a document that is not (the coordinator's view skips it already,
    :func:`coordinator.rules.trial_problem`) is never shown to TPE."""
    try:
        return all(
            math.isfinite(float(v)) for values in doc["misc"]["vals"].values() for v in values
        )
    except (KeyError, TypeError, ValueError, AttributeError):
        return False


def lie(losses: Iterable[float], liar: str) -> float | None:
    """The loss a pending trial is shown with under ``liar``; ``None`` for ``liar="none"``.

    ``losses`` are those of finished trials; non-finite ones (failures) are ignored. With no
    finite loss every rule but ``none`` gives ``inf`` (what stock TPE gives pending trials).
    """
    if liar not in LIARS:
        raise ValueError(f"unknown liar {liar!r}: choose one of {', '.join(LIARS)}")
    if liar == "none":
        return None
    finite = [x for x in losses if math.isfinite(x)]
    if not finite:
        return math.inf
    if liar == "worst":
        return max(finite)
    if liar == "best":
        return min(finite)
    return float(np.mean(finite))


def sub_seed(seed: int, index: int) -> int:
    """The seed of the ``index``-th suggestion of a batch: ``seed`` itself for the first one."""
    if index == 0:
        return int(seed)
    return int(np.random.SeedSequence([int(seed), index]).generate_state(1)[0] >> 1)


class _TrialsView:
    """What ``tpe.suggest`` reads of a Trials object: ``.trials``, ``len()`` and
    ``new_trial_docs`` (delegated, so the new documents are the real Trials' own kind)."""

    def __init__(self, docs: list[dict[str, Any]], trials: Any) -> None:
        self.trials = docs
        self._real = trials

    def __len__(self) -> int:
        return len(self.trials)

    def new_trial_docs(self, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        return self._real.new_trial_docs(*args, **kwargs)


def _shown_as(doc: Mapping[str, Any], loss: float) -> dict[str, Any]:
    """A shallow copy of a pending trial with the liar's loss (the stored trial is untouched)."""
    return {**doc, "result": {"status": base.STATUS_OK, "loss": loss}}


def suggest(
    new_ids: Sequence[int],
    domain: base.Domain,
    trials: Any,
    seed: int,
    *,
    liar: str = DEFAULT_LIAR,
    n_startup_jobs: int = N_STARTUP_JOBS,
    gamma: float = tpe._default_gamma,
    split_on_results: bool = False,
    min_results: int | None = None,
    **tpe_kwargs: Any,
) -> list[dict[str, Any]]:
    """Suggest one trial per id in ``new_ids``, with the signature fmin expects of ``algo``.

    ``tpe_kwargs`` (``prior_weight``, ``n_EI_candidates``, ``verbose``) go to
    ``hyperopt.tpe.suggest``. ``split_on_results=True`` sizes the good group on results only,
    as if no trial were pending (``gamma`` scaled; kept for comparison in bench/).
    ``min_results``: end the random start-up as soon as results and pending trials together reach
    ``n_startup_jobs`` and at least ``min_results`` trials have a result (``None``: only
    ``n_startup_jobs`` results end it).
    Raises ``ValueError`` for an unknown ``liar``.
    """
    if liar not in LIARS:
        raise ValueError(f"unknown liar {liar!r}: choose one of {', '.join(LIARS)}")
    usable = [doc for doc in trials.trials if _finite_vals(doc)]
    finished = [doc for doc in usable if has_result(doc)]
    n_results = len({_group_tid(doc) for doc in finished})
    pending = sorted((doc for doc in usable if is_pending(doc)), key=lambda d: d["tid"])
    startup_done = n_results >= n_startup_jobs
    if min_results is not None and not startup_done:
        startup_done = n_results >= min_results and n_results + len(pending) >= n_startup_jobs
    if not startup_done:
        return rand.suggest(list(new_ids), domain, trials, seed)

    shown_loss = lie((_loss(doc) for doc in finished), liar)
    suggested: list[dict[str, Any]] = []
    for index, new_id in enumerate(new_ids):
        docs = list(finished)
        if shown_loss is not None:
            docs += [_shown_as(doc, shown_loss) for doc in (*pending, *suggested)]
        n_shown = len({_group_tid(doc) for doc in docs})
        # hyperopt keeps ceil(gamma * sqrt(n_shown)) trials in the good group: scale gamma so
        # that it keeps ceil(gamma * sqrt(n_results)), as if no trial were pending
        # (the factor just below 1 keeps ceil() from rounding up on a last-bit error)
        shown_gamma = gamma
        if split_on_results and n_shown > n_results:
            shown_gamma = gamma * math.sqrt(n_results / n_shown) * (1 - 1e-12)
        suggested += tpe.suggest(
            [new_id],
            domain,
            _TrialsView(docs, trials),
            sub_seed(seed, index),
            n_startup_jobs=0,
            gamma=shown_gamma,
            **tpe_kwargs,
        )
    return suggested
