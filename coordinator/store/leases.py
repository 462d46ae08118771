"""The worker's side of the contract: reserve a trial, keep its lease, finish, fail or release it.

Every write here is one update filtered on the lease's fence (trial, RUNNING, owner, attempt),
so a worker whose lease was reaped changes nothing and learns so from the ``False`` (or
``None``) it gets back. Lease times and ``mtime`` (set by every write, heartbeats included)
come from ``$$NOW``/``$currentDate``: the database's clock.

Round trips: a worker of trivial trials pays for coordination in server operations, so several
writes may share one ``bulk_write`` (:meth:`LeaseWrites.reserve_trials`: the endings of the
trials just run and the claim of the next ones; :meth:`LeaseWrites.release_held`). Each
statement in it is still its own atomic, fenced write. The server answers a bulk with totals
only; when they fall short of what was sent (a lost lease, or a retry after a lost reply), one
read of the documents says which writes took effect (:func:`_took_effect`).
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Iterable, Sequence
from typing import Any

import pymongo

from coordinator import defaults, rules
from coordinator.states import AttemptOutcome, TrialState
from coordinator.store.base import Ending, Lease, Reservation
from coordinator.store.connection import retrying
from coordinator.store.encoding import utcnow
from coordinator.store.experiments import AttemptLimits, cancel_update
from coordinator.store.handles import MongoHandles, StorePart
from coordinator.store.quarantine import Quarantine

#: candidates read per reservation try (claimed in random order, to spread competing workers)
_CANDIDATES = 4
#: tries of a reservation (each: read candidates, claim) before it says nothing is queued
_TRIES = 8


class LeaseWrites(StorePart):
    """Part of :class:`~coordinator.store.mongo.TrialStore`; see :mod:`coordinator.store.base`."""

    def __init__(self, mongo: MongoHandles, limits: AttemptLimits, quarantine: Quarantine) -> None:
        super().__init__(mongo)
        self._limits = limits
        self._quarantine = quarantine

    def reserve_trial(
        self,
        owner: str,
        *,
        exp_key: str | None = None,
        lease_s: float = defaults.LEASE_S,
        trusted: bool = False,
        worker: dict[str, Any] | None = None,
        skip_exp_keys: Iterable[str | None] = (),
    ) -> Lease | None:
        """Claim one NEW trial for ``owner``; ``None`` when none is queued (see
        :meth:`reserve_trials`)."""
        reserved = self.reserve_trials(
            owner,
            1,
            exp_key=exp_key,
            lease_s=lease_s,
            trusted=trusted,
            worker=worker,
            skip_exp_keys=skip_exp_keys,
        )
        return reserved.leases[0] if reserved.leases else None

    def reserve_trials(
        self,
        owner: str,
        n: int = 1,
        *,
        exp_key: str | None = None,
        lease_s: float = defaults.LEASE_S,
        trusted: bool = False,
        worker: dict[str, Any] | None = None,
        skip_exp_keys: Iterable[str | None] = (),
        endings: Iterable[Ending] = (),
    ) -> Reservation:
        """Write ``endings`` and claim up to ``n`` NEW trials for ``owner`` in one round trip.

        An indexed ``find`` picks candidates (fast on both SecantusDB, whose findAndModify scans
        the collection, and MongoDB); one conditional update claims up to ``n`` of them that
        share the ``attempt`` read: ``{_id: {$in: ...}, state: NEW, owner: None, attempt}``
        (an ``$or`` of per-trial pairs would scan the collection on SecantusDB). Filtered on
        the ``attempt`` read, two workers can never both win one attempt, and the claimed
        documents are known here without reading them again. A candidate that
        :func:`rules.trial_problem` refuses is never claimed: it goes to
        :meth:`quarantine_trial` and is not read again by this store. ``skip_exp_keys``:
        experiments this caller does not serve.
        """
        endings = list(endings)
        query: dict[str, Any] = {"state": int(TrialState.NEW)}
        if exp_key is not None:
            query["exp_key"] = exp_key
        skipped = list(skip_exp_keys)
        if skipped and exp_key is None:
            query["exp_key"] = {"$nin": skipped}
        ended: list[bool] | None = None  # None: the endings are not written yet
        for _ in range(_TRIES):
            unusable = self._quarantine.unusable_ids()
            if unusable:
                query["_id"] = {"$nin": unusable}
            candidates = self._reserve_candidates(query, trusted, max(_CANDIDATES, 2 * n))
            if not candidates:
                break
            usable = []
            for cand in candidates:
                problem = rules.trial_problem(cand)
                if problem is None:
                    usable.append(cand)
                else:
                    self._quarantine.quarantine_trial(cand, problem)
            if not usable:
                continue
            chosen = _same_attempt(usable, n)
            claim = _claim_update(owner, lease_s, worker, first=chosen[0]["_id"])
            got, now_ended = self._claim(owner, chosen, claim, endings if ended is None else [])
            ended = now_ended if ended is None else ended
            if got:
                leases = [_claimed_lease(doc, owner, lease_s, worker) for doc in got]
                return Reservation(leases, ended)
        if ended is None:
            ended = self.end_trials(endings)
        return Reservation([], ended)

    def _claim(
        self,
        owner: str,
        chosen: list[dict[str, Any]],
        claim: list[dict[str, Any]],
        endings: list[Ending],
    ) -> tuple[list[dict[str, Any]], list[bool]]:
        """Write ``endings`` and claim ``chosen`` (candidates sharing one ``attempt``) in one
        round trip; returns the candidates claimed and, per ending, whether it was written."""
        attempt = chosen[0].get("attempt")
        claim_filter = {
            "_id": {"$in": [c["_id"] for c in chosen]},
            "state": int(TrialState.NEW),
            "owner": None,
            "attempt": attempt,  # unchanged since we read it (None: never reserved)
        }
        ops = [_ending_op(e) for e in endings]
        ops.append(pymongo.UpdateMany(claim_filter, claim))
        matched = self._bulk(ops)
        if matched == len(endings) + len(chosen):
            return chosen, [True] * len(endings)
        # fewer than sent: a competitor claimed some, a lease was lost, or a retry re-sent
        # writes that had taken effect; the documents say which
        ids = [e.lease.id for e in endings] + [c["_id"] for c in chosen]
        now = {d["_id"]: d for d in self._read_back(ids)}
        mine = (attempt or 0) + 1
        got = [
            c
            for c in chosen
            if (d := now.get(c["_id"])) is not None
            and d.get("state") == int(TrialState.RUNNING)
            and (d.get("owner"), d.get("attempt")) == (owner, mine)
        ]
        return got, [_took_effect(e, now.get(e.lease.id)) for e in endings]

    def end_trials(self, endings: Iterable[Ending]) -> list[bool]:
        """Write each ending (fenced on its lease) in one round trip; ``False`` where the lease
        was lost."""
        endings = list(endings)
        if not endings:
            return []
        if self._bulk([_ending_op(e) for e in endings]) == len(endings):
            return [True] * len(endings)
        now = {d["_id"]: d for d in self._read_back([e.lease.id for e in endings])}
        return [_took_effect(e, now.get(e.lease.id)) for e in endings]

    def release_held(self, leases: Iterable[Lease], reason: str) -> int:
        """Hand back claimed, never started trials (REQUEUED: not counted) in one round trip;
        returns how many went back."""
        leases = list(leases)
        if not leases:
            return 0
        return self._bulk([_release_op(lease, reason) for lease in leases])

    def cancel_held(self, leases: Iterable[Lease]) -> int:
        """Claimed, never started trials of a cancelled experiment: RUNNING -> CANCEL (fenced
        on each lease), as ``hyperfleet cancel`` marks queued ones; returns how many."""
        leases = list(leases)
        if not leases:
            return 0
        update = cancel_update(lease_expires=None, held=False)
        return self._bulk([pymongo.UpdateOne(lease.fence, update) for lease in leases])

    @retrying
    def _bulk(self, ops: Sequence[Any]) -> int:
        """Send ``ops`` in one round trip (unordered: each is its own fenced write); how many
        documents they matched."""
        return self.jobs.bulk_write(list(ops), ordered=False).matched_count

    @retrying
    def _read_back(self, ids: list[Any]) -> list[dict[str, Any]]:
        fields = ["state", "owner", "attempt", "error", "attempt_history"]
        return list(self.jobs.find({"_id": {"$in": ids}}, projection=fields))

    @retrying
    def _reserve_candidates(
        self, query: dict[str, Any], trusted: bool, limit: int = _CANDIDATES
    ) -> list[dict[str, Any]]:
        """Up to ``limit`` NEW trials, oldest first; untrusted workers only get named-space ones.

        ``space`` is checked here rather than with ``$exists`` in the query: SecantusDB then
        scans every trial of the experiment (230 ms at 5,000 trials instead of 2 ms).
        """
        found = list(self.jobs.find(query, sort=[("tid", 1)], limit=limit))
        if trusted:
            return found
        named = [doc for doc in found if "space" in doc]
        if named or len(found) < limit:
            return named
        # the oldest queued trials are all pickled ones: look past them (rare, slow path)
        query = {**query, "space": {"$exists": True}}
        return list(self.jobs.find(query, sort=[("tid", 1)], limit=limit))

    @retrying
    def heartbeat(self, lease: Lease, lease_s: float) -> bool:
        """Renew ``lease`` for ``lease_s`` seconds of server time; ``False`` if it was lost."""
        renewed = self.jobs.update_one(
            lease.fence,
            [
                {
                    "$set": {
                        "refresh_time": "$$NOW",
                        "lease_expires": {"$add": ["$$NOW", int(lease_s * 1000)]},
                        "mtime": "$$NOW",
                    }
                }
            ],
        )
        return renewed.matched_count == 1

    @retrying
    def record_epoch(self, lease: Lease, metrics: dict[str, Any]) -> bool:
        """Append one epoch's metrics to the trial's ``epochs`` list; ``False`` if lease lost."""
        pushed = self.jobs.update_one(
            lease.fence,
            {"$push": {"epochs": metrics}, "$currentDate": {"refresh_time": True, "mtime": True}},
        )
        return pushed.matched_count == 1

    @retrying
    def finish(self, lease: Lease, result: dict[str, Any], fields: dict[str, Any]) -> bool:
        """RUNNING -> DONE with ``result`` (and extra ``fields``); ``False`` if lease lost."""
        done = self.jobs.update_one(*_ending_write(Ending(lease, result, fields)))
        return done.matched_count == 1

    @retrying
    def fail(self, lease: Lease, error: dict[str, Any], fields: dict[str, Any]) -> bool:
        """RUNNING -> ERROR, recording ``error`` (type, message, traceback); ``False`` if lost."""
        failed = self.jobs.update_one(*_ending_write(Ending(lease, {}, fields, error)))
        return failed.matched_count == 1

    def release(
        self,
        lease: Lease,
        outcome: AttemptOutcome,
        reason: str,
        *,
        max_attempts: int | None = None,
    ) -> TrialState | None:
        """Hand a RUNNING trial back. Returns its new state, or ``None`` if the lease was lost.

        ``LOST`` and ``CRASHED`` count toward the limit (``max_attempts``, by default the
        experiment's :meth:`attempt_limit`); the release that reaches it marks the trial ERROR
        ("worker lost 3 times"). ``REQUEUED`` does not count.
        """
        limit = self._limits.attempt_limit(lease.exp_key) if max_attempts is None else max_attempts
        return self.release_fenced(self._with_progress(lease), outcome, reason, limit, None)

    @retrying
    def _with_progress(self, lease: Lease) -> Lease:
        """``lease`` with what its attempt did so far (resume point, checkpoint, epochs) read
        fresh, for the attempt history (a worker's lease holds the document as claimed)."""
        fields = (*_PROGRESS, "book_time", "refresh_time")  # the database's, for ``ran_s``
        doc = self.jobs.find_one(lease.fence, projection=dict.fromkeys(fields, 1))
        return lease if doc is None else Lease.from_doc({**lease.doc, **doc})

    @retrying
    def release_fenced(
        self,
        lease: Lease,
        outcome: AttemptOutcome,
        reason: str,
        limit: int,
        extra_filter: dict[str, Any] | None,
    ) -> TrialState | None:
        """Release ``lease`` with ``outcome`` against attempt limit ``limit``, fenced on the
        lease and ``extra_filter`` (the reaper adds the expiry it saw); the new state, or
        ``None`` when the fence no longer matched (someone else released it)."""
        update, new_state = _release_write(lease, outcome, reason, limit)
        fence = {**lease.fence, **(extra_filter or {})}
        released = self.jobs.update_one(fence, update)
        return new_state if released.matched_count == 1 else None


# -- the writes, built once for the single and the batched paths ---------------------------------


def _claim_update(
    owner: str, lease_s: float, worker: dict[str, Any] | None, first: Any = None
) -> list[Any]:
    """NEW -> RUNNING for ``owner``: ``attempt`` + 1 and a lease, on the database's clock.
    In a claim of several, every trial but ``first`` (the one the worker runs at once) is
    marked ``held``: if the worker is lost, the reaper requeues a held trial without counting
    an attempt (it most likely never ran)."""
    return [
        {
            "$set": {
                "state": int(TrialState.RUNNING),
                "owner": owner,
                "attempt": {"$add": [{"$ifNull": ["$attempt", 0]}, 1]},
                "book_time": "$$NOW",
                "refresh_time": "$$NOW",
                "lease_expires": {"$add": ["$$NOW", int(lease_s * 1000)]},
                "lease_s": lease_s,
                "worker": {"$literal": worker or {"id": owner}},
                "version": {"$add": [{"$ifNull": ["$version", 0]}, 1]},
                "mtime": "$$NOW",
                "held": {"$ne": ["$_id", first]} if first is not None else False,
            }
        }
    ]


def _claimed_lease(
    cand: dict[str, Any], owner: str, lease_s: float, worker: dict[str, Any] | None
) -> Lease:
    """The lease on a claimed candidate: what the claim wrote, applied locally (no read back;
    the server's timestamps stay unknown here, and nothing downstream needs them)."""
    doc = {
        **cand,
        "state": int(TrialState.RUNNING),
        "owner": owner,
        "attempt": (cand.get("attempt") or 0) + 1,
        "lease_s": lease_s,
        "worker": worker or {"id": owner},
        "version": cand.get("version", 0) + 1,
        "book_time": utcnow(),  # approximately; the document has server time
    }
    return Lease.from_doc(doc)


def _same_attempt(candidates: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """Up to ``n`` candidates, in random order (to spread competing workers), that share the
    ``attempt`` of a random one: one claim can then be filtered on that attempt. A trial that
    holds a checkpoint (an earlier attempt's progress, e.g. handed back at epoch 27 of 30) goes
    first: finishing it is worth more than starting a fresh one."""
    random.shuffle(candidates)
    candidates.sort(key=lambda c: not isinstance(c.get("checkpoint"), dict))  # stable
    attempt = candidates[0].get("attempt")
    return [c for c in candidates if c.get("attempt") == attempt][:n]


def _ending_write(ending: Ending) -> tuple[dict[str, Any], dict[str, Any]]:
    """RUNNING -> DONE (or ERROR, when the objective raised), fenced on the lease."""
    if ending.error is None:
        fields = {"state": int(TrialState.DONE), "result": ending.result}
    else:
        error = ending.error
        fields = {
            "state": int(TrialState.ERROR),
            "result": {"status": "fail", "failure": error.get("message", "")},
            "error": error,
            "misc.error": [error.get("type", ""), error.get("message", "")],
        }
    update = {
        "$set": {**fields, "lease_expires": None, **ending.fields},
        "$currentDate": {"ended": True, "refresh_time": True, "mtime": True},
        "$inc": {"version": 1},
    }
    return ending.lease.fence, update


def _ending_op(ending: Ending) -> pymongo.UpdateOne:
    return pymongo.UpdateOne(*_ending_write(ending))


def _took_effect(ending: Ending, doc: dict[str, Any] | None) -> bool:
    """Whether ``ending`` was written, judged from the document read after the batch: it is
    in the state the ending wrote, under the ending's owner and attempt (a reaper that gave
    up on the trial leaves ERROR under them too, but with its own error type)."""
    lease = ending.lease
    if doc is None or (doc.get("owner"), doc.get("attempt")) != (lease.owner, lease.attempt):
        return False
    if ending.error is None:
        return doc.get("state") == int(TrialState.DONE)
    return doc.get("state") == int(TrialState.ERROR) and doc.get("error", {}).get(
        "type"
    ) == ending.error.get("type")


def _release_write(
    lease: Lease, outcome: AttemptOutcome, reason: str, limit: int | None = None
) -> tuple[dict[str, Any], TrialState]:
    """RUNNING -> NEW, or ERROR once counted attempts reach ``limit`` (``None``: no limit,
    for ``REQUEUED``, which never counts); appends to ``attempt_history``."""
    counted = outcome is not AttemptOutcome.REQUEUED
    attempts = lease.doc.get("attempts", 0) + (1 if counted else 0)
    entry = {
        "attempt": lease.attempt,
        "owner": lease.owner,
        "outcome": outcome.value,
        "reason": reason,
        "started": lease.doc.get("book_time"),
        "at": utcnow(),
    }
    entry.update(_progress(lease))
    ran = _ran_s(lease.doc)
    if ran is not None:
        entry["ran_s"] = ran
    update: dict[str, Any] = {
        "$push": {"attempt_history": entry},
        "$set": {"attempts": attempts, "lease_expires": None},
        "$currentDate": {"refresh_time": True, "mtime": True},
        "$inc": {"version": 1},
    }
    if counted and limit is not None and attempts >= limit:
        verb = "lost" if outcome is AttemptOutcome.LOST else "crashed"
        message = f"worker {verb} {attempts} times (last: {reason})"
        update["$set"].update(
            state=int(TrialState.ERROR),
            result={"status": "fail", "failure": message},
            error={"type": f"Worker{verb.capitalize()}", "message": message},
        )
        return update, TrialState.ERROR
    update["$set"].update(state=int(TrialState.NEW), owner=None)
    return update, TrialState.NEW


#: the fields of a trial that say how far its attempt got (:func:`_progress`)
_PROGRESS = ("epochs", "checkpoint", "resumed_from_epoch", "resumed_in_attempt")


def _progress(lease: Lease) -> dict[str, Any]:
    """How far the attempt ending got, for its attempt history entry (from the document as
    the releaser read it; nothing for trials that report no epochs): epochs recorded, the epoch
    it resumed after, the epoch of the checkpoint it leaves for the next attempt."""
    doc, found = lease.doc, {}
    if isinstance(doc.get("epochs"), list) and doc["epochs"]:
        found["epochs_recorded"] = len(doc["epochs"])
    if doc.get("resumed_in_attempt") == lease.attempt:
        found["resumed_from_epoch"] = doc.get("resumed_from_epoch")
    checkpoint = doc.get("checkpoint")
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("epoch"), int):
        found["checkpoint_epoch"] = checkpoint["epoch"]
    return found


def _ran_s(doc: dict[str, Any]) -> float | None:
    """Seconds from an attempt's claim (``book_time``) to its last heartbeat
    (``refresh_time``), both on the database's clock: it ran at least that long, at most one
    heartbeat more. ``None`` for a held trial (claimed behind another, never started), and
    where either is not a date, they are out of order (a held trial's claim as the worker
    computed it, a hand edit) or further apart than a run can be."""
    if doc.get("held") is True:
        return None
    booked, refreshed = doc.get("book_time"), doc.get("refresh_time")
    if not isinstance(booked, dt.datetime) or not isinstance(refreshed, dt.datetime):
        return None
    if (booked.tzinfo is None) != (refreshed.tzinfo is None):
        return None
    ran = rules.ran_seconds((refreshed - booked).total_seconds())
    return None if ran is None else round(ran, 3)


def _release_op(lease: Lease, reason: str) -> pymongo.UpdateOne:
    """A claimed, never started trial handed back (its lease holds the claim as computed
    here, not read back: no ``ran_s``)."""
    lease = Lease.from_doc({**lease.doc, "refresh_time": None})
    return pymongo.UpdateOne(lease.fence, _release_write(lease, AttemptOutcome.REQUEUED, reason)[0])
