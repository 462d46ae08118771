"""The worker: reserve a trial, run it under a heartbeat, write its outcome, repeat.

Shutdown has two stages. The first SIGTERM/SIGINT lets the current trial finish, then the worker
exits 0 (with ``requeue_on_term`` it hands the trial back at once instead). A second signal hands
the trial back at once (not counted as an attempt) and exits.

Round trips. For trivial trials the server's operations are the cost, so a worker whose recent
trials were short (median under ``HOLD_FAST_S``) claims up to ``HOLD_MAX`` trials at once and
runs them one after the other (:class:`Batch`); the outcomes wait, and travel with the next
claim in one round trip. A held trial never waits behind a slow one: once the running trial
passes ``HOLD_SLOW_S``, the outcomes waiting are written and the held trials handed back (not
counted). On exit they are handed back too. A worker killed outright loses what it held: those
trials are reaped like the one it ran (a counted attempt each) and run again.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import statistics
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from coordinator import defaults, rules
from coordinator.errors import (
    HyperfleetError,
    Interrupted,
    SpaceError,
    StopWorking,
    StoreUnavailable,
    TrialCrashed,
    WorkerMissingSpace,
    counted,
)
from coordinator.shown import shown
from coordinator.states import AttemptOutcome, ExperimentStatus, TrialState
from coordinator.store import Lease, TrialStoreBase
from coordinator.store.base import Ending
from search_spaces import get_space, load_spaces
from worker.evaluate import Outcome
from worker.heartbeat import Heartbeat
from worker.supervisor import ChildRunner, InProcessRunner, Runner, RunnerConfig

logger = logging.getLogger(__name__)

IDLE_POLL_MIN_S = 0.01  # first idle re-poll; doubles up to --poll
SEARCH_OVER_EVERY_S = 0.5
#: how often an idle worker without --trust-pickled looks for plain-fmin (pickled) trials
PICKLED_CHECK_S = 5.0
#: a pinned worker idle this long with no experiment of its key says so (once)
MISSING_EXPERIMENT_NOTE_S = 10.0
#: workers reap expired leases every ``lease_s`` times this (whoever drives the search, even
#: a plain ``hyperopt.fmin`` or none at all, a dead worker's trial goes back to the queue)
REAP_EVERY_LEASE = 0.5
#: the most trials a worker claims at once (only while its trials are short: HOLD_FAST_S)
HOLD_MAX = 4
#: claim several trials at once only while the median of the recent trials is below this
HOLD_FAST_S = 0.2
#: how many recent trials that median looks at (and how many run before any batch)
HOLD_RECENT = 5
#: a running trial this long hands back the trials held behind it and writes waiting outcomes
HOLD_SLOW_S = 1.0
#: an outcome waits at most this long for the next claim's round trip
ENDINGS_WAIT_S = 0.25
#: how long a worker trusts what it read of an experiment's cancel flag (held trials only)
CANCEL_SEEN_S = 0.25


@dataclass
class WorkerConfig:
    uri: str
    db: str = defaults.DB_NAME
    exp_key: str | None = None
    max_trials: int | None = None
    idle_timeout_s: float | None = None
    heartbeat_s: float = defaults.HEARTBEAT_S
    lease_s: float = defaults.LEASE_S
    poll_s: float = defaults.POLL_S
    isolate: bool = True
    trust_pickled: bool = False
    requeue_on_term: bool = False
    spaces: tuple[str, ...] = ()
    #: None: $HYPERFLEET_OUTAGE_S or the default, read by each process (the trial child too)
    outage_s: float | None = None
    #: warm the trial process (imports, data, a first fit) before the first reservation
    warm: bool = False
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class HandBack:
    """A trial that ended without a result: it goes back to the queue (or, counted attempts
    used up, to ERROR)."""

    outcome: AttemptOutcome
    reason: str


class Batch:
    """What a worker holds between round trips: trials claimed but not started, and outcomes
    not written yet. Shared with the heartbeat thread (which may hand it all back behind a
    slow trial), hence the lock."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.held: list[Lease] = []
        self.endings: list[Ending] = []
        self.oldest_ending = 0.0  #: monotonic time of the oldest outcome waiting

    def next_held(self) -> Lease | None:
        with self.lock:
            return self.held.pop(0) if self.held else None

    def hold(self, leases: list[Lease]) -> None:
        with self.lock:
            self.held.extend(leases)

    def add_ending(self, ending: Ending) -> None:
        with self.lock:
            if not self.endings:
                self.oldest_ending = time.monotonic()
            self.endings.append(ending)

    def take_endings(self) -> list[Ending]:
        with self.lock:
            endings, self.endings = self.endings, []
            return endings

    def take_all(self) -> tuple[list[Ending], list[Lease]]:
        with self.lock:
            endings, self.endings = self.endings, []
            held, self.held = self.held, []
            return endings, held

    def endings_waited(self) -> float:
        with self.lock:
            return time.monotonic() - self.oldest_ending if self.endings else 0.0

    def __bool__(self) -> bool:
        with self.lock:
            return bool(self.held or self.endings)


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class Worker:
    def __init__(self, store: TrialStoreBase, config: WorkerConfig) -> None:
        self.store = store
        self.config = config
        self.id = new_worker_id()
        self.info = {
            "id": self.id,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "exp_key": config.exp_key,
            "trust_pickled": config.trust_pickled,  # whether it runs plain fmin's trials
            **config.info,
        }
        for path in config.spaces:
            load_spaces(path)
        runner_config = RunnerConfig(
            config.uri,
            config.db,
            config.spaces,
            config.trust_pickled,
            config.outage_s,
            warm=config.warm,
            exp_key=config.exp_key,
            stopped_limit_s=config.lease_s,
        )
        self.runner: Runner = (
            ChildRunner(runner_config) if config.isolate else InProcessRunner(runner_config)
        )
        self.trials_done = 0
        self.signals = 0
        self.interrupt = threading.Event()  # hand the current trial back now
        self.stopping = threading.Event()  # a signal came: abandon a warm-up
        self._current: Lease | None = None
        self._batch = Batch()
        #: trials whose ending is queued and that saved a checkpoint (deleted once they ended)
        self._checkpointed: set[Any] = set()
        self._recent: deque[float] = deque(maxlen=HOLD_RECENT)  #: seconds of recent trials
        self._in_process_trial = False
        self._idle_since = time.monotonic()
        self._idle_delay = IDLE_POLL_MIN_S
        self._last_over_check = 0.0
        self._last_registered = 0.0
        self._last_pickled_check = float("-inf")
        self._pickled_noted: set[str] = set()  #: exp keys whose pickled trials were logged
        self._missing_noted = False  #: whether a missing pinned experiment was logged
        self._last_reap = 0.0
        #: experiments whose search space this worker does not know: not served by it
        self._skipped_exp_keys: set[str | None] = set()
        #: per experiment: when its cancel flag was read and what it said (held trials only)
        self._cancel_seen: dict[str, tuple[float, bool]] = {}

    # -- the loop -------------------------------------------------------------------------------

    def work(self) -> int:
        """Check for stop, reap expired leases, reserve a trial (or wait for one), run it,
        report it; repeat until stopped, idle too long, out of trials or the search is over.
        Returns the exit code (0).

        Raises :class:`StoreUnavailable` when MongoDB stays unreachable and, for a worker
        pinned to one experiment (``exp_key``), :class:`WorkerMissingSpace` when its trials
        need a space this worker does not know. No trial's content ends the loop otherwise.
        """
        self._install_signal_handlers()
        logger.info("worker %s started (exp key: %s)", self.id, self.config.exp_key or "any")
        reason = "stopped"
        self._idle_since = time.monotonic()
        try:
            # registered before the warm-up (imports, data, a first fit: seconds): a search
            # started together with its workers sees them at once instead of warning that no
            # live worker serves it
            self._register(None, force=True)
            self.runner.start(self.stopping)
            if not self.stopping.is_set():
                logger.info("worker %s ready", self.id)
            while True:
                self._check_for_stop()
                self._maintain()
                lease = self._next_trial()
                if lease is None:
                    self._wait_for_work()
                    continue
                if self._serves(lease):
                    self._report(lease, self._run(lease))
        except StopWorking as stop:
            reason = str(stop)
        except StoreUnavailable as e:
            reason = f"MongoDB unreachable: {e}"
            raise
        except HyperfleetError as e:
            reason = str(e)
            raise
        finally:
            self._settle()
            self.runner.close()
            self._unregister(reason)
            logger.info(
                "worker %s exits: %s (%s)", self.id, reason, counted(self.trials_done, "trial")
            )
        return 0

    # -- the steps ------------------------------------------------------------------------------

    def _check_for_stop(self) -> None:
        """Raise :class:`StopWorking` after a signal or once ``--max-trials`` ran."""
        if self.signals:
            raise StopWorking("stopped by signal")
        limit = self.config.max_trials
        if limit is not None and self.trials_done >= limit:
            raise StopWorking(f"ran --max-trials {limit}")

    def _maintain(self) -> None:
        """Reap expired leases (of this worker's experiment, or of all), at most every
        ``REAP_EVERY_LEASE`` x ``lease_s``: fenced and idempotent, so any number of workers and
        coordinators may do it at once."""
        now = time.monotonic()
        if now - self._last_reap < REAP_EVERY_LEASE * self.config.lease_s:
            return
        self._last_reap = now
        self.store.reap_expired(self.config.exp_key)

    def _next_trial(self) -> Lease | None:
        """The next trial to run: one held from an earlier claim, else a fresh claim (of
        several while trials are short), whose round trip writes the outcomes waiting."""
        lease = self._batch.next_held()
        while lease is not None and self._cancelled(lease.exp_key):
            self.store.cancel_held([lease])  # queued as far as the user knows: never started
            logger.info("tid %s: its experiment was cancelled; not started", lease.tid)
            lease = self._batch.next_held()
        if lease is not None:
            if self._batch.endings_waited() > ENDINGS_WAIT_S:
                self._write_endings(self._batch.take_endings())
            return lease
        endings = self._batch.take_endings()
        reserved = self.store.reserve_trials(
            self.id,
            self._claim_size(),
            exp_key=self.config.exp_key,
            lease_s=self.config.lease_s,
            trusted=self.config.trust_pickled,
            worker=self.info,
            skip_exp_keys=self._skipped_exp_keys,
            endings=endings,
        )
        self._note_lost_endings(endings, reserved.ended)
        if not reserved.leases:
            return None
        first, *rest = reserved.leases
        self._batch.hold(rest)
        return first

    def _claim_size(self) -> int:
        """How many trials to claim: several only while the recent trials were short (a slow
        trial must never sit behind a busy worker), never more than ``--max-trials`` leaves,
        and few enough that the held ones cannot outlive their lease waiting."""
        if len(self._recent) < HOLD_RECENT or statistics.median(self._recent) >= HOLD_FAST_S:
            return 1
        n = min(HOLD_MAX, int(self.config.lease_s / (2 * HOLD_SLOW_S)))
        if self.config.max_trials is not None:
            n = min(n, self.config.max_trials - self.trials_done)
        return max(1, n)

    def _wait_for_work(self) -> None:
        """The queue is empty: stop if idle too long or the search is over; else keep the
        registry row fresh (a busy worker's heartbeat does that) and back off."""
        idle = time.monotonic() - self._idle_since
        if self.config.idle_timeout_s is not None and idle >= self.config.idle_timeout_s:
            raise StopWorking(f"idle for {idle:.0f} s (--idle-timeout)")
        over = self._search_over()
        if over is not None:
            raise StopWorking(over)
        self._register(None)
        self._note_pickled()
        time.sleep(self._idle_delay)
        self._idle_delay = min(self._idle_delay * 2, self.config.poll_s)

    def _note_pickled(self) -> None:
        """Without ``--trust-pickled``, say once per experiment (at WARNING) that its trials
        queued by plain ``hyperopt.fmin`` (a pickled objective, no named space) are left alone,
        and how to serve them: otherwise that fmin waits forever without a hint."""
        now = time.monotonic()
        if self.config.trust_pickled or now - self._last_pickled_check < PICKLED_CHECK_S:
            return
        self._last_pickled_check = now
        queued = self.store.trials(self.config.exp_key, [TrialState.NEW], with_spec=False)
        for key in sorted({str(d.get("exp_key")) for d in queued if "space" not in d}):
            if key not in self._pickled_noted:
                self._pickled_noted.add(key)
                logger.warning(
                    "ignoring the queued trials of experiment %s: they come from plain hyperopt "
                    "fmin (a pickled objective), which this worker does not run; start a worker "
                    "with --trust-pickled to serve them (it unpickles and runs code stored in "
                    "the database: only for a database you trust)",
                    shown(key),
                )

    def _run(self, lease: Lease) -> Outcome | HandBack | None:
        """Run the trial under a heartbeat: its outcome, a hand-back, or ``None`` when the
        lease was lost while it ran."""
        self._current = lease
        self._idle_delay = IDLE_POLL_MIN_S
        try:
            logger.info(
                "tid %s of %s: started (attempt %s)",
                shown(lease.tid, bare=True),
                shown(lease.exp_key, bare=True),
                lease.attempt,
            )
            self._register(lease.tid)
            started = time.monotonic()
            with Heartbeat(
                self.store,
                lease,
                interval_s=self.config.heartbeat_s,
                lease_s=self.config.lease_s,
                on_beat=lambda: self._register(lease.tid, force=True),
                on_slow=self._settle if self._batch else None,
                slow_after_s=HOLD_SLOW_S,
            ) as beat:
                outcome = self._execute(lease)
            self._recent.append(time.monotonic() - started)
            return None if beat.lost.is_set() else outcome
        except Interrupted:
            return HandBack(AttemptOutcome.REQUEUED, "worker stopped by signal")
        except TrialCrashed as crash:
            self._recent.append(float("inf"))  # a crash is no reason to claim more
            return HandBack(AttemptOutcome.CRASHED, str(crash))
        finally:
            self._current = None
            self.trials_done += 1
            self._idle_since = time.monotonic()

    def _report(self, lease: Lease, ended: Outcome | HandBack | None) -> None:
        """Write how the trial ended, fenced on its lease."""
        if isinstance(ended, HandBack):
            self._release(lease, ended.outcome, ended.reason)
        elif ended is None:
            logger.warning("tid %s: lost the lease while running; result dropped", lease.tid)
        else:
            self._record(lease, ended)

    # -- helpers --------------------------------------------------------------------------------

    def _unregister(self, reason: str) -> None:
        try:
            self.store.worker_stopped(self.id, reason)
        except StoreUnavailable:
            logger.warning("could not mark worker %s stopped: MongoDB unreachable", self.id)

    def _execute(self, lease: Lease) -> Outcome:
        self._in_process_trial = not self.config.isolate
        try:
            return self.runner.run(lease, dict(self.info), self.interrupt)
        finally:
            self._in_process_trial = False

    def _record(self, lease: Lease, outcome: Outcome) -> None:
        """Queue the trial's outcome: it is written with the next claim, in its round trip
        (:meth:`_next_trial`), or sooner (:meth:`_settle`)."""
        fields = {
            "params": outcome.params,
            "duration_s": round(outcome.duration_s, 6),
            **outcome.fields,
        }
        earlier = rules.earlier_segments_s(lease.doc)  # --promote: duration_s is this segment's
        if earlier is not None:
            fields["segments_duration_s"] = earlier
        if outcome.lost:
            logger.warning("tid %s: %s", lease.tid, outcome.lost_reason)
            return
        self._batch.add_ending(Ending(lease, outcome.result, fields, outcome.error))
        if outcome.checkpointed:
            self._checkpointed.add(lease.id)
        if outcome.error is not None:
            logger.error(
                "tid %s: objective raised %s: %s",
                lease.tid,
                outcome.error["type"],
                outcome.error["message"],
            )
        else:
            pruned = outcome.result.get("pruned")
            stopped = ""
            if isinstance(pruned, dict):  # the rule stopped it, or paused it (--promote)
                verb = "paused" if pruned.get("paused") is True else "pruned"
                stopped = f", {verb} at epoch {pruned.get('epoch')}"
            logger.info(
                "tid %s: %s loss=%s (%.2f s%s)",
                lease.tid,
                outcome.result["status"],
                outcome.result.get("loss"),
                outcome.duration_s,
                stopped,
            )

    def _write_endings(self, endings: list[Ending]) -> None:
        self._note_lost_endings(endings, self.store.end_trials(endings))

    def _note_lost_endings(self, endings: list[Ending], written: list[bool]) -> None:
        ended = [e.lease.id for e, ok in zip(endings, written, strict=True) if ok]
        finished = [i for i in ended if i in self._checkpointed]
        self._checkpointed.difference_update(e.lease.id for e in endings)
        if finished:  # an ended trial is never resumed: its checkpoint goes
            self.store.drop_checkpoints(trial_ids=finished)
        for ending, ok in zip(endings, written, strict=True):
            if not ok:
                logger.warning(
                    "tid %s: lost the lease before writing the result (reaped while "
                    "paused?); the new owner's result stands",
                    ending.lease.tid,
                )

    def _settle(self) -> None:
        """Write the outcomes waiting and hand back the trials held but not started (not
        counted as attempts): on exit, and from the heartbeat behind a slow trial."""
        endings, held = self._batch.take_all()
        try:
            if endings:
                self._write_endings(endings)
            cancelled = [lease for lease in held if self._cancelled(lease.exp_key)]
            held = [lease for lease in held if lease not in cancelled]
            if cancelled:
                self.store.cancel_held(cancelled)
            if held:
                back = self.store.release_held(held, "handed back unstarted by a busy worker")
                logger.info("handed %s back to the queue", counted(back, "held trial"))
        except StoreUnavailable:
            logger.warning(
                "could not write %s or hand back %s: MongoDB unreachable; they are reaped "
                "once their leases expire",
                counted(len(endings), "result"),
                counted(len(held), "held trial"),
            )

    def _cancelled(self, exp_key: str | None) -> bool:
        """Whether ``hyperfleet cancel`` was run for ``exp_key`` (read at most every
        ``CANCEL_SEEN_S``): a held trial of a cancelled experiment is never started."""
        if exp_key is None:
            return False
        now = time.monotonic()
        seen = self._cancel_seen.get(exp_key)
        if seen is None or now - seen[0] >= CANCEL_SEEN_S:
            seen = (now, self.store.cancel_requested(exp_key))
            self._cancel_seen[exp_key] = seen
        return seen[1]

    def _release(self, lease: Lease, outcome: AttemptOutcome, reason: str) -> None:
        state = self.store.release(lease, outcome, reason)  # the experiment's attempt limit
        if state is None:
            logger.warning("tid %s: already taken over; nothing to hand back", lease.tid)
        elif state is TrialState.ERROR:
            logger.error("tid %s: %s; gave up on it (max attempts reached)", lease.tid, reason)
        else:
            logger.warning("tid %s: %s; handed back to the queue", lease.tid, reason)

    def _serves(self, lease: Lease) -> bool:
        """Whether this worker can run the trial. If its space is unknown here, the trial is
        handed back (not counted) and its experiment no longer served by this worker; a worker
        pinned to that experiment has nothing else to do: :class:`WorkerMissingSpace`."""
        name = lease.doc.get("space")
        if name is None:
            return True
        try:
            get_space(name)
            return True
        except SpaceError as e:
            self._release(lease, AttemptOutcome.REQUEUED, f"space {shown(name)} unknown here")
            hint = "start a worker with --spaces PATH (the file the search used)"
            if self.config.exp_key is not None:
                raise WorkerMissingSpace(
                    f"tid {shown(lease.tid)} of {shown(lease.exp_key)} needs search space "
                    f"{shown(name)}, which this worker does not know; {hint}"
                ) from e
            self._skipped_exp_keys.add(lease.exp_key)
            logger.warning(
                "experiment %s needs search space %s, unknown to this worker: not serving it "
                "(%s); serving the others",
                shown(lease.exp_key),
                shown(name),
                hint,
            )
            return False

    def _search_over(self) -> str | None:
        """Why this pinned worker is done, or ``None``: its search is finished and nothing it
        would run is queued (asked at most every 0.5 s, so that fast idle polls cost the server
        one read, not two)."""
        key = self.config.exp_key
        if key is None:
            return None
        now = time.monotonic()
        if now - self._last_over_check < SEARCH_OVER_EVERY_S:
            return None
        self._last_over_check = now
        exp = self.store.get_experiment(key)
        if exp is None:
            self._note_missing_experiment(now)
            return None
        if exp.get("status") == ExperimentStatus.RUNNING.value:
            return None
        over = f"search {key!r} is over"
        if self.store.count(key, [int(TrialState.NEW)]) == 0:
            return over
        if self.config.trust_pickled:
            return None  # it runs whatever is queued
        queued = self.store.trials(key, [TrialState.NEW], with_spec=False)
        if any("space" in doc for doc in queued):
            return None
        return over + self._leave_unnamed(queued, exp.get("space"))

    def _leave_unnamed(self, queued: list[dict[str, Any]], space: Any) -> str:
        """The queued trials of a finished search are all without a named space, which this
        worker never runs (plain fmin's pickled ones): in an experiment of a named space they
        are junk, and quarantined (:func:`rules.trial_problem`); otherwise left for a
        ``--trust-pickled`` worker. What was done, for the worker's exit line."""
        if isinstance(space, str):
            problems = [(doc, rules.trial_problem(doc, space=space)) for doc in queued]
            marked = sum(self.store.quarantine_trial(d, p) for d, p in problems if p is not None)
            return (
                f"; {counted(marked, 'queued document')} without a named space marked ERROR "
                f"(not a trial of space {space!r})"
            )
        return (
            f"; leaving {counted(len(queued), 'queued trial')} without a named space (plain "
            "hyperopt fmin's) to a worker started with --trust-pickled"
        )

    def _note_missing_experiment(self, now: float) -> None:
        """A worker pinned to an experiment that does not exist (a typo in --exp-key or --db,
        or a search not started yet) says so once, after ``MISSING_EXPERIMENT_NOTE_S`` idle,
        naming the experiments it could have meant. Plain fmin makes no experiment document:
        trials of the key count as an experiment."""
        key = self.config.exp_key
        if self._missing_noted or now - self._idle_since < MISSING_EXPERIMENT_NOTE_S:
            return
        self._missing_noted = True
        if key in self.store.trial_exp_keys():
            return  # plain hyperopt fmin's experiment
        exps = sorted(str(e.get("_id")) for e in self.store.list_experiments())
        known = [shown(k, bare=True) for k in exps]
        known = known[:10] + ([f"…({len(known)} experiments)"] if len(known) > 10 else [])
        logger.warning(
            "no experiment %r in database %r yet (%s); waiting for it: check --exp-key and --db "
            "if no search is about to start",
            key,
            self.store.db_name,
            f"known: {', '.join(known)}" if known else "the database holds no experiments",
        )

    def _register(self, tid: int | None, force: bool = False) -> None:
        """Refresh this worker's row in ``workers`` (host, GPU, current trial, last seen), at most
        once per heartbeat interval: short trials would otherwise pay one write each."""
        now = time.monotonic()
        if force or now - self._last_registered >= self.config.heartbeat_s:
            self._last_registered = now
            self.store.worker_heartbeat(self.info, tid)

    # -- signals --------------------------------------------------------------------------------

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.signals += 1
        self.stopping.set()
        name = signal.Signals(signum).name
        running = self._current is not None
        if self.signals == 1 and not self.config.requeue_on_term:
            if running:
                logger.warning(
                    "%s: finishing trial tid %s, then exiting (send it again to hand the "
                    "trial back now)",
                    name,
                    self._current.tid,
                )  # type: ignore[union-attr]
            return
        if running:
            logger.warning("%s: handing trial tid %s back now", name, self._current.tid)  # type: ignore[union-attr]
            self.interrupt.set()
            if self._in_process_trial:
                raise Interrupted()
