"""Names of trial states and experiment statuses: the one place they are defined.

Trial states keep hyperopt's integer values (``hyperopt.JOB_STATE_*``) so that stock
hyperopt tools and mongo-shell queries written for hyperopt keep working.
"""

from __future__ import annotations

import enum


class TrialState(enum.IntEnum):
    """State of one trial document (hyperopt's job states)."""

    NEW = 0  #: queued; any worker may reserve it
    RUNNING = 1  #: reserved by ``owner`` under lease ``attempt``
    DONE = 2  #: finished with a result (``result.status`` may still be ``fail``)
    ERROR = 3  #: the objective raised, crashed too often, or the worker was lost too often
    CANCEL = 4  #: cancelled before it ran

    @property
    def finished(self) -> bool:
        return self in FINISHED_STATES


FINISHED_STATES = frozenset({TrialState.DONE, TrialState.ERROR, TrialState.CANCEL})


class ExperimentStatus(enum.StrEnum):
    """Status of an experiment document (``experiments`` collection)."""

    RUNNING = "running"
    DONE = "done"
    CANCELLED = "cancelled"
    FAILED = "failed"


class WorkerStatus(enum.StrEnum):
    """State of a row in the ``workers`` registry; staleness is read from ``last_seen``."""

    ALIVE = "alive"  #: running and heartbeating (or killed before it could say otherwise)
    STOPPED = "stopped"  #: exited cleanly; ``stop_reason`` says why


class Verdict(enum.StrEnum):
    """What a trial's per-epoch report answers (``TrialContext.report_epoch``): go on, or stop
    and why. Only ``CONTINUE`` lets training go on; the objective stops for any other."""

    CONTINUE = "continue"
    PRUNE = "prune"  #: the experiment's early-stopping rule stopped it (DONE, ``result.pruned``)
    #: the rule paused it at a rung (``--promote``): the objective saves a checkpoint of this
    #: epoch and stops; DONE with ``result.pruned.paused`` until the coordinator promotes it
    PAUSE = "pause"
    CANCELLED = "cancelled"  #: the search was cancelled
    LEASE_LOST = "lease_lost"  #: this worker no longer owns the trial; its result is dropped


class AttemptOutcome(enum.StrEnum):
    """How one attempt at a trial ended without a result (``attempt_history[].outcome``)."""

    LOST = "lost"  #: the worker's lease expired (killed, paused, partitioned); counted
    CRASHED = "crashed"  #: the trial's process died (segfault, OOM kill, os._exit); counted
    REQUEUED = "requeued"  #: handed back on shutdown; not counted
    PAUSED = "paused"  #: paused at a rung, then promoted: resumed from its checkpoint; not counted
