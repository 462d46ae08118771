"""The trial store's contract: what coordinator, workers and tools may rely on, whatever backs it.

Backends (today :class:`coordinator.store.mongo.TrialStore`) implement :class:`TrialStoreBase`;
``tests/coordinator/store`` checks any of them against this contract.

Invariants
----------
* **One atomic write per state change**, filtered on the state it expects to replace. A write
  whose expectation no longer holds changes nothing and says so (``False`` or ``None``): it never
  overwrites what another process did in between.
* **The fence.** A worker's writes to its trial are also filtered on ``owner`` and ``attempt``
  (:attr:`Lease.fence`): once its lease was reaped (or the trial handed to someone else), its
  writes report ``False`` and change nothing.
* **Finished trials never change state** (DONE, ERROR, CANCEL). The one later write to a
  finished trial is :meth:`TrialStoreBase.drop_superseded_models`, which removes a model file,
  never a result.
* **The database clock** sets every timestamp that liveness depends on (``lease_expires``,
  ``refresh_time``, a worker's ``last_seen``); callers' clocks may disagree with each other.
* **Every write to a trial document stamps ``mtime``** with the database clock, inserts
  included, so :meth:`TrialStoreBase.changed_trials` finds every change whoever made it (a
  program that writes the documents without going through the store, e.g. a mongo-shell edit,
  must set ``mtime`` too, or readers see its change only at their next full read).
* **Reaping is idempotent** and safe from any number of processes at once: each release is
  fenced and re-checks the expiry, so every expired lease is released exactly once.
* **Attempts.** A lost (lease expired) or crashed attempt counts; the one that reaches the
  experiment's limit (:meth:`TrialStoreBase.attempt_limit`) makes the trial ERROR. A requeue on
  shutdown does not count.
* **Experiment status changes are conditional** on the status they expect, so e.g. a cancel that
  lands while a coordinator starts or finishes is never silently undone. Every experiment write
  increments the document's ``version``.
* **One coordinator per experiment.** The coordinator that starts a search writes its lease
  (``coordinator``: ``id``, ``host``, ``pid``, ``lease_s``, ``renewed`` in server time) with the
  document, conditionally on the ``version`` it read, and renews it fenced on its ``id``; a
  renewal also increments ``version``, so a second coordinator that read a live lease can never
  overwrite it.
* **Errors.** Every method may raise :class:`~coordinator.errors.StoreUnavailable` (the server
  stayed unreachable longer than the outage budget; nothing was lost) and
  :class:`~coordinator.errors.AuthError` (credentials refused). Operations retry through short
  outages on their own.

Documents follow hyperopt's job protocol (see ``docs/schema.md``): integer states
(:class:`~coordinator.states.TrialState`), ``tid``, ``spec``, ``result``, ``misc``.
"""

from __future__ import annotations

import abc
import datetime as dt
from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from typing import Any, TypeAlias

from coordinator import defaults
from coordinator.states import AttemptOutcome, ExperimentStatus, TrialState

#: a trial document's ``_id``: opaque to callers (compare, hash, pass back)
DocId: TypeAlias = Hashable
Doc: TypeAlias = dict[str, Any]


@dataclass(frozen=True)
class Lease:
    """A worker's claim on one RUNNING trial; its fields fence every write the worker makes."""

    id: DocId
    tid: int
    exp_key: str | None
    owner: str
    attempt: int
    doc: Doc

    @property
    def fence(self) -> dict[str, Any]:
        """What every write under this lease is conditioned on: this trial, still RUNNING,
        still ``owner``'s, still this ``attempt``."""
        return {
            "_id": self.id,
            "state": int(TrialState.RUNNING),
            "owner": self.owner,
            "attempt": self.attempt,
        }

    @classmethod
    def from_doc(cls, doc: Doc) -> Lease:
        return cls(
            id=doc["_id"],
            tid=doc["tid"],
            exp_key=doc.get("exp_key"),
            owner=doc["owner"],
            attempt=doc.get("attempt", 0),
            doc=doc,
        )


@dataclass(frozen=True)
class Ending:
    """A trial's end with an outcome, to be written under its lease: DONE with ``result``, or
    ERROR when the objective raised (``error``: ``type``, ``message``, ``traceback``).
    ``fields`` are extra fields set with it (``params``, ``duration_s``, ``timing``)."""

    lease: Lease
    result: dict[str, Any]
    fields: dict[str, Any]
    error: dict[str, Any] | None = None


@dataclass(frozen=True)
class Reservation:
    """What :meth:`TrialStoreBase.reserve_trials` did: the trials it claimed (each under its
    own lease) and, for each ending it was given, whether that ending was written (``False``:
    the lease was lost; another worker's result stands)."""

    leases: list[Lease]
    ended: list[bool]


@dataclass(frozen=True)
class Checkpoint:
    """A trial's saved state: ``data`` (the objective's bytes) after ``epoch`` epochs, written
    by attempt ``attempt``."""

    epoch: int
    data: bytes
    attempt: int


class TrialStoreBase(abc.ABC):
    """The store contract (see the module docstring for the invariants every method keeps).

    ``exp_key=None`` in a read or count means every experiment in the database.
    """

    db_name: str

    @abc.abstractmethod
    def close(self) -> None:
        """Release the connection; the store is unusable afterwards."""

    @abc.abstractmethod
    def server_time(self) -> dt.datetime:
        """The database server's clock (naive UTC), the one leases are measured on."""

    # -- workers: the lease protocol ----------------------------------------------------------

    @abc.abstractmethod
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
        """Claim one NEW trial (one of the oldest) for ``owner``: NEW -> RUNNING, ``attempt`` + 1,
        a lease of ``lease_s`` seconds of server time. ``None`` when nothing is queued.

        No two callers ever get the same trial and attempt. Untrusted workers only get trials of
        named spaces (``space`` set), never pickled hyperopt Domains. A document that
        :func:`coordinator.rules.trial_problem` refuses is never claimed: it goes to
        :meth:`quarantine_trial`. Without ``exp_key``, trials of ``skip_exp_keys`` are not taken.
        """

    @abc.abstractmethod
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
        """Write ``endings`` (as :meth:`end_trials` does) and claim up to ``n`` NEW trials for
        ``owner``, as :meth:`reserve_trial` claims one: each claimed trial has its own lease and
        ``attempt`` + 1, and no two callers ever get the same trial and attempt. Both travel in
        one round trip; ``leases`` is empty when nothing is queued (the endings are written
        all the same). Each ending and each claim is its own fenced write: sharing a round trip
        makes none of them depend on another."""

    @abc.abstractmethod
    def end_trials(self, endings: Iterable[Ending]) -> list[bool]:
        """Write several trials' endings (:meth:`finish` or :meth:`fail` for each) in one round
        trip; for each, ``False`` if its lease was lost."""

    @abc.abstractmethod
    def release_held(self, leases: Iterable[Lease], reason: str) -> int:
        """Hand back RUNNING trials that were claimed but never started (a worker's extra
        claims on shutdown, or behind a slow trial): NEW again, not counted as an attempt
        (``requeued`` in ``attempt_history``), in one round trip. Returns how many went back
        (a lease already lost is left alone)."""

    @abc.abstractmethod
    def heartbeat(self, lease: Lease, lease_s: float) -> bool:
        """Renew ``lease`` for ``lease_s`` seconds from now (server time); ``False`` if lost."""

    @abc.abstractmethod
    def record_epoch(self, lease: Lease, metrics: dict[str, Any]) -> bool:
        """Append one epoch's metrics to the trial's ``epochs``; ``False`` if the lease is lost."""

    @abc.abstractmethod
    def finish(self, lease: Lease, result: dict[str, Any], fields: dict[str, Any]) -> bool:
        """RUNNING -> DONE with ``result`` (and extra ``fields``); ``False`` if the lease is lost
        (another worker's result then stands)."""

    @abc.abstractmethod
    def fail(self, lease: Lease, error: dict[str, Any], fields: dict[str, Any]) -> bool:
        """RUNNING -> ERROR, recording ``error`` (``type``, ``message``, ``traceback``);
        ``False`` if the lease is lost."""

    @abc.abstractmethod
    def release(
        self,
        lease: Lease,
        outcome: AttemptOutcome,
        reason: str,
        *,
        max_attempts: int | None = None,
    ) -> TrialState | None:
        """Hand a RUNNING trial back: NEW, or ERROR once counted attempts reach the limit
        (``max_attempts``, by default :meth:`attempt_limit` of the trial's experiment).
        Returns the new state, ``None`` if the lease was lost. Every release is appended to
        ``attempt_history``."""

    @abc.abstractmethod
    def attach(self, lease: Lease, name: str, data: bytes) -> bool:
        """Store ``data`` as the trial's attachment ``name``, replacing an older one;
        ``False`` (and nothing kept) if the lease is lost."""

    @abc.abstractmethod
    def attempt_limit(self, exp_key: str | None, default: int = defaults.MAX_ATTEMPTS) -> int:
        """Counted attempts a trial of ``exp_key`` gets before it is ERROR: the experiment's
        ``max_attempts`` (:func:`coordinator.rules.max_attempts`), ``default`` where the
        experiment records none. Cached briefly."""

    # -- coordinator: queueing and liveness ---------------------------------------------------

    @abc.abstractmethod
    def allocate_tids(self, n: int, *, above: int | None = None) -> list[int]:
        """``n`` fresh trial ids, unique across the database even under concurrent callers;
        all greater than ``above`` when given."""

    @abc.abstractmethod
    def insert_trials(self, docs: list[Doc]) -> list[DocId]:
        """Insert trial documents (hyperopt's; usually NEW, any state for a warm start), each
        stamped with ``mtime``; a retry after a lost reply inserts nothing twice. Returns their
        ids. An ``_id`` that another trial already uses raises
        :class:`~coordinator.errors.TrialWriteRefused`."""

    @abc.abstractmethod
    def delete_all(self, cond: Doc | None = None, *, exp_key: str | None = None) -> None:
        """Delete the trials matching ``cond`` (all by default; narrowed to ``exp_key``) with
        their attachments, and the experiment's own files matching the same condition
        (hyperopt's ``MongoTrials.delete_all``)."""

    @abc.abstractmethod
    def quarantine_trial(self, doc: Doc, problem: str) -> bool:
        """A document :func:`coordinator.rules.trial_problem` refused for ``problem``: marked
        ERROR with the reason if it belongs to an experiment hyperfleet created (fenced on the
        ``state``, ``owner`` and ``attempt`` read; ``True`` if this call wrote), left alone
        otherwise (``False``); logged once per process and not read again by hot paths."""

    @abc.abstractmethod
    def reap_expired(
        self, exp_key: str | None = None, *, max_attempts: int | None = None
    ) -> list[int]:
        """Release (as LOST) every RUNNING trial whose lease expired by the server's clock;
        returns the tids this call released. Idempotent and safe to run concurrently; a
        document :func:`coordinator.rules.trial_problem` refuses goes to :meth:`quarantine_trial`.
        ``max_attempts`` is the limit for experiments that record none."""

    # -- named reads (readers never write) ----------------------------------------------------

    @abc.abstractmethod
    def trials(
        self,
        exp_key: str | None,
        states: Iterable[TrialState | int] | None = None,
        *,
        with_spec: bool = True,
    ) -> list[Doc]:
        """Trial documents of ``exp_key`` (all states, or ``states``), in tid order; without
        hyperopt's bulky ``spec`` unless ``with_spec``."""

    @abc.abstractmethod
    def changed_trials(self, exp_key: str | None, since: dt.datetime) -> list[Doc]:
        """The trials of ``exp_key`` (every state, ERROR included) whose ``mtime`` is at or
        after ``since`` (server time), any order; cost O(matches), not O(trials)."""

    @abc.abstractmethod
    def view_trials(self, exp_key: str, since: dt.datetime | None = None) -> list[Doc]:
        """Lean trial documents of ``exp_key`` for viewers (the dashboard): with ``epochs`` and
        ``mtime``, without ``spec``, ``result.history``, ``attempt_history`` and
        ``error.traceback``; all, or those whose ``mtime`` is at or after ``since``; any order."""

    @abc.abstractmethod
    def trial_outcomes(self, exp_key: str | None) -> list[Doc]:
        """Lean trial documents for summaries: ``tid``, ``state``, ``result``, ``queued``,
        ``book_time``, ``ended``, ``duration_s``, ``attempts`` (and the other
        :data:`coordinator.rules.TRIAL_FIELDS` but ``misc``), and ``problem``: why the document
        cannot be used (:func:`coordinator.rules.trial_problem`), ``None`` if it can; tid order."""

    @abc.abstractmethod
    def get_trial(self, exp_key: str | None, tid: int) -> Doc | None:
        """One trial document by ``tid``; ``None`` if there is none."""

    @abc.abstractmethod
    def count(self, exp_key: str | None, states: Iterable[TrialState | int]) -> int:
        """How many trials of ``exp_key`` are in one of ``states``."""

    @abc.abstractmethod
    def count_by_state(self, exp_key: str | None) -> dict[TrialState, int]:
        """Trials of ``exp_key`` by state (every state present, zero where none)."""

    @abc.abstractmethod
    def queued_exp_keys(self) -> set[Any]:
        """The exp keys of the NEW trials (``None`` for a trial without one)."""

    @abc.abstractmethod
    def trial_exp_keys(self, states: Iterable[TrialState | int] | None = None) -> set[Any]:
        """The exp keys of the trials in ``states`` (all: ``None``); ``None`` for a trial
        without one, the text of an exp key that is not a string or number."""

    # -- experiments --------------------------------------------------------------------------

    @abc.abstractmethod
    def get_experiment(self, exp_key: str) -> Doc | None:
        """The experiment document (``_id`` is the exp key); ``None`` if there is none."""

    @abc.abstractmethod
    def list_experiments(self) -> list[Doc]:
        """Every experiment document, oldest first."""

    @abc.abstractmethod
    def cancel_requested(self, exp_key: str) -> bool:
        """Whether the experiment asks every process to stop (:func:`rules.cancel_requested`)."""

    @abc.abstractmethod
    def create_experiment(self, doc: Doc) -> bool:
        """Insert a new experiment document (``version`` 1); ``False`` if ``doc["_id"]`` exists
        (nothing is changed then)."""

    @abc.abstractmethod
    def replace_experiment(self, doc: Doc, *, version: int | None) -> bool:
        """Replace the experiment document only if its ``version`` is still ``version`` (as
        read; ``None``: a document written before versions existed). ``False`` when anything
        wrote to it in between: re-read and decide again."""

    @abc.abstractmethod
    def finish_experiment(
        self,
        exp_key: str,
        status: ExperimentStatus,
        fields: dict[str, Any],
        *,
        expect: ExperimentStatus = ExperimentStatus.RUNNING,
    ) -> bool:
        """Record a search's outcome ``fields``, and set ``status`` only if the status is still
        ``expect``. ``False`` when the status had changed (e.g. cancelled): it stands."""

    @abc.abstractmethod
    def cancel_queued(self, exp_key: str) -> int:
        """Mark the queued (NEW) trials of ``exp_key`` CANCEL; returns how many (a search loop
        that notices a cancel sweeps what it queued meanwhile)."""

    @abc.abstractmethod
    def cancel_held(self, leases: Iterable[Lease]) -> int:
        """Trials a worker claimed but never started, of a cancelled experiment: RUNNING ->
        CANCEL, fenced on each lease; returns how many."""

    @abc.abstractmethod
    def cancel_experiment(self, exp_key: str, settle_s: float = 1.0) -> int:
        """Ask every process to stop ``exp_key`` (sets ``cancel_requested``; a RUNNING status
        becomes CANCELLED) and mark its queued trials CANCEL; returns how many were queued.
        Sweeps the queue twice, ``settle_s`` apart, to catch a trial queued just before the
        coordinator noticed."""

    @abc.abstractmethod
    def renew_coordinator(self, exp_key: str, holder_id: str) -> bool:
        """Renew the coordinator lease on the experiment (``coordinator.renewed`` set to the
        server's clock), only while ``coordinator.id`` is still ``holder_id``; ``False`` when
        another coordinator took the experiment over (the caller must stop queueing)."""

    @abc.abstractmethod
    def release_coordinator(self, exp_key: str, holder_id: str) -> bool:
        """End ``holder_id``'s coordinator lease (``coordinator.renewed`` set to null, so the
        next coordinator starts at once); ``False`` if it holds none any more."""

    @abc.abstractmethod
    def annotate_experiment(self, exp_key: str, fields: dict[str, Any]) -> bool:
        """Set informational ``fields`` (never ``status``, ``cancel_requested``, ``version``:
        :class:`ValueError`); ``False`` if there is no such experiment."""

    # -- worker registry ----------------------------------------------------------------------

    @abc.abstractmethod
    def worker_heartbeat(self, info: dict[str, Any], current_tid: int | None) -> None:
        """Upsert this worker's row (``info["id"]``) as ALIVE, ``last_seen`` in server time."""

    @abc.abstractmethod
    def worker_stopped(self, worker_id: str, reason: str) -> None:
        """Mark the worker's row STOPPED with ``stop_reason``."""

    @abc.abstractmethod
    def list_workers(self, *, alive_only: bool = True) -> list[Doc]:
        """Registry rows (all, or those not STOPPED), newest ``last_seen`` first; staleness is
        the caller's call (compare with :meth:`server_time`)."""

    @abc.abstractmethod
    def live_workers(self, max_age_s: float, exp_key: str | None = None) -> list[Doc]:
        """ALIVE workers seen in the last ``max_age_s`` seconds of server time; with
        ``exp_key``, those serving it or any experiment."""

    # -- attachments and models ---------------------------------------------------------------

    @abc.abstractmethod
    def get_attachment(self, doc: Doc, name: str) -> bytes | None:
        """The bytes of attachment ``name`` of trial ``doc``; ``None`` if it has none."""

    @abc.abstractmethod
    def best_trial(self, exp_key: str | None, *, with_attachment: str | None = None) -> Doc | None:
        """The best successful trial (:func:`coordinator.rules.best_trial`: lowest loss, then
        lowest tid), optionally among those holding attachment ``with_attachment``."""

    @abc.abstractmethod
    def drop_superseded_models(
        self, exp_key: str | None, name: str, worse_than: float, *, keep_tid: int
    ) -> int:
        """Delete attachment ``name`` from the DONE trials of ``exp_key`` that are not
        successful with a loss at or below ``worse_than``, except ``keep_tid``; returns how many
        went. Conditional on the attachment list read, so concurrent calls are safe."""

    @abc.abstractmethod
    def get_domain_blob(self, exp_key: str | None) -> bytes | None:
        """hyperopt's pickled ``FMinIter_Domain`` for ``exp_key`` (for trusted workers only)."""

    @abc.abstractmethod
    def experiment_file_names(self, exp_key: str | None) -> list[str]:
        """The names of the experiment's own GridFS files (``MongoTrials.attachments``)."""

    @abc.abstractmethod
    def has_experiment_file(self, exp_key: str | None, name: str) -> bool:
        """Whether the experiment has a file ``name``."""

    @abc.abstractmethod
    def read_experiment_file(self, exp_key: str | None, name: str) -> bytes | None:
        """The newest version of the experiment's file ``name``; ``None`` if there is none."""

    @abc.abstractmethod
    def write_experiment_file(self, exp_key: str | None, name: str, data: bytes) -> None:
        """Replace the experiment's file ``name``, the new version written before the old go."""

    @abc.abstractmethod
    def delete_experiment_file(self, exp_key: str | None, name: str) -> bool:
        """Delete every version of the experiment's file ``name``; ``False`` if there was none."""

    # -- early stopping: rung records (coordinator.pruning; one per exp, bracket, rung, trial) --

    @abc.abstractmethod
    def record_rung(self, record: Doc) -> Doc:
        """Insert one rung record (``_id``: its key) atomically and return it; if the key exists,
        write nothing and return the stored record (its decision stands)."""

    @abc.abstractmethod
    def rung_values(self, exp_key: str, bracket: int, rung: int) -> dict[int, float]:
        """``{tid: value}`` of the rung records at one rung (records without a value left out)."""

    @abc.abstractmethod
    def promote_paused(self, trial_id: DocId, key: str, reason: str) -> bool:
        """Promote a trial paused at a rung (``--promote``): its rung record ``key`` becomes
        ``promoted``, then the trial DONE (``result.pruned.paused``) -> NEW, to be resumed from
        its checkpoint, one ``paused`` entry in its attempt history. Whether this call
        promoted it (``False``: it was not paused any more, e.g. promoted by another)."""

    @abc.abstractmethod
    def settle_pause(self, key: str, reason: str) -> None:
        """A trial the rule paused at rung record ``key`` could not be paused (it saved no
        checkpoint of that epoch) and was stopped for good: the record says ``prune`` (with
        ``why``), not ``pause``."""

    @abc.abstractmethod
    def finished_curves(
        self, exp_key: str, metric: str, *, known: Iterable[int] = ()
    ) -> dict[int, dict[int, float] | None]:
        """Finished trials not in ``known``: ``{tid: {epoch: metric}}`` for DONE, ok, unpruned
        ones, ``{tid: None}`` for the rest (finished trials never change: cache them)."""

    # -- checkpoints: a trial's saved state, resumed by its next attempt (store/checkpoints.py) --

    @abc.abstractmethod
    def save_checkpoint(self, lease: Lease, epoch: int, data: bytes) -> bool:
        """Store ``data`` as the trial's checkpoint after ``epoch`` epochs (fenced on the
        lease), replacing the older one, which is deleted once the new one is linked; ``False``
        (and the new one deleted) if the lease is lost."""

    @abc.abstractmethod
    def load_checkpoint(self, lease: Lease) -> Checkpoint | None:
        """The trial's checkpoint, checked against its link; ``None`` if it has none. Raises
        :class:`~coordinator.errors.CheckpointRefused` (saying why) for a corrupt, partial,
        foreign or malformed one."""

    @abc.abstractmethod
    def resume_at(self, lease: Lease, epoch: int) -> bool:
        """This attempt starts after ``epoch`` epochs (0: from scratch): keep the first
        ``epoch`` per-epoch records, drop those of the epochs to be trained again, and record
        ``resumed_from_epoch``; ``False`` if the lease is lost."""

    @abc.abstractmethod
    def drop_checkpoints(
        self,
        *,
        trial_ids: Iterable[DocId] = (),
        exp_key: str | None = None,
        search_ended: bool = True,
    ) -> int:
        """Delete the checkpoints of ended trials (DONE, ERROR, CANCEL) among ``trial_ids``, or
        of experiment ``exp_key`` together with the files of its ended trials that no link
        names (a worker killed between writing one and linking it); returns how many went.
        Never touches a NEW or RUNNING trial; never one paused at a rung (``--promote``: its
        checkpoint is what a promotion resumes) but by ``exp_key`` with ``search_ended``: the
        search's end stops its paused trials for good and takes theirs too."""

    @abc.abstractmethod
    def drop_orphan_chunks(self, *, min_age_s: float | None = None) -> int:
        """Sweep GridFS uploads that never finished (:mod:`coordinator.store.uploads`): note
        the file ids that have chunks and no ``fs.files`` document (with the database's time
        first seen), and delete the chunks of those noted over ``min_age_s`` ago (``None``:
        ``$HYPERFLEET_ORPHAN_CHUNK_AGE_S``, else :data:`~coordinator.defaults.ORPHAN_CHUNK_AGE_S`)
        that still have none: what a writer killed in the middle of an upload leaves (GridFS
        writes a file's document after its chunks). Returns how many files' chunks went."""
