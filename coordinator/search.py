"""The coordinator of ``hyperfleet search`` and ``hyperfleet local``: the experiment document,
hyperfleet's search loop over it, and the outcome.

The loop (:mod:`coordinator.loop`) is the same one plain ``hyperopt.fmin`` runs on
:class:`~coordinator.trials.HyperfleetTrials`: every ``tick_s`` the housekeeping
(:class:`~coordinator.housekeeping.Housekeeping`) reaps trials of dead workers, quarantines
unusable documents of its own, notices cancellation, sizes the queue to the live workers and
adapts the poll; the search therefore never hangs on a dead worker. A seeded rerun continues its
random stream (:func:`~coordinator.housekeeping.continue_stream`) instead of repeating earlier
suggestions.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from hyperopt import anneal, base, rand, tpe

from coordinator import defaults, fleet_tpe, rules
from coordinator.errors import ConfigError, ExperimentMismatch, HyperfleetError, counted
from coordinator.experiment_lease import CoordinatorLease, Holder, check_holder
from coordinator.housekeeping import (
    POLL_S,
    TICK_S,
    Housekeeping,
    continue_stream,
    drop_unfinished_uploads,
)
from coordinator.loop import OnTick, SearchLoop
from coordinator.progress import SearchProgress
from coordinator.pruning import PruningConfig
from coordinator.shown import shown
from coordinator.states import ExperimentStatus, TrialState
from coordinator.store import TrialStoreBase, to_bson, utcnow
from coordinator.trials import HyperfleetTrials, one_seed_per_id
from search_spaces import SearchSpace

logger = logging.getLogger(__name__)

ALGOS = defaults.ALGOS


def algo_function(name: str, liar: str = defaults.LIAR) -> Callable[..., Any]:
    """hyperopt's ``algo`` callable for ``--algo name`` (``liar``: the fleet-aware TPE's rule)."""
    if name == "tpe":
        if liar not in defaults.LIARS:
            raise ConfigError(f"unknown --liar {liar!r}: choose one of {', '.join(defaults.LIARS)}")
        return functools.partial(fleet_tpe.suggest, liar=liar)
    if name == "tpe-hyperopt":
        return tpe.suggest
    if name == "rand":
        return rand.suggest
    if name == "anneal":
        return _one_id_at_a_time(anneal.suggest)
    if name == "atpe":
        missing = [m for m in ("lightgbm", "sklearn") if importlib.util.find_spec(m) is None]
        if missing:
            raise ConfigError(
                f"--algo atpe needs extra packages ({', '.join(missing)} missing): "
                "pip install lightgbm scikit-learn"
            )
        from hyperopt import atpe

        return _one_id_at_a_time(atpe.suggest)
    raise ConfigError(f"unknown --algo {name!r}: choose one of {', '.join(ALGOS)}")


def _one_id_at_a_time(suggest: Callable[..., Any]) -> Callable[..., Any]:
    """hyperopt's anneal and atpe accept one new id per call; a caller may ask for several
    (plain ``fmin`` with ``max_queue_len`` > 1). Ask once per id, each with its own seed from
    the call's. (``hyperfleet search`` asks one id at a time anyway: see ``one_seed_per_id``.)"""

    @functools.wraps(suggest)
    def each(new_ids: list[Any], domain: Any, trials: Any, seed: int, *a: Any, **kw: Any) -> Any:
        docs: list[Any] = []
        for i, new_id in enumerate(new_ids):
            docs.extend(suggest([new_id], domain, trials, (seed + i) % 2**31, *a, **kw))
        return docs

    return each


def _evaluated_by_workers(params: Any) -> Any:
    """The Domain's function: the coordinator never evaluates, workers resolve the space by
    name. Raising here makes a mis-wired synchronous run fail loudly."""
    raise RuntimeError("hyperfleet trials are evaluated by `hyperfleet worker` processes")


@dataclass
class SearchConfig:
    space: SearchSpace
    settings: dict[str, Any]
    exp_key: str
    max_evals: int
    algo: str = "tpe"
    liar: str = defaults.LIAR  #: ``--liar``: pending trials' loss for the fleet-aware TPE
    queue_len: int | None = None  #: None: sized to the live workers (housekeeping)
    seed: int | None = None
    timeout_s: float | None = None
    loss_threshold: float | None = None
    max_attempts: int = defaults.MAX_ATTEMPTS
    force: bool = False
    poll_s: float = POLL_S
    tick_s: float = TICK_S
    spaces_source: str | None = None
    progress: bool = False  #: a tqdm bar; otherwise a log line every ``progress_every`` trials
    progress_every: int | None = None  #: None: every tenth of max_evals
    pruning: PruningConfig | None = None  #: ``--prune``: the early-stopping rule, if any
    #: seconds the coordinator's lease on the experiment lasts without a renewal
    coordinator_lease_s: float = defaults.COORDINATOR_LEASE_S


@dataclass
class SearchOutcome:
    exp_key: str
    counts: dict[TrialState, int]
    best: dict[str, Any] | None
    seconds: float
    cancelled: bool = False
    #: when no trial succeeded: what happened instead (see :func:`rules.no_success_reason`)
    no_success: str | None = None
    #: the best trial's number within the experiment (:func:`rules.trial_number`)
    best_number: int | None = None
    #: why the queueing stopped before ``max_evals`` (a timeout, a loss threshold, an
    #: early-stop function), in words; None: it did not, or a cancel
    stopped_early: str | None = None

    @property
    def best_loss(self) -> float | None:
        return None if self.best is None else self.best["result"]["loss"]

    @property
    def best_params(self) -> dict[str, Any] | None:
        return None if self.best is None else self.best.get("params")


#: how often starting an experiment re-reads it when another process wrote in between
_START_TRIES = 5


def prepare_experiment(
    store: TrialStoreBase, config: SearchConfig, holder: Holder | None = None
) -> dict[str, Any]:
    """Create the experiment document, or check that a rerun asks for the same search and mark
    it RUNNING again, with ``holder``'s coordinator lease (default: this process's).

    Another coordinator's live lease is refused (:class:`~coordinator.errors.ExperimentBusy`,
    naming its host and pid); an expired one, or one whose pid is gone from this host, is taken
    over (:func:`~coordinator.experiment_lease.check_holder`). The write is conditional on the
    document's ``version`` as read, which every lease renewal increments: if anything wrote in
    between, the document is read and checked again. A ``cancel`` that landed in between is
    kept (the coordinator then stops at its first tick), never overwritten.
    """
    holder = holder or Holder.this_process(config.coordinator_lease_s)
    if config.max_evals < 1:
        raise ConfigError(f"--max-evals must be at least 1, got {config.max_evals}")
    algo_function(config.algo, config.liar)
    fingerprint = config.space.fingerprint(config.settings)
    wanted = {
        "space": config.space.name,
        "settings": to_bson(config.settings),
        "algo": config.algo,
        "liar": config.liar if config.algo == "tpe" else None,
        "fingerprint": fingerprint,
        "pruning": None if config.pruning is None else config.pruning.to_doc(),
    }
    for _ in range(_START_TRIES):
        existing = store.get_experiment(config.exp_key)
        now = store.server_time()
        check_holder(existing, config.exp_key, now, holder)
        doc = _started_doc(existing, wanted, config)
        doc["coordinator"] = holder.stamp(now)
        if existing is None:
            if store.create_experiment(doc):
                return doc
        elif store.replace_experiment(doc, version=existing.get("version")):
            return doc
        now = store.get_experiment(config.exp_key)
        if now is not None and _cancelled_since(existing, now):
            logger.warning("search %r was cancelled while it started", config.exp_key)
            return now
    raise HyperfleetError(
        f"exp key {config.exp_key!r} kept changing while this search started; is another "
        "coordinator starting it? Check with `hyperfleet status`, then rerun"
    )


def _cancelled_since(before: dict[str, Any] | None, now: dict[str, Any]) -> bool:
    """Whether a cancel was requested after ``before`` was read (each one stamps
    ``cancelled_at`` anew)."""
    return rules.cancel_requested(now) and now.get("cancelled_at") != (before or {}).get(
        "cancelled_at"
    )


def _as_stored_today(existing: dict[str, Any]) -> dict[str, Any]:
    """``existing`` as this version would store it: experiments stored before the fleet-aware TPE
    say ``algo: "tpe"`` with no ``liar`` and ran hyperopt's own TPE (``--algo tpe-hyperopt``);
    a rule stored before a field of :class:`PruningConfig` existed (``promote_wait``) ran as
    that field's default."""
    if existing.get("algo") == "tpe" and "liar" not in existing:
        existing = {**existing, "algo": "tpe-hyperopt", "liar": None}
    pruning = existing.get("pruning")
    if isinstance(pruning, dict) and pruning.get("rule") not in (None, "none"):
        existing = {**existing, "pruning": {**_PRUNING_DEFAULTS, **pruning}}
    return existing


#: the fields of :class:`PruningConfig` that have a default, with it
_PRUNING_DEFAULTS = {
    f.name: f.default
    for f in dataclasses.fields(PruningConfig)
    if f.default is not dataclasses.MISSING
}


#: the most differing fields a refused rerun names (a hostile document may hold thousands)
_DIFFERENCES_SHOWN = 8


def _differences(stored: dict[str, Any], wanted: dict[str, Any]) -> tuple[str, str]:
    """What ``stored`` (from the database) and ``wanted`` hold differently, as two texts: a
    field of a document field (settings, pruning) by its own name (``settings.epochs=3``),
    so a long document does not hide what differs; ``("", "")`` when nothing does."""
    pairs: list[tuple[str, Any, Any]] = []
    for key, value in wanted.items():
        old = stored.get(key)
        if old == value:
            continue
        if isinstance(old, dict) and isinstance(value, dict):
            for sub in sorted({*old, *value}, key=str):
                if old.get(sub, _MISSING) != value.get(sub, _MISSING):
                    pairs.append(
                        (
                            f"{key}.{shown(str(sub), 60, bare=True)}",
                            old.get(sub, _MISSING),
                            value.get(sub, _MISSING),
                        )
                    )
        else:
            pairs.append((key, old, value))
    more = len(pairs) - _DIFFERENCES_SHOWN
    pairs = pairs[:_DIFFERENCES_SHOWN]
    was = ", ".join(f"{name}={_shown_value(old)}" for name, old, _ in pairs)
    now = ", ".join(f"{name}={_shown_value(new)}" for name, _, new in pairs)
    if more > 0:
        was, now = f"{was} (and {more} more)", f"{now} (and {more} more)"
    return was, now


_MISSING = object()


def _shown_value(value: Any) -> str:
    return "(none)" if value is _MISSING else shown(value)


def _started_doc(
    existing: dict[str, Any] | None, wanted: dict[str, Any], config: SearchConfig
) -> dict[str, Any]:
    """The experiment document of a search starting (or resuming) with ``config``; raises
    :class:`ExperimentMismatch` if ``existing`` holds another search (unless ``force``)."""
    if existing is not None:
        before = _as_stored_today(existing)
        was, now = _differences(before, wanted)
        if was:
            if not config.force:
                raise ExperimentMismatch(
                    f"exp key {config.exp_key!r} already holds a search with {was}; this run "
                    f"asks for {now}. Use another --exp-key, or --force to continue it anyway"
                )
            logger.warning(
                "--force: continuing %r, whose stored trials were made with %s, as a search "
                "with %s; its best trial may come from the old one",
                config.exp_key,
                was,
                now,
            )
    doc = {
        **(existing or {}),
        "_id": config.exp_key,
        **wanted,
        "max_evals": config.max_evals,
        "max_attempts": config.max_attempts,
        "seed": config.seed,
        "spaces_source": config.spaces_source,
        "status": ExperimentStatus.RUNNING.value,
        "cancel_requested": False,
    }
    doc.pop("version", None)
    doc.pop("error", None)  # a crash of an earlier run; this one starts afresh
    doc.setdefault("created", utcnow())
    doc["resumed"] = existing is not None
    return doc


class Coordinator:
    """Runs one search to completion (or cancellation/timeout) and records its outcome.

    :meth:`run` prepares the experiment document, then runs the search loop
    (:class:`~coordinator.loop.SearchLoop`: housekeeping, read what changed, enqueue, wait).
    ``on_tick`` is called after every housekeeping tick with the trials and their counts (e.g.
    ``local`` supervises its worker processes there).
    """

    def __init__(self, store: TrialStoreBase, config: SearchConfig) -> None:
        self.store = store
        self.config = config
        self.on_tick: OnTick | None = None
        self.housekeeping = Housekeeping(
            store,
            config.exp_key,
            poll_s=config.poll_s,
            queue_len=config.queue_len,
            max_attempts=config.max_attempts,
        )
        self._progress: SearchProgress | None = None
        self._prepared = False
        #: this coordinator's lease on the experiment (one coordinator per experiment)
        self.holder = Holder.this_process(config.coordinator_lease_s)

    def prepare(self) -> None:
        """Create the experiment document, or check that a rerun asks for the same search
        (:func:`prepare_experiment`), and take the coordinator lease on it; :meth:`run` does it
        unless it was done. ``local`` calls it before it starts any worker, so a mismatch or
        another live coordinator is refused before anything runs."""
        prepare_experiment(self.store, self.config, self.holder)
        self._prepared = True

    def run(self) -> SearchOutcome:
        config = self.config
        started = time.monotonic()
        if not self._prepared:
            self.prepare()
        trials = HyperfleetTrials(self.store, exp_key=config.exp_key, space_name=config.space.name)
        domain = base.Domain(_evaluated_by_workers, config.space.hyperopt_space(config.settings))
        trials.use_domain(domain)
        trials.refresh()
        seed = config.seed if config.seed is not None else int.from_bytes(os.urandom(4), "little")
        stream = continue_stream(np.random.default_rng(seed), trials.stored)
        already = len(trials)
        if already:
            logger.info("resuming %r: %s already stored", config.exp_key, counted(already, "trial"))
        self._progress = SearchProgress(
            config.exp_key, config.max_evals, bar=config.progress, every=config.progress_every
        )
        lease = CoordinatorLease(self.store, config.exp_key, self.holder)
        loop = SearchLoop(
            trials,
            domain,
            one_seed_per_id(algo_function(config.algo, config.liar), stream),
            stream,
            self.housekeeping,
            max_evals=config.max_evals,
            timeout_s=config.timeout_s,
            loss_threshold=config.loss_threshold,
            tick_s=config.tick_s,
            on_tick=self._tick,
            lease=lease,
        )
        status = ExperimentStatus.FAILED
        try:
            with lease:  # renewed while the loop runs; released when it ends, whatever way
                try:
                    loop.run()
                    status = ExperimentStatus.CANCELLED if loop.cancelled else ExperimentStatus.DONE
                except (KeyboardInterrupt, HyperfleetError):
                    raise  # interrupted, the database gone, or taken over: RUNNING stays
                except Exception as e:
                    self._record_crash(e)
                    raise
                finally:
                    if status is not ExperimentStatus.FAILED:
                        self._finish(trials, status)
                        self._report(trials)
        finally:
            self._progress.close()
        best = rules.best_trial(trials.trials)
        # every usable trial, ERROR ones included (hyperopt's lists leave those out)
        why = None if best is not None else rules.no_success_reason(trials.cache.docs.values())
        return SearchOutcome(
            exp_key=config.exp_key,
            counts=trials.state_counts(),  # usable documents only, as the loop counted them
            best=best,
            seconds=time.monotonic() - started,
            cancelled=loop.cancelled,
            stopped_early=_stopped_early(loop),
            no_success=why,
            best_number=None
            if best is None
            else rules.trial_number(
                best["tid"], (d.get("tid") for d in trials.cache.docs.values())
            ),
        )

    def _tick(self, trials: HyperfleetTrials, counts: dict[TrialState, int]) -> None:
        """After each housekeeping tick: the progress line, then the driver's hook."""
        self._report(trials)
        if self.on_tick is not None:
            self.on_tick(trials, counts)

    def _report(self, trials: HyperfleetTrials) -> dict[TrialState, int]:
        counts = trials.state_counts()  # from the loop's last read: no O(n) aggregate per tick
        if self._progress is not None:
            best = rules.best_trial(trials.trials)
            pruned = sum(1 for d in trials.trials if rules.pruned(d) is not None)
            self._progress.update(counts, None if best is None else best["result"]["loss"], pruned)
        return counts

    def _record_crash(self, error: Exception) -> None:
        """The search itself failed (e.g. the algorithm raised): say so on the experiment, so
        ``status`` does not show it running for ever. A rerun restarts it."""
        message = f"{type(error).__name__}: {error}"[:2000]
        try:
            self.store.finish_experiment(
                self.config.exp_key,
                ExperimentStatus.FAILED,
                {"finished": utcnow(), "error": message},
            )
        except HyperfleetError as e:  # the database is gone too: nothing more to record
            logger.warning("could not record the failure of %r: %s", self.config.exp_key, e)

    def _finish(self, trials: HyperfleetTrials, status: ExperimentStatus) -> None:
        best = rules.best_trial(trials.trials)
        fields: dict[str, Any] = {"finished": utcnow()}
        if best is None:
            logger.warning(
                "search %r: no trial succeeded; %s",
                self.config.exp_key,
                rules.no_success_reason(trials.cache.docs.values()),
            )
        else:
            fields.update(
                best_tid=best["tid"],
                best_loss=best["result"]["loss"],
                best_params=best.get("params"),
            )
        if not self.store.finish_experiment(self.config.exp_key, status, fields):
            logger.warning(
                "search %r: status left as recorded (changed while it ran, e.g. cancelled)",
                self.config.exp_key,
            )
        # workers delete an ended trial's checkpoint; one whose worker died just then is left
        dropped = self.store.drop_checkpoints(exp_key=self.config.exp_key)
        if dropped:
            logger.info("search %r: deleted %d left-over checkpoints", self.config.exp_key, dropped)
        drop_unfinished_uploads(self.store)


def _stopped_early(loop: SearchLoop) -> str | None:
    """What stopped ``loop``'s queueing, for the summary line (a cancel says so itself)."""
    if not loop.cut_short:
        return None
    detail = loop.stop_detail or str(loop.stopped)
    if loop.promoted_past_stop:  # see SearchLoop._may_promote
        detail += "; paused trials were promoted past it to train one through"
    return detail
