"""Evaluate one trial: resolve its objective, run it, and turn what happened into an Outcome.

This runs inside the process that executes trials (the supervised child, or the worker itself
with ``--no-isolate``). It keeps resolved objectives per experiment, so imports, data and compiled
functions stay warm across trials.
"""

from __future__ import annotations

import logging
import math
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import bson
from hyperopt import STATUS_FAIL, STATUS_OK, STATUS_STRINGS, base, space_eval
from hyperopt.utils import coarse_utcnow

from coordinator import rules
from coordinator.errors import (
    CheckpointNotSaved,
    CheckpointRefused,
    ConfigError,
    Interrupted,
    SpaceError,
    StoreUnavailable,
    TrialLost,
)
from coordinator.pruning import (
    AttemptJudge,
    Decision,
    Pruner,
    PruningConfig,
    make_pruner,
    pruned_result,
)
from coordinator.pruning.base import rung_key
from coordinator.states import Verdict
from coordinator.store import Lease, TrialStoreBase, to_bson
from coordinator.store.base import Checkpoint
from search_spaces import SearchSpace, get_space, load_spaces

CANCEL_CHECK_S = 2.0  #: how often a running objective's ``should_stop`` asks the store

logger = logging.getLogger(__name__)


@dataclass
class Outcome:
    """What one evaluation produced. ``error`` is set when the objective raised."""

    result: dict[str, Any]
    params: dict[str, Any] | None
    duration_s: float
    error: dict[str, Any] | None = None
    lost: bool = False
    #: why the result was dropped (``lost``): the lease went, or MongoDB stayed unreachable
    lost_reason: str = "lost the lease; another worker owns it now"
    fields: dict[str, Any] = field(default_factory=dict)
    #: whether the trial saved a checkpoint (deleted by the worker once the trial has ended)
    checkpointed: bool = False


@dataclass
class Resolved:
    """How to run the trials of one experiment."""

    space: SearchSpace | None
    settings: dict[str, Any]
    hyperopt_space: Any
    domain: base.Domain | None = None
    pruner: Pruner | None = None  #: the experiment's early-stopping rule (``--prune``)


class Resolver:
    """Find the objective of a trial: the named space recorded on its experiment, or (only with
    ``trust_pickled``) hyperopt's pickled Domain for people who call ``fmin`` themselves."""

    def __init__(
        self, store: TrialStoreBase, spaces: tuple[str, ...] = (), trust_pickled: bool = False
    ):
        self.store = store
        self.trust_pickled = trust_pickled
        for path in spaces:
            load_spaces(path)
        self._cache: dict[tuple[str | None, str | None], Resolved] = {}

    def resolve(self, doc: dict[str, Any]) -> Resolved:
        key = (doc.get("exp_key"), doc.get("space"))
        if key not in self._cache:
            self._cache[key] = self._resolve(doc)
        return self._cache[key]

    def _resolve(self, doc: dict[str, Any]) -> Resolved:
        exp_key, name = doc.get("exp_key"), doc.get("space")
        if name is not None:
            space = get_space(name)
            exp = self.store.get_experiment(exp_key) if exp_key is not None else None
            try:
                settings = space.resolve_settings((exp or {}).get("settings", {}))
            except ConfigError as e:
                raise SpaceError(f"experiment {exp_key!r}: {e}") from e
            pruner = make_pruner(PruningConfig.from_doc((exp or {}).get("pruning")), self.store)
            return Resolved(space, settings, space.hyperopt_space(settings), pruner=pruner)
        if not self.trust_pickled:
            raise SpaceError(
                f"tid {doc.get('tid')} of {exp_key!r} has no named space; only a worker started "
                "with --trust-pickled runs hyperopt's pickled objectives"
            )
        blob = self.store.get_domain_blob(exp_key)
        if blob is None:
            raise SpaceError(f"experiment {exp_key!r} has no FMinIter_Domain attachment")
        from hyperopt.fmin import pickler

        domain = pickler.loads(blob)
        return Resolved(None, {}, domain.expr, domain=domain)


class TrialContextImpl:
    """The ``ctx`` an objective receives (see ``search_spaces.base.TrialContext``): every write
    is fenced on the trial's lease. ``report_epoch`` answers a :class:`Verdict` (a lost lease is
    ``LEASE_LOST``, and the result is then dropped); the other writes raise ``TrialLost``."""

    def __init__(
        self,
        store: TrialStoreBase,
        lease: Lease,
        settings: dict[str, Any],
        extra: dict[str, Any],
        pruner: Pruner | None = None,
    ) -> None:
        self.store = store
        self.lease = lease
        self.settings = settings
        self.tid = lease.tid
        self.attempt = lease.attempt
        self.exp_key = lease.exp_key
        self.info = extra  #: worker/device facts the objective may add to its result
        self._stop_checked = 0.0
        self.verdict = Verdict.CONTINUE  #: the last report's verdict; only CONTINUE goes on
        self.pruned: Decision | None = None  #: the decision that stopped this trial, if one did
        self._judge = (
            AttemptJudge(pruner, lease.exp_key, lease.tid, lease.attempt)
            if pruner is not None and lease.exp_key is not None
            else None
        )
        #: the epoch this attempt started after (0: from scratch); None until it is known
        self.resumed_from: int | None = None
        self.checkpointed = False  #: whether this attempt saved a checkpoint
        self.saved_epoch: int | None = None  #: the epoch of this attempt's last checkpoint

    def load_checkpoint(
        self, restore: Callable[[Checkpoint], object] | None = None
    ) -> Checkpoint | None:
        """The trial's last checkpoint, saved by an earlier attempt (``None``: start from
        scratch), passed to ``restore`` first when one is given. A stored checkpoint that
        cannot be used (corrupt, partial, foreign, or refused by ``restore`` raising
        ``CheckpointRefused``) is refused with one warning, and the trial starts from scratch.
        Either way the per-epoch records of the epochs to be trained again are dropped, so the
        learning curve continues where the checkpoint left it."""
        try:
            checkpoint = self.store.load_checkpoint(self.lease)
            # one was stored (used or not): it goes when the trial ends
            self.checkpointed = self.checkpointed or checkpoint is not None
            if checkpoint is not None and restore is not None:
                restore(checkpoint)
        except CheckpointRefused as e:
            self.checkpointed = True
            logger.warning(
                "tid %s: its checkpoint cannot be used (%s); starting from epoch 0", self.tid, e
            )
            checkpoint = None
        self._resume_at(0 if checkpoint is None else checkpoint.epoch)
        if checkpoint is not None:
            logger.info(
                "tid %s: attempt %s resumes after epoch %s (checkpoint of attempt %s)",
                self.tid,
                self.attempt,
                checkpoint.epoch,
                checkpoint.attempt,
            )
        return checkpoint

    def save_checkpoint(self, epoch: int, data: bytes) -> None:
        """Save ``data`` as the trial's state after ``epoch`` epochs (replacing the last one):
        a later attempt of this trial gets it from :meth:`load_checkpoint`. One that cannot be
        written (a full shared directory) was warned about by the store: the trial goes on,
        its last checkpoint stays, and this one does not count as saved."""
        try:
            saved = self.store.save_checkpoint(self.lease, epoch, data)
        except CheckpointNotSaved:
            return
        if not saved:
            raise TrialLost(f"tid {self.tid}: lease lost; checkpoint of epoch {epoch} dropped")
        self.checkpointed = True
        self.saved_epoch = epoch

    def _resume_at(self, epoch: int) -> None:
        if self.resumed_from is not None:
            return
        self.resumed_from = epoch
        if self._judge is not None:  # the rungs up to the checkpoint were judged already
            self._judge.previous_epoch = epoch
        if (epoch > 0 or self.attempt > 1) and not self.store.resume_at(self.lease, epoch):
            raise TrialLost(f"tid {self.tid}: lease lost before it started")

    def report_epoch(self, metrics: dict[str, Any]) -> Verdict:
        """Store one epoch's metrics and answer whether to go on: the one decision point
        (lease lost, cancelled, the experiment's early-stopping rule, in that order)."""
        if self.verdict is not Verdict.CONTINUE:
            return self.verdict
        if self.resumed_from is None:  # an earlier attempt's records are trained again
            self._resume_at(0)
        metrics = to_bson(metrics)
        if not self.store.record_epoch(self.lease, metrics):
            self.verdict = Verdict.LEASE_LOST
        elif self._cancelled():
            self.verdict = Verdict.CANCELLED
        elif self._judge is not None:
            decision = self._judge.report(metrics)
            if decision is not None and decision.prune:
                self.pruned = decision
                self.verdict = Verdict.PAUSE if decision.pause else Verdict.PRUNE
        return self.verdict

    def should_stop(self) -> bool:
        """True once a report said stop, or the experiment was cancelled."""
        if self.verdict is Verdict.CONTINUE and self._cancelled():
            self.verdict = Verdict.CANCELLED
        return self.verdict is not Verdict.CONTINUE

    def _cancelled(self) -> bool:
        """Whether the experiment was cancelled (asked at most every ``CANCEL_CHECK_S``)."""
        now = time.monotonic()
        if now - self._stop_checked > CANCEL_CHECK_S and self.exp_key:
            self._stop_checked = now
            return self.store.cancel_requested(self.exp_key)
        return False

    def attach(self, name: str, data: bytes) -> None:
        if not self.store.attach(self.lease, name, data):
            raise TrialLost(f"tid {self.tid}: lease lost; attachment {name!r} dropped")

    def best_loss(self) -> float | None:
        """The lowest loss among this experiment's successful trials so far (None: none yet)."""
        best = self.store.best_trial(self.exp_key)
        return None if best is None else best["result"]["loss"]

    def drop_superseded_models(self, name: str, worse_than: float) -> int:
        """Delete attachment ``name`` of the experiment's other finished trials whose loss is
        above ``worse_than``; returns how many went."""
        return self.store.drop_superseded_models(self.exp_key, name, worse_than, keep_tid=self.tid)


#: the largest result a trial document takes (MongoDB's limit is 16 MiB for the whole document)
MAX_RESULT_BYTES = 4 * 2**20


def check_result(result: Any) -> dict[str, Any]:
    """Validate a hyperopt result dict; a NaN or infinite loss turns it into STATUS_FAIL. A bare
    number is the loss, as ``hyperopt.fmin`` takes it. A result that would not fit in its trial
    document is refused here, with one line, rather than by the database."""
    if isinstance(result, (int, float)) and not isinstance(result, bool):
        result = {"loss": result, "status": STATUS_OK}
    if not isinstance(result, dict):
        raise TypeError(f"the objective returned {type(result).__name__}, expected a dict")
    result = to_bson(result)
    size = len(bson.encode(result))
    if size > MAX_RESULT_BYTES:
        raise ValueError(
            f"the result is {size / 2**20:.1f} MiB encoded; results must stay under "
            f"{MAX_RESULT_BYTES / 2**20:.0f} MiB: store large outputs as trial attachments"
        )
    status = result.get("status", STATUS_OK if "loss" in result else None)
    if status not in STATUS_STRINGS:
        raise ValueError(f"result status {status!r} is not one of {STATUS_STRINGS}")
    result["status"] = status
    if status == STATUS_OK:
        loss = result.get("loss")
        if not isinstance(loss, (int, float)) or isinstance(loss, bool):
            raise TypeError(f"result loss {loss!r} is not a number")
        if not math.isfinite(loss):
            result["status"] = STATUS_FAIL
            result["failure"] = f"loss is {loss}: training diverged"
            result["loss"] = None
    return result


def _not_finite(loss: Any) -> bool:
    """Whether ``loss`` is a NaN or infinite number (any numeric type)."""
    try:
        return not math.isfinite(loss)
    except (TypeError, ValueError, OverflowError):
        return False


def error_info(exc: BaseException) -> dict[str, Any]:
    return {
        "type": type(exc).__name__,
        "message": str(exc),
        "traceback": "".join(traceback.format_exception(exc)),
        "at": coarse_utcnow(),
    }


def evaluate(
    resolver: Resolver, store: TrialStoreBase, lease: Lease, extra: dict[str, Any]
) -> Outcome:
    """Run the trial held by ``lease`` here and now; the objective's exceptions become
    ``Outcome.error``, a lost lease ``Outcome.lost``; :class:`Interrupted` propagates."""
    started = time.perf_counter()
    params = None
    pruned: Decision | None = None
    paused = False
    checkpointed = False
    ctx: TrialContextImpl | None = None
    try:
        resolved = resolver.resolve(lease.doc)
        spec = base.spec_from_misc(lease.doc["misc"])
        params = to_bson(space_eval(resolved.hyperopt_space, spec))
        if resolved.domain is not None:
            ctrl = base.Ctrl(None, current_trial=lease.doc)
            result = resolved.domain.evaluate(spec, ctrl)
        else:
            ctx = TrialContextImpl(store, lease, resolved.settings, extra, resolved.pruner)
            result = resolved.space.run_objective(params, ctx)  # type: ignore[union-attr]
            if ctx.verdict is Verdict.LEASE_LOST:
                raise TrialLost(f"tid {lease.tid}: lease lost; result dropped")
            pruned = ctx.pruned
            checkpointed = ctx.checkpointed
            paused = pruned is not None and paused_at(ctx, pruned)
        diverged = _not_finite(result.get("loss") if isinstance(result, dict) else result)
        result = check_result(result)
        timing = phases(result, started)
        if pruned is not None and resolved.pruner is not None:
            result = pruned_result(
                result,
                pruned,
                resolved.pruner.config.metric,
                lambda: (rules.ok_loss(d) for d in store.trial_outcomes(lease.exp_key)),
                diverged=diverged,
            )
            if paused and "pruned" in result:
                result["pruned"]["paused"] = True  # kept, with its checkpoint, for promotion
    except TrialLost:
        return Outcome({}, params, time.perf_counter() - started, lost=True)
    except StoreUnavailable as e:  # not the objective's fault: no ERROR for an outage
        reason = f"result dropped: {e}"
        return Outcome({}, params, time.perf_counter() - started, lost=True, lost_reason=reason)
    except Interrupted:
        raise  # the worker hands the trial back (second signal, in-process trials)
    except Exception as e:  # noqa: BLE001 - any objective error is recorded, the worker goes on
        duration = time.perf_counter() - started
        checkpointed = ctx is not None and ctx.checkpointed  # an ERROR trial keeps none either
        return Outcome({}, params, duration, error=error_info(e), checkpointed=checkpointed)
    duration = time.perf_counter() - started
    return Outcome(result, params, duration, fields={"timing": timing}, checkpointed=checkpointed)


def paused_at(ctx: TrialContextImpl, decision: Decision) -> bool:
    """Whether a trial the rule paused (``--promote``) can be promoted later: it saved a
    checkpoint of the epoch it paused at. One that did not (its space keeps no checkpoints,
    ``--checkpoint-every 0``, a checkpoint over the size bound) is stopped for good, as
    ``--prune`` without ``--promote`` stops it."""
    if not decision.pause:
        return False
    if ctx.saved_epoch == decision.epoch:
        return True
    saved = "none" if ctx.saved_epoch is None else f"epoch {ctx.saved_epoch}"
    why = (
        f"paused at epoch {decision.epoch} with no checkpoint of it (this attempt saved "
        f"{saved}): stopped for good"
    )
    logger.info("tid %s: %s, it cannot be promoted", ctx.tid, why)
    key = rung_key(ctx.exp_key or "", decision.bracket or 0, decision.rung or 0, ctx.tid)
    ctx.store.settle_pause(key, why)  # its rung record says so: "prune", not "pause"
    return False


def phases(result: dict[str, Any], started: float) -> dict[str, float]:
    """The trial's ``timing``: the phases the objective measured (``result["timing"]``, moved
    out of the result), ``evaluate_s`` (the whole evaluation here) and ``outside_training_s``
    (``evaluate_s`` less the objective's ``steady_s``, when it measured one), rounded to 0.1 ms."""
    timing = result.pop("timing", None)
    timing = dict(timing) if isinstance(timing, dict) else {}
    timing["evaluate_s"] = time.perf_counter() - started
    if isinstance(timing.get("steady_s"), (int, float)):
        timing["outside_training_s"] = timing["evaluate_s"] - timing["steady_s"]
    return {k: round(float(v), 4) for k, v in timing.items() if isinstance(v, (int, float))}
