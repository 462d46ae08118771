"""hyperfleet's search loop: one short loop of named steps, the same for every driver.

``hyperfleet search``, ``hyperfleet local`` (:class:`coordinator.search.Coordinator`) and plain
``hyperopt.fmin(..., trials=HyperfleetTrials(...))`` (:meth:`coordinator.trials.
HyperfleetTrials.fmin`) all run :meth:`SearchLoop.run`::

    while not over:
        stop requested?   cancel, timeout, loss threshold, early-stop function, lease lost
        housekeeping      reap dead workers' trials, quarantine, size the queue (every tick)
        read changes      the trials written since the last read, nothing else
        promote           resume the paused trials that now rank in their rung's best 1/η
                          (``--prune asha|hyperband --promote``; coordinator.pruning.promotion)
        enqueue           ask the algorithm (hyperopt's suggest functions, fleet TPE included)
                          for the missing queue, insert its trials in one write
        wait              adaptive: about when half the queue should be done

Control only flows down: the loop calls the housekeeping, the trials view and the algorithm;
none of them calls back into it (``on_tick`` is the driver's own hook, e.g. ``local``'s worker
supervision and the progress line).

``max_evals`` is never exceeded: each insert is capped by the trials the last read found, so
trials another driver queued count too. ``hyperfleet search`` and ``local`` also hold the
experiment's coordinator lease (:mod:`coordinator.experiment_lease`): one coordinator per
experiment; a driver without one (plain ``fmin``) refuses an experiment that a live coordinator
holds.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from coordinator import rules
from coordinator.experiment_lease import check_holder
from coordinator.housekeeping import TICK_S, Housekeeping
from coordinator.pruning.promotion import Promoter, make_promoter
from coordinator.states import TrialState

if TYPE_CHECKING:
    from coordinator.experiment_lease import CoordinatorLease
    from coordinator.trials import HyperfleetTrials

logger = logging.getLogger(__name__)

#: a driver's hook, called after every housekeeping tick with the trials and their counts
OnTick = Callable[["HyperfleetTrials", dict[TrialState, int]], None]


class SearchLoop:
    """Queue ``max_evals`` trials of ``domain`` (counting the visible ones already stored, as
    ``FMinIter.exhaust`` does), keep the queue filled, and wait until none is queued or
    running.

    ``algo`` is a hyperopt ``suggest`` function (called as ``algo(new_ids, domain, trials,
    seed)``, each seed drawn from ``rstate`` as ``FMinIter`` draws it); ``trials`` is the
    hyperopt-facing view it reads. Queueing stops early on a cancel (the experiment's
    ``cancel_requested``), after ``timeout_s``, once the best loss is below ``loss_threshold``,
    when ``early_stop_fn`` says so (hyperopt's signature), or when the algorithm has nothing
    more to suggest; trials already queued still run, and the loop waits for them.

    ``lease``: the coordinator lease the driver holds (``hyperfleet search``/``local``); the
    loop stops with :class:`~coordinator.errors.ExperimentBusy` once another coordinator took
    it over. Without one (plain ``fmin``) the loop refuses to start on an experiment whose
    coordinator lease is live.
    """

    def __init__(
        self,
        trials: HyperfleetTrials,
        domain: Any,
        algo: Callable[..., Any],
        rstate: np.random.Generator,
        housekeeping: Housekeeping,
        *,
        max_evals: int,
        timeout_s: float | None = None,
        loss_threshold: float | None = None,
        early_stop_fn: Callable[..., Any] | None = None,
        tick_s: float = TICK_S,
        on_tick: OnTick | None = None,
        lease: CoordinatorLease | None = None,
    ) -> None:
        self.trials = trials
        self.view = trials.cache
        self.domain = domain
        self.algo = algo
        self.rstate = rstate
        self.housekeeping = housekeeping
        self.max_evals = max_evals
        self.timeout_s = timeout_s
        self.loss_threshold = loss_threshold
        self.early_stop_fn = early_stop_fn
        self._early_stop_args: Any = []
        #: DONE trials in the order they ended, as ``early_stop_fn`` has seen them
        self._done: list[dict[str, Any]] = []
        self._done_ids: set[Any] = set()
        self.tick_s = tick_s
        self.on_tick = on_tick
        self.lease = lease
        #: why queueing stopped early ("cancelled", "timeout", ...), or None
        self.stopped: str | None = None
        #: what stopped it, in words ("timeout of 60 s reached"), or None
        self.stop_detail: str | None = None
        #: paused trials promoted after a stop, so that one trains through (``_may_promote``)
        self.promoted_past_stop = False
        self.queued = 0  #: trials this run inserted
        self._to_queue = 0
        self._started = 0.0
        self._last_tick = float("-inf")
        self.promoter: Promoter | None = None  #: the promotion step (``--promote``), if any
        self._promoted_at = float("-inf")  #: the tick of the last promotion step

    @property
    def cancelled(self) -> bool:
        return self.stopped == "cancelled"

    def run(self) -> None:
        """The loop (see the module docstring); returns when nothing is queued or running and
        nothing more will be queued. ``KeyboardInterrupt`` and store errors propagate: the
        experiment stays as it is and a rerun continues it."""
        self._started = time.monotonic()
        exp_key = self.view.exp_key
        if self.lease is None and exp_key is not None:  # plain fmin: not over a live search
            store = self.housekeeping.store
            check_holder(store.get_experiment(exp_key), exp_key, store.server_time(), None)
        # as FMinIter.exhaust: the trials of the caller's last refresh count towards max_evals
        self._to_queue = self.max_evals - len(self.trials.trials)
        self._done = self._newly_done()  # done before this run: seen, not reported one by one
        self.promoter = make_promoter(self.housekeeping.store, exp_key)
        while True:
            self._housekeeping()
            self._read_changes()
            self._promote()
            self._check_stop()
            self._enqueue()
            if self._over():
                break
            self._wait()
        self.trials.refresh()

    # -- the steps ------------------------------------------------------------------------------

    def _check_stop(self) -> None:
        """Stop queueing (the queued and running trials still finish) on a timeout, a reached
        loss threshold or the early-stop function's word; a cancel is noticed by the
        housekeeping. Raises :class:`~coordinator.errors.ExperimentBusy` once another
        coordinator took the experiment over.

        ``early_stop_fn`` is called as in-memory ``fmin`` calls it: once per trial that ended
        (DONE, in the order they ended), with the trials ended so far, so hyperopt's own
        ``no_progress_loss`` (which reads the last trial's loss) works unchanged."""
        if self.lease is not None:
            self.lease.check()
        if self.stopped is not None:
            return
        if self.timeout_s is not None and time.monotonic() - self._started >= self.timeout_s:
            self._stop("timeout", f"timeout of {self.timeout_s:g} s reached")
            return
        if self.loss_threshold is not None:
            best = rules.best_trial(self.trials.trials)
            if best is not None and best["result"]["loss"] < self.loss_threshold:
                self._stop("loss threshold", f"best loss below {self.loss_threshold:g}")
                return
        if self.early_stop_fn is not None:
            for doc in self._newly_done():
                self._done.append(doc)
                stop, self._early_stop_args = self.early_stop_fn(
                    self.trials.snapshot(self._done), *self._early_stop_args
                )
                if stop:
                    self._stop("early stop", "the early-stop function says stop")
                    return

    def _newly_done(self) -> list[dict[str, Any]]:
        """DONE trials not seen before, in the order they ended (then by tid)."""
        new = [
            d
            for d in self.trials.trials
            if d.get("state") == int(TrialState.DONE) and d["_id"] not in self._done_ids
        ]
        self._done_ids.update(d["_id"] for d in new)
        new.sort(key=lambda d: (str(rules.ended(d) or ""), rules.tid_order(d.get("tid"))))
        return new

    def _housekeeping(self, force: bool = False) -> None:
        """Every ``tick_s``: reap, quarantine, notice a cancel, size the queue, adapt the poll
        (:class:`~coordinator.housekeeping.Housekeeping`), then the driver's hook."""
        now = time.monotonic()
        if not force and now - self._last_tick < self.tick_s:
            return
        self._last_tick = now
        counts = self.housekeeping.tick(self.view)
        if self.housekeeping.cancelled and self.stopped is None:
            self._cancel()
        if self.on_tick is not None:
            self.on_tick(self.trials, counts)

    def _read_changes(self) -> None:
        self.trials.refresh()

    def _promote(self, force: bool = False) -> bool:
        """Once per housekeeping tick, promote the paused trials that rank in their rung's
        best 1/η now; they are NEW again (read back at once, so the loop is not over while
        one waits for a worker). ``force``: the loop would end otherwise (nothing to queue,
        nothing queued or running), so with ``--promote-wait`` a rung of fewer than η values
        promotes its best."""
        if self.promoter is None or not self._may_promote(force):
            return False
        if not force and self._promoted_at == self._last_tick:  # once per tick: it reads
            return False  # each rung that has paused trials
        self._promoted_at = self._last_tick
        if not self.promoter.step(self.trials.trials, final=force):
            return False
        if self.stopped not in (None, "exhausted"):
            self.promoted_past_stop = True
        self.trials.refresh()
        return True

    def _may_promote(self, final: bool) -> bool:
        """Promotions stop with the queueing (a timeout, a loss threshold, an early stop, a
        cancel: no more work), but for two cases. A search whose algorithm has nothing more to
        suggest ends as one that queued all its trials. A search stopped before any trial
        trained through every epoch (with ``--promote-wait`` the first trials at a rung pause
        until η have reached it) still promotes when it would end (not after a cancel), so it
        does not end with nothing trained through; once one is, it ends."""
        if self.stopped is None or self.stopped == "exhausted":
            return True
        if not final or self.cancelled:
            return False
        return not any(
            rules.is_ok_trial(d) and rules.pruned(d) is None
            for d in self.trials.trials
            if d.get("state") == int(TrialState.DONE)
        )

    def _enqueue(self) -> None:
        """Fill the queue up to the housekeeping's length: ask the algorithm for the missing
        trials and insert them in one write. Never past ``max_evals``: the trials the last read
        found (another driver's included; ERROR ones do not count, as in hyperopt) cap it."""
        queued = self.view.count(TrialState.NEW)
        want = min(self.housekeeping.max_queue - queued, self._room())
        if self.stopped is not None or want <= 0:
            return
        if self.lease is not None:
            self.lease.check(before_insert=True)
        new_ids = self.trials.new_trial_ids(want)
        docs = self.algo(new_ids, self.domain, self.trials, self.rstate.integers(2**31 - 1))
        if not docs:
            self._stop("exhausted", "the algorithm has nothing more to suggest")
            return
        inserted = self.trials.insert_trial_docs(docs)
        if not inserted:  # refused at the last moment (cancelled while suggesting)
            self.housekeeping.cancelled = True
            self._cancel()
            return
        self.queued += len(docs)

    def _room(self) -> int:
        """How many more trials this run may queue: what is left of its share and, for a
        coordinator holding the experiment's lease (``search``, ``local``), never more than
        ``max_evals`` less the trials stored (ERROR ones do not count, as in hyperopt). Plain
        ``fmin`` keeps hyperopt's rule (its share counts the trials of the caller's last
        refresh, so trials inserted after it, e.g. a warm start's points, come on top)."""
        share = self._to_queue - self.queued
        if self.lease is None:
            return share
        counted = self.view.stored - self.view.count(TrialState.ERROR)
        return min(share, self.max_evals - counted)

    def _over(self) -> bool:
        """Nothing more to queue, nothing queued or running, and no paused trial to promote
        (the last trials to end may have made one promotable)."""
        more = self.stopped is None and self._room() > 0
        if more or self.view.count(TrialState.NEW, TrialState.RUNNING) > 0:
            return False
        return not self._promote(force=True)

    def _wait(self) -> None:
        """Sleep the housekeeping's adaptive poll interval, never past the next tick."""
        until_tick = self._last_tick + self.tick_s - time.monotonic()
        time.sleep(max(0.0, min(self.housekeeping.poll_interval, until_tick)))

    # -- helpers --------------------------------------------------------------------------------

    def _cancel(self) -> None:
        """``hyperfleet cancel`` was run: queue nothing more, and mark CANCEL what this loop
        queued while the cancel landed (the cancel command's own sweeps may have come first)."""
        self._stop("cancelled", "no new trials; waiting for running ones")
        if self.view.exp_key is not None:
            self.housekeeping.store.cancel_queued(self.view.exp_key)

    @property
    def cut_short(self) -> bool:
        """Whether a timeout, a loss threshold or an early-stop function left trials of
        ``max_evals`` unqueued (not a cancel, nor an algorithm with nothing more to suggest:
        that is the search's natural end)."""
        if self.stopped in (None, "exhausted") or self.cancelled:
            return False
        return self._room() > 0

    def _stop(self, reason: str, detail: str) -> None:
        self.stopped = reason
        self.stop_detail = detail
        if reason == "cancelled":
            logger.warning("search %r cancelled: %s", self.view.exp_key, detail)
        else:
            logger.info("search %r: %s: %s", self.view.exp_key, reason, detail)
