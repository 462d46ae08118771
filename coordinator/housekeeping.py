"""What keeps a search moving, whoever drives it: ``hyperfleet search`` or plain ``hyperopt.fmin``.

Every ``tick_s`` the search loop (:mod:`coordinator.loop`) calls :meth:`Housekeeping.tick`, which
reaps the trials of dead workers, quarantines the search's own documents that cannot be used,
notices cancellation, sizes the queue to the live workers and adapts the poll interval to how
fast trials finish; every ``CHECKPOINT_SWEEP_S`` it deletes the checkpoint files that killed
workers left behind, and the GridFS chunks of uploads that a killed writer never finished.
Workers reap too (:mod:`worker.worker`), so a search whose driver is gone
still gets its trials back. It talks to the store contract and reads the loop's
:class:`~coordinator.trial_view.TrialView`; it calls nothing back.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from coordinator import defaults
from coordinator.errors import counted
from coordinator.states import FINISHED_STATES, TrialState
from coordinator.store import TrialStoreBase
from coordinator.trial_view import TrialView

logger = logging.getLogger(__name__)

#: the loop's sleep between reads while trials are slow
POLL_S = 0.02
#: the shortest sleep of the loop, while trials finish very fast
MIN_POLL_S = 0.002
#: seconds between two housekeeping ticks
TICK_S = 0.5
#: the queue holds this many trials per live worker (and at least ``MIN_QUEUE``)
QUEUE_PER_WORKER = 2
MIN_QUEUE = 2
#: while each worker finishes a trial in less than this (on average over the last tick), the
#: queue holds ``FAST_QUEUE_PER_WORKER`` per worker: a worker of short trials claims several in
#: one round trip, and each read and insert of the loop serves several trials (bench/run.py,
#: 500 trivial trials, 2 workers: 87 trials/s with 2 per worker, 146 with 8, 150 with 16, whose
#: dispatch latency doubled)
FAST_TRIAL_S = 0.25
FAST_QUEUE_PER_WORKER = 8
#: seconds between two sweeps of the checkpoint files that killed workers left behind
CHECKPOINT_SWEEP_S = 600.0


def continue_stream(rstate: np.random.Generator, *position: int) -> np.random.Generator:
    """The random stream of a search resumed at ``position`` (e.g. the number of trials it
    already stores): ``rstate`` itself for a fresh search (all zeros: the same points as ever
    for a given seed), otherwise a new stream derived from (``rstate``'s next draw,
    ``position``). A resumed seeded search thus continues instead of replaying the suggestions
    it made before it was stopped; every algorithm draws its seeds from this stream, so this
    holds for all of them."""
    if not any(position):
        return rstate
    return np.random.default_rng([int(rstate.integers(2**63 - 1)), *position])


def drop_unfinished_uploads(store: TrialStoreBase, min_age_s: float | None = None) -> None:
    """Sweep the GridFS uploads a killed writer never finished, and say how many went.
    Database-wide (chunks name no experiment), so every coordinator may do it: idempotent."""
    unfinished = store.drop_orphan_chunks(min_age_s=min_age_s)
    if unfinished:
        logger.info(
            "deleted the GridFS chunks of %s that never finished (a writer killed mid-upload)",
            counted(unfinished, "upload"),
        )


class Housekeeping:
    """One search's housekeeping (see the module docstring).

    ``queue_len``: a fixed queue length, or ``None`` to size it to ``QUEUE_PER_WORKER`` x the
    live workers (at least ``min_queue``). ``max_attempts``: the attempt limit for experiments
    that record none. The loop reads :attr:`max_queue`, :attr:`poll_interval` and
    :attr:`cancelled`.
    """

    def __init__(
        self,
        store: TrialStoreBase,
        exp_key: str | None,
        *,
        poll_s: float = POLL_S,
        queue_len: int | None = None,
        min_queue: int = MIN_QUEUE,
        max_attempts: int | None = None,
        checkpoint_sweep_s: float = CHECKPOINT_SWEEP_S,
        orphan_chunk_age_s: float | None = None,
    ) -> None:
        self.store = store
        self.exp_key = exp_key
        self.poll_s = poll_s
        self.queue_len = queue_len
        self.min_queue = min_queue
        self.max_attempts = max_attempts
        #: how many trials the loop keeps queued
        self.max_queue = queue_len if queue_len is not None else min_queue
        #: how long the loop sleeps between two reads
        self.poll_interval = poll_s
        #: whether ``hyperfleet cancel`` was run for the experiment
        self.cancelled = False
        self._last_rate_check: tuple[float, int] | None = None
        #: how often the checkpoint files of ended trials that their workers left are deleted
        self.checkpoint_sweep_s = checkpoint_sweep_s
        #: the age past which chunks without a file document are a killed writer's (``None``:
        #: ``$HYPERFLEET_ORPHAN_CHUNK_AGE_S`` or the default, as the store reads it)
        self.orphan_chunk_age_s = orphan_chunk_age_s
        self._last_sweep = time.monotonic()

    def tick(self, view: TrialView) -> dict[TrialState, int]:
        """Reap, quarantine, cancel, size the queue, adapt the poll; returns the counts."""
        self.store.reap_expired(self.exp_key, max_attempts=self.max_attempts)
        for doc, problem in view.take_refused():
            self.store.quarantine_trial(doc, problem)
        if self.exp_key is not None and self.store.cancel_requested(self.exp_key):
            self.cancelled = True
        counts = view.state_counts()  # from the loop's last read: no O(n) aggregate per tick
        rate = self._finish_rate(counts)
        if self.queue_len is None:
            live = self.store.live_workers(max_age_s=defaults.STALE_WORKER_S, exp_key=self.exp_key)
            fast = bool(live) and rate > 0 and len(live) / rate < FAST_TRIAL_S
            per_worker = FAST_QUEUE_PER_WORKER if fast else QUEUE_PER_WORKER
            self.max_queue = max(self.min_queue, per_worker * len(live))
        self._adapt_poll(rate)
        self._sweep_checkpoints()
        return counts

    def _sweep_checkpoints(self) -> None:
        """Every ``checkpoint_sweep_s``: the checkpoints of ended trials whose worker died
        before it deleted them, and files a killed worker wrote but never linked (the search's
        end sweeps once more, paused trials included). A long search on pre-empted workers
        would otherwise keep them, model-sized, until it ends."""
        now = time.monotonic()
        if self.exp_key is None or now - self._last_sweep < self.checkpoint_sweep_s:
            return
        self._last_sweep = now
        dropped = self.store.drop_checkpoints(exp_key=self.exp_key, search_ended=False)
        if dropped:
            logger.info(
                "search %r: deleted %d checkpoint files of ended trials that their workers "
                "left (killed before they could delete them)",
                self.exp_key,
                dropped,
            )
        drop_unfinished_uploads(self.store, self.orphan_chunk_age_s)

    def _finish_rate(self, counts: dict[TrialState, int]) -> float:
        """Trials finished per second since the previous tick (0 at the first)."""
        finished = sum(counts.get(s, 0) for s in FINISHED_STATES)
        now = time.monotonic()
        rate = 0.0
        if self._last_rate_check is not None:
            seconds = now - self._last_rate_check[0]
            rate = (finished - self._last_rate_check[1]) / seconds if seconds > 0 else 0.0
        self._last_rate_check = (now, finished)
        return max(0.0, rate)

    def _adapt_poll(self, rate: float) -> None:
        """While trials are fast, read again about when half the queue should be done (the
        workers never find it empty, and each read and insert serves several trials); every
        ``poll_s`` while they are slow (no needless load)."""
        fast = max(1, self.max_queue // 2) / rate if rate > 0 else self.poll_s
        self.poll_interval = min(self.poll_s, max(MIN_POLL_S, fast))


#: seconds a search waits without a live worker before it says so (and again every 10x this)
NO_WORKER_NOTICE_S = 5.0


class NoWorkerNotice:
    """Logs (at WARNING, so also when stderr is no terminal) that no live worker serves the
    search: after ``NO_WORKER_NOTICE_S`` without one, then every ten times that while none
    comes; once (at INFO: a recovery) when one arrives after such a line. A worker that is
    still warming up is registered, so it counts. Asks the registry at most once a second.
    ``hint``: how to start a worker that serves it; ``pickled``: only workers that run pickled
    objectives (``--trust-pickled``) count (plain fmin's trials)."""

    def __init__(
        self,
        store: TrialStoreBase,
        exp_key: str | None,
        *,
        hint: str,
        after_s: float = NO_WORKER_NOTICE_S,
        pickled: bool = False,
    ) -> None:
        self.store = store
        self.exp_key = exp_key
        self.hint = hint
        self.pickled = pickled  # only workers started with --trust-pickled serve it
        self.after_s = after_s
        self._since = time.monotonic()
        self._checked = 0.0
        self._said: float | None = None

    def check(self) -> None:
        now = time.monotonic()
        if now - self._checked < 1.0:
            return
        self._checked = now
        live = self.store.live_workers(defaults.STALE_WORKER_S, self.exp_key)
        if self.pickled:  # a worker without --trust-pickled leaves plain fmin's trials alone
            live = [w for w in live if w.get("trust_pickled") is True]
        if live:
            if self._said is not None:
                logger.info("a worker now serves %r", self.exp_key)  # good news: no warning
            self._since, self._said = now, None
            return
        waited = now - self._since
        due = self.after_s if self._said is None else self._said + 10 * self.after_s
        if waited >= due:
            self._said = waited
            logger.warning(
                "no live worker serves %r (waited %.0f s): start one with %s",
                self.exp_key,
                waited,
                self.hint,
            )
