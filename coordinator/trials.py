"""hyperopt's ``MongoTrials`` on pymongo 4, with an incremental refresh.

``hyperopt.fmin(fn, space, trials=HyperfleetTrials(...))`` works as with stock ``MongoTrials``
and the object offers the whole Trials API (``trials``, ``results``, ``losses()``,
``statuses()``, ``best_trial``, ``argmin``, attachments, ``delete_all``, ``view``);
``docs/hyperopt-compat.md`` lists the deliberate differences.

Stock ``refresh()`` downloads the id and version of every trial of the experiment on every poll
(O(n) per poll). Here every write to a trial stamps ``mtime`` with the database's clock (see
:mod:`coordinator.store.base`), so a refresh reads only the trials of its experiment written since
the newest ``mtime`` it has seen, minus ``REFRESH_OVERLAP_S`` (a write stamped just before the
previous read but committed just after it is still found); cost O(changes), whoever made them.
Counts come from the same cache, brought up to date the same way. A full read every
``FULL_REFRESH_EVERY_S`` remains as a safety net for writers that do not stamp ``mtime`` (e.g. a
mongo-shell edit) and for trials deleted by other processes.

Documents that cannot be used (:func:`coordinator.rules.trial_problem`: no ``misc``, no ``tid``,
a state ``"2"``, another search's parameters or space, ...) never reach hyperopt: the view, the
counts and the best trial skip them, each logged once; the housekeeping marks the search's own
queued or running ones ERROR (:meth:`HyperfleetTrials.take_refused`).

``hyperopt.fmin(fn, space, trials=HyperfleetTrials(...))`` runs :meth:`HyperfleetTrials.fmin`
(hyperopt calls a Trials object's own ``fmin``): the same loop and housekeeping as ``hyperfleet
search`` (:mod:`coordinator.housekeeping`): dead workers' trials are reaped, the poll adapts to
the pace of the trials, the queue to the live workers, and a seeded rerun continues its random
stream.
"""

from __future__ import annotations

import datetime as dt
import logging
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, MutableMapping
from typing import Any

import numpy as np
from hyperopt import base
from hyperopt.mongoexp import MongoTrials

from coordinator import defaults, rules
from coordinator.errors import ConfigError
from coordinator.hyperopt_jobs import HyperoptJobs
from coordinator.states import TrialState
from coordinator.store import DocId, TrialStore, connect, utcnow

logger = logging.getLogger(__name__)


class _QuietRedomain(logging.Filter):
    """Drops hyperopt's "over-writing old domain trials attachment" WARNING: every resumed
    search and every rerun of a plain fmin replaces the pickled domain, as it should; the
    coordinator says "resuming" instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != "over-writing old domain trials attachment"


logging.getLogger("hyperopt.fmin").addFilter(_QuietRedomain())

#: a full refresh every so often, as a safety net for writers that do not stamp ``mtime``
FULL_REFRESH_EVERY_S = 60.0
#: an incremental refresh also re-reads what was written this long before the newest change it
#: saw: a write whose server time was taken before the previous read but committed after it
#: (milliseconds on MongoDB; a stalled server thread may take longer, and the full refresh then
#: catches it). Each refresh re-reads about write rate x this many documents.
REFRESH_OVERLAP_S = 0.1
#: ``mtime`` further ahead of the server clock than this (a writer's own clock) never moves the
#: refresh's watermark
FUTURE_SLACK_S = 1.0
#: trial ids reserved from the database counter at a time
TID_BLOCK = 32
#: how often queueing checks whether the search was cancelled
CANCEL_CHECK_S = 0.25
#: counts asked for this soon after a refresh come from it (fmin counts right after refreshing)
COUNTS_FROM_REFRESH_S = 0.01

#: the experiment attachment that counts ``fmin`` runs (see :meth:`HyperfleetTrials.fmin`)
FMIN_RUNS = "hyperfleet.fmin_runs"

_EPOCH = dt.datetime(1970, 1, 1)
_UNFINISHED = (int(TrialState.NEW), int(TrialState.RUNNING))


def _visible(doc: dict[str, Any]) -> bool:
    # as stock MongoTrials: every trial but ERROR ones (in-memory Trials also hides CANCEL)
    return doc.get("state") != int(TrialState.ERROR)


def _order(doc: dict[str, Any]) -> tuple[int, Any]:
    return rules.tid_order(doc.get("tid"))


class HyperfleetTrials(MongoTrials):
    """``MongoTrials`` over a :class:`~coordinator.store.TrialStore`.

    ``arg`` is a ``TrialStore`` or a MongoDB URI (then ``db`` names the database). ``space_name``
    marks the trials this object inserts as belonging to a named search space, so untrusted
    workers may run them (and, while a search runs, the view skip other spaces'). ``on_poll`` is
    called (at most every ``poll_every_s``) from the polls that fmin makes while waiting,
    including its final wait: the housekeeping (:mod:`coordinator.housekeeping`) runs there.
    ``queue_len``: trials :meth:`fmin` keeps queued (``None``: twice the live workers, at least
    fmin's ``max_queue_len``).
    """

    def __init__(
        self,
        arg: TrialStore | str,
        exp_key: str | None = None,
        *,
        db: str = defaults.DB_NAME,
        space_name: str | None = None,
        refresh: bool = True,
        on_poll: Callable[[HyperfleetTrials], None] | None = None,
        poll_every_s: float = 1.0,
    ) -> None:
        store = arg if isinstance(arg, TrialStore) else connect(arg, db, wait=True)
        self.space_name = space_name
        self.on_poll = on_poll
        self.poll_every_s = poll_every_s
        self.queue_len: int | None = None
        #: the hyperparameter labels of the search being run (None: any document's)
        self._labels: frozenset[str] | None = None
        #: documents refused (by ``_id``): logged once; queued/running ones await quarantine
        self._refused: dict[DocId, str] = {}
        self._to_quarantine: dict[DocId, tuple[dict[str, Any], str]] = {}
        self._last_poll = 0.0
        self._fmin_cancelled = False
        self._tid_pool: list[int] = []
        self._allocated_up_to = -1
        #: a refresh asked for this soon after the previous one reuses it (0: never)
        self.refresh_reuse_s = 0.0
        self._reset_cache()
        self.store = store
        super().__init__(HyperoptJobs(store), exp_key=exp_key, refresh=refresh)

    def view(
        self, exp_key: str | None = None, cmd: Any = None, workdir: Any = None, refresh: bool = True
    ) -> HyperfleetTrials:
        return self.__class__(
            self.store,
            exp_key=self._exp_key if exp_key is None else exp_key,
            space_name=self.space_name,
            refresh=refresh,
        )

    # -- refresh --------------------------------------------------------------------------------

    def _reset_cache(self) -> None:
        #: every trial of the experiment read so far (ERROR ones too, for the counts), by _id
        self._docs: dict[DocId, dict[str, Any]] = {}
        self._counts: Counter[Any] = Counter()  #: states of ``_docs``
        #: the visible trials in tid order and their positions: kept up to date as changes
        #: arrive, so a refresh costs O(changes) reads and no O(n log n) sort in Python
        self._sorted: list[dict[str, Any]] = []
        self._pos: dict[DocId, int] = {}
        self._touched: dict[DocId, dict[str, Any]] = {}  #: read but not yet in ``_sorted``
        self._republish = True  #: the published lists predate this cache
        self._rebuild = False  #: a published trial was refused since: rebuild the lists
        self._max_int_tid = -1  #: the largest integer tid read (-1: none)
        self._watermark: dt.datetime | None = None  #: the newest ``mtime`` seen (server clock)
        self._server_offset: dt.timedelta | None = None  #: server clock - this one, roughly
        self._synced = False
        self._last_full = 0.0
        self._pulled_at = 0.0
        self._refreshed_at = 0.0

    def _pull(self) -> None:
        """Bring ``_docs`` and the counts up to date: everything on the first call and every
        ``FULL_REFRESH_EVERY_S``, otherwise what was written since the watermark."""
        store = self.store
        now = time.monotonic()
        if not self._synced or now - self._last_full > FULL_REFRESH_EVERY_S:
            self._reset_cache()
            self._server_offset = store.server_time() - utcnow()
            self._last_full = now
            docs = store.trials(self._exp_key)
            self._synced = True
        else:
            since = (self._watermark or _EPOCH) - dt.timedelta(seconds=REFRESH_OVERLAP_S)
            docs = store.changed_trials(self._exp_key, since)
        self._pulled_at = time.monotonic()
        self._apply(docs)

    def _apply(self, docs: list[dict[str, Any]]) -> None:
        offset = self._server_offset or dt.timedelta(0)
        horizon = utcnow() + offset + dt.timedelta(seconds=FUTURE_SLACK_S)
        for doc in docs:
            mtime = doc.get("mtime")
            if isinstance(mtime, dt.datetime) and mtime <= horizon:
                self._watermark = mtime if self._watermark is None else max(self._watermark, mtime)
            old = self._docs.get(doc["_id"])
            if old is not None:
                if old.get("version") == doc.get("version") and old.get("mtime") == mtime:
                    continue  # re-read in the overlap window, unchanged
                self._counts[old.get("state")] -= 1
            problem = self._problem(doc)
            if problem is not None:
                self._refuse(doc, problem, was_read=old is not None)
                continue
            self._docs[doc["_id"]] = doc
            self._counts[doc.get("state")] += 1
            self._touched[doc["_id"]] = doc
            tid = doc.get("tid")
            if isinstance(tid, int) and not isinstance(tid, bool):
                self._max_int_tid = max(self._max_int_tid, tid)

    def _problem(self, doc: dict[str, Any]) -> str | None:
        """Why this view cannot use ``doc`` (:func:`rules.trial_problem`; while it runs a search
        of a named space, another space's document too), or ``None``."""
        searching = self._labels is not None
        return rules.trial_problem(doc, self._labels, self.space_name if searching else None)

    def _refuse(self, doc: dict[str, Any], problem: str, *, was_read: bool) -> None:
        _id = doc["_id"]
        if was_read:  # usable before, refused now (e.g. rewritten by hand): out of the lists
            del self._docs[_id]
            self._touched.pop(_id, None)
            self._rebuild = True
        if self._refused.get(_id) != problem:
            logger.warning(
                "search %r: skipping job document %s (tid %.40r): %s",
                self._exp_key,
                _id,
                doc.get("tid"),
                problem,
            )
            self._refused[_id] = problem
            if doc.get("state") in _UNFINISHED:
                self._to_quarantine[_id] = (doc, problem)

    def take_refused(self) -> list[tuple[dict[str, Any], str]]:
        """Queued or running documents this view refused since the last call, with why: the
        housekeeping hands them to ``store.quarantine_trial`` (ERROR if the experiment is
        hyperfleet's, left alone otherwise), so no worker or count waits on them."""
        taken, self._to_quarantine = list(self._to_quarantine.values()), {}
        return taken

    def use_domain(self, domain: base.Domain) -> None:
        """Run a search of ``domain``: from now on the view also refuses documents whose
        parameters are not the domain's (its algorithm could not read them)."""
        labels = frozenset(domain.params)
        if labels != self._labels:
            self._labels = labels
            self._synced = False  # re-read everything under the new rule

    @property
    def stored(self) -> int:
        """How many usable trials of the experiment the view holds, in every state."""
        return len(self._docs)

    def _publish(self) -> None:
        """Fold the trials read since the last publish into the tid-ordered lists hyperopt
        reads (``trials``, ``specs``, ``results``, ``miscs``)."""
        if not self._touched and not self._republish and not self._rebuild:
            return
        touched, self._touched, self._republish = self._touched, {}, False
        new: list[dict[str, Any]] = []
        rebuild, self._rebuild = self._rebuild, False
        for _id, doc in touched.items():
            pos = self._pos.get(_id)
            if pos is None:
                if _visible(doc):
                    new.append(doc)
            elif _visible(doc) and _order(doc) == _order(self._sorted[pos]):
                self._sorted[pos] = doc  # the usual change: a state or result, in place
            else:
                rebuild = True  # hidden now (ERROR) or its tid changed: rare
        new.sort(key=_order)
        if rebuild or (new and self._sorted and _order(new[0]) <= _order(self._sorted[-1])):
            self._sorted = sorted((d for d in self._docs.values() if _visible(d)), key=_order)
            self._pos = {d["_id"]: i for i, d in enumerate(self._sorted)}
        else:  # the usual case: new trials have the newest tids
            for doc in new:
                self._pos[doc["_id"]] = len(self._sorted)
                self._sorted.append(doc)
        self._trials = list(self._sorted)
        self._specs = [d.get("spec") for d in self._sorted]
        self._results = [d.get("result") for d in self._sorted]
        self._miscs = [d.get("misc") for d in self._sorted]

    def refresh_tids(self, tids: Iterable[Any] | None) -> None:
        # ``tids`` narrows stock hyperopt's refresh; here any explicit request is a full refresh
        if tids is not None:
            self._synced = False
        elif self._synced and time.monotonic() - self._refreshed_at < self.refresh_reuse_s:
            # fmin refreshes after inserting and again before its next suggestion, a millisecond
            # later: the second would read the same documents (the coordinator opts in)
            return
        self._pull()
        self._publish()
        self._refreshed_at = time.monotonic()

    def refresh(self) -> None:
        self.refresh_tids(None)

    # -- writes and counts ----------------------------------------------------------------------

    _cancel_checked = 0.0

    @property
    def cancelled(self) -> bool:
        """Whether this search was cancelled (hyperopt's own flag, which stops fmin queueing)."""
        return self._fmin_cancelled

    def mark_cancelled(self) -> None:
        if not self._fmin_cancelled:
            logger.warning(
                "search %r cancelled: no new trials; waiting for running ones", self._exp_key
            )
        self._fmin_cancelled = True

    def _cancel_requested(self) -> bool:
        """Whether ``hyperfleet cancel`` was run for this experiment (read at most every
        ``CANCEL_CHECK_S``; the cancel command sweeps the queue again after that)."""
        if self._exp_key is None or self.space_name is None:
            return False
        now = time.monotonic()
        if now - self._cancel_checked < CANCEL_CHECK_S:
            return self._fmin_cancelled
        self._cancel_checked = now
        return self.store.cancel_requested(self._exp_key)

    def _insert_trial_docs(self, docs: list[dict[str, Any]]) -> list[DocId]:
        if self._cancel_requested():
            self.mark_cancelled()  # fmin stops queueing; nothing new reaches workers
            return []
        # client clock (``book_time`` is the server's): the dispatch latency queued -> reserved
        # is exact only where both run on one host, as in ``hyperfleet local`` and bench/
        queued = utcnow()
        for doc in docs:
            doc.setdefault("queued", queued)
            doc.setdefault("attempt", 0)
            doc.setdefault("attempts", 0)
            if self.space_name is not None:
                doc["space"] = self.space_name
        ids = self.store.insert_trials(docs)
        # the next refresh or count must read them: never reuse across an insert
        self._refreshed_at = self._pulled_at = 0.0
        return ids

    def count_by_state_unsynced(self, arg: Any) -> int:
        """Trials of the experiment in state(s) ``arg`` as a refresh would see them now (ERROR
        included), from the cache after reading what changed since the last read (reused
        within ``COUNTS_FROM_REFRESH_S``: fmin counts right after refreshing)."""
        self._maybe_poll()
        states = [arg] if isinstance(arg, int) else list(arg)
        for state in states:
            TrialState(state)  # raises ValueError on an unknown state, as hyperopt does
        if not self._synced or time.monotonic() - self._pulled_at >= COUNTS_FROM_REFRESH_S:
            self._pull()
        return sum(self._counts[state] for state in set(states))

    def state_counts(self) -> dict[TrialState, int]:
        """Trials by state as of the last refresh or count: no O(n) count or aggregate in the
        database, unlike ``store.count_by_state``."""
        if not self._synced:
            return self.store.count_by_state(self._exp_key)
        counts = dict.fromkeys(TrialState, 0)
        for state, n in self._counts.items():
            if state in TrialState._value2member_map_:
                counts[TrialState(state)] = n
        return counts

    def _maybe_poll(self) -> None:
        if self.on_poll is None:
            return
        now = time.monotonic()
        if now - self._last_poll >= self.poll_every_s:
            self._last_poll = now
            self.on_poll(self)

    def new_trial_ids(self, n: int) -> list[int]:
        """``n`` unused trial ids. They are reserved from the database's counter in blocks of
        ``TID_BLOCK`` (hyperopt asks for several and often uses one), so most calls cost nothing;
        ids stay unique across the database, and unused ones are simply never seen. They are
        also above every integer tid this object has read (e.g. warm-start documents from
        ``generate_trials_to_calculate``, numbered from 0), as in-memory ``Trials`` does."""
        floor = self._max_int_tid
        self._tid_pool = [t for t in self._tid_pool if t > floor]
        if len(self._tid_pool) < n:
            above = floor if floor >= 0 and floor >= self._allocated_up_to else None
            fresh = self.store.allocate_tids(max(n, TID_BLOCK), above=above)
            self._allocated_up_to = max(self._allocated_up_to, fresh[-1])
            self._tid_pool.extend(fresh)
        ids, self._tid_pool = self._tid_pool[:n], self._tid_pool[n:]
        return ids

    # -- hyperopt.fmin -------------------------------------------------------------------------

    def fmin(
        self,
        fn: Callable[..., Any],
        space: Any,
        algo: Callable[..., Any] | None = None,
        max_evals: int | None = None,
        timeout: float | None = None,
        loss_threshold: float | None = None,
        max_queue_len: int = 1,
        rstate: np.random.Generator | None = None,
        verbose: bool = False,
        pass_expr_memo_ctrl: Any = None,
        catch_eval_exceptions: bool = False,
        return_argmin: bool = True,
        show_progressbar: Any = True,
        early_stop_fn: Callable[..., Any] | None = None,
        trials_save_file: str = "",
    ) -> Any:
        """What ``hyperopt.fmin(..., trials=self)`` runs (hyperopt hands over to a Trials
        object's ``fmin``): hyperopt's own ``FMinIter`` over this object, asynchronous as with
        stock ``MongoTrials`` (workers started with ``--trust-pickled`` evaluate ``fn``), plus
        the housekeeping of ``hyperfleet search`` (:mod:`coordinator.housekeeping`): expired
        leases are reaped, so fmin never waits on a dead worker; the poll adapts to the pace of
        the trials instead of stock's one second; the queue holds twice the live workers (at
        least ``max_queue_len``; set :attr:`queue_len` to fix it); a cancelled search stops
        queueing; a rerun with the same ``rstate`` seed continues its random stream
        (:func:`~coordinator.housekeeping.continue_stream`). Returns what ``fmin`` returns."""
        from hyperopt import tpe
        from hyperopt.fmin import FMinIter, space_eval

        from coordinator.housekeeping import TICK_S, Housekeeping, NoWorkerNotice, continue_stream

        if algo is None:
            algo = tpe.suggest
        domain = base.Domain(fn, space, pass_expr_memo_ctrl=pass_expr_memo_ctrl)
        self.use_domain(domain)
        self._pull()  # for ``stored``; fmin counts the trials of the caller's last refresh
        runs = self._count_fmin_run()
        rstate = rstate or np.random.default_rng()
        house = Housekeeping(
            self.store, self._exp_key, queue_len=self.queue_len, min_queue=max_queue_len
        )
        stream = continue_stream(rstate, runs, self.stored) if runs else rstate
        fmin_iter = FMinIter(
            one_seed_per_id(algo, stream),
            domain,
            self,
            rstate=stream,
            asynchronous=True,
            max_queue_len=max_queue_len,
            poll_interval_secs=house.poll_s,
            max_evals=sys.maxsize if max_evals is None else max_evals,
            timeout=timeout,
            loss_threshold=loss_threshold,
            verbose=verbose,
            show_progressbar=show_progressbar,
            early_stop_fn=early_stop_fn,
            trials_save_file=trials_save_file,
        )
        fmin_iter.catch_eval_exceptions = catch_eval_exceptions
        house.attach(fmin_iter)
        saved = (self.on_poll, self.poll_every_s, self.refresh_reuse_s)
        user_poll = self.on_poll

        pinned = f" --exp-key {self._exp_key}" if self._exp_key is not None else ""
        notice = NoWorkerNotice(
            self.store,
            self._exp_key,
            hint=f"`hyperfleet worker --trust-pickled{pinned}` on the same database "
            "(plain fmin's objective is pickled: only --trust-pickled workers run it)",
            pickled=self.space_name is None,
        )

        def on_poll(trials: HyperfleetTrials) -> None:
            house.tick(trials)
            notice.check()
            if user_poll is not None:
                user_poll(trials)

        self.on_poll, self.poll_every_s = on_poll, min(self.poll_every_s, TICK_S)
        self.refresh_reuse_s = 0.005  # fmin refreshes twice in a row around each insert
        try:
            house.tick(self)
            fmin_iter.exhaust()
        finally:
            self.on_poll, self.poll_every_s, self.refresh_reuse_s = saved
        self.refresh()
        if return_argmin:
            if len(self.trials) == 0:
                raise Exception(  # hyperopt's own words and type
                    "There are no evaluation tasks, cannot return argmin of task losses."
                )
            return self.argmin
        if len(self) > 0:
            return space_eval(space, self.argmin)
        return None

    def _count_fmin_run(self) -> int:
        """How many ``fmin`` runs this experiment saw before this one (and count this one), in
        the experiment's attachment ``FMIN_RUNS``: a rerun is a resume whose random stream must
        go on, while a first run over warm-start trials keeps hyperopt's stream."""
        runs = 0
        if FMIN_RUNS in self.attachments:
            try:
                runs = int(self.attachments[FMIN_RUNS])
            except ValueError:
                runs = 1
        self.attachments[FMIN_RUNS] = str(runs + 1).encode()
        return runs

    def delete_all(self, cond: dict[str, Any] | None = None) -> None:
        """Delete this experiment's trials matching ``cond`` (all by default), their
        attachments and the experiment's attachments (:attr:`attachments`), as stock does."""
        self.store.delete_all(cond, exp_key=self._exp_key or None)
        self._reset_cache()
        self.refresh()

    def trial_attachments(self, trial: dict[str, Any]) -> TrialAttachments:
        """A trial's attachments (GridFS), a dict-like view as stock ``MongoTrials`` offers;
        a missing name is a ``KeyError``."""
        return TrialAttachments(self.store, trial)

    @property
    def attachments(self) -> ExperimentAttachments:  # type: ignore[override]
        """The experiment's own files (hyperopt's ``FMinIter_Domain``, fmin's run count), as
        stock ``MongoTrials.attachments`` offers them; every call rides out a server outage,
        and a replaced file is never missing for a moment."""
        return ExperimentAttachments(self.store, self._exp_key or None)


class ExperimentAttachments(MutableMapping[str, bytes]):
    """An experiment's files, a mapping of name to bytes (``in``, ``a[name]``, ``a[name] =
    bytes``, ``del a[name]``, ``len``, iteration, ``keys``/``values``/``items``); a missing
    name is a ``KeyError``."""

    def __init__(self, store: TrialStore, exp_key: str | None) -> None:
        self.store = store
        self.exp_key = exp_key

    def __contains__(self, name: object) -> bool:  # one query, not a read of the file
        return isinstance(name, str) and self.store.has_experiment_file(self.exp_key, name)

    def __len__(self) -> int:
        return len(self.store.experiment_file_names(self.exp_key))

    def __iter__(self) -> Iterator[str]:
        return iter(self.store.experiment_file_names(self.exp_key))

    def __getitem__(self, name: str) -> bytes:
        data = self.store.read_experiment_file(self.exp_key, name)
        if data is None:
            raise KeyError(name)
        return data

    def __setitem__(self, name: str, value: bytes) -> None:
        self.store.write_experiment_file(self.exp_key, name, value)

    def __delitem__(self, name: str) -> None:
        if not self.store.delete_experiment_file(self.exp_key, name):
            raise KeyError(name)


class TrialAttachments(MutableMapping[str, bytes]):
    """One trial's attachments, a mapping of name to bytes (``in``, ``a[name]``, ``a[name] =
    bytes``, ``del a[name]``, ``len``, iteration, ``keys``/``values``/``items``)."""

    def __init__(self, store: TrialStore, trial: dict[str, Any]) -> None:
        self.store = store
        self.trial = trial

    def _names(self) -> list[str]:
        return [str(a[0]) for a in self.trial.get("_attachments", [])]

    def __contains__(self, name: object) -> bool:
        return name in self._names()

    def __len__(self) -> int:
        return len(self._names())

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __getitem__(self, name: str) -> bytes:
        data = self.store.get_attachment(self.trial, name)
        if data is None:
            raise KeyError(name)
        return data

    def __setitem__(self, name: str, value: bytes) -> None:
        HyperoptJobs(self.store).set_attachment(self.trial, value, name)

    def __delitem__(self, name: str) -> None:
        if name not in self:
            raise KeyError(name)
        HyperoptJobs(self.store).delete_attachment(self.trial, name)


def open_trials(uri: str, exp_key: str, db: str = defaults.DB_NAME) -> HyperfleetTrials:
    """Open one experiment's trials for reading (e.g. in a notebook)."""
    return HyperfleetTrials(connect(uri, db), exp_key=exp_key)


def trial_rows(
    trials: HyperfleetTrials | str,
    exp_key: str | None = None,
    db: str = defaults.DB_NAME,
    *,
    dataframe: bool | None = None,
) -> Any:
    """One experiment's trials as flat rows, for notebooks: a list of dicts (the columns of
    ``hyperfleet export``: ``tid``, ``state``, ``loss``, ``params.*``, ``result.*``, timing,
    ``worker.*``), or a pandas DataFrame when ``dataframe`` is true (default: when pandas is
    installed).

    ``trials`` is what :func:`open_trials` returned, or a MongoDB URI (then ``exp_key`` names
    the experiment).
    """
    from coordinator.inspect import load_rows

    if isinstance(trials, HyperfleetTrials):
        store, key = trials.store, trials._exp_key if exp_key is None else exp_key
    else:
        store, key = connect(trials, db), exp_key
    if key is None:
        raise ConfigError("trial_rows needs an exp_key (or trials opened with one)")
    rows = load_rows(store, key)
    if dataframe is False:
        return rows
    try:
        import pandas as pd
    except ImportError:
        if dataframe:
            raise ConfigError(
                "trial_rows(dataframe=True) needs pandas: pip install pandas"
            ) from None
        return rows
    from coordinator.inspect import columns

    return pd.DataFrame(rows, columns=columns(rows))


def one_seed_per_id(algo: Callable[..., Any], rstate: np.random.Generator) -> Callable[..., Any]:
    """``algo`` asked as consecutive fmin calls would ask it: one id at a time, each with its
    own seed, each seeing the suggestions made before it as queued trials.

    The housekeeping lets fmin's queue hold several trials, so fmin may ask ``algo`` for a batch
    of ids with one seed, where one-at-a-time refills ask once per id with a seed each, after
    inserting the previous suggestion. With one seed per batch a seeded search drew different
    points depending on how fast the workers drained the queue; and an algorithm that answers a
    batch from one view of the trials (hyperopt's TPE, anneal) spreads a batch less. Here the
    first id gets fmin's seed, the next ones seeds drawn from fmin's own ``rstate`` (what its
    next calls would have drawn), and each later id sees the batch's earlier suggestions as
    queued (the fleet-aware TPE then gives them its liar's loss). The points of a seeded random
    search or random start-up are the same however the batches fall."""

    def each(new_ids: list[Any], domain: Any, trials: Any, seed: int, *a: Any, **kw: Any) -> Any:
        docs: list[Any] = []
        for i, new_id in enumerate(new_ids):
            own_seed = seed if i == 0 else int(rstate.integers(2**31 - 1))
            seen = trials if not docs else _WithQueued(trials, docs)
            got = algo([new_id], domain, seen, own_seed, *a, **kw)
            if not got:  # the algorithm has nothing more to suggest: fmin stops on an empty list
                return docs or got
            docs.extend(got)
        return docs

    return each


class _WithQueued(base.Trials):
    """``trials`` as an algorithm would see it had fmin inserted ``queued`` before asking:
    hyperopt's ``Trials`` reads (``trials``, ``tids``, ``vals``, ``losses()``...) over the real
    trials plus ``queued``; new documents are made by the real object."""

    def __init__(self, real: Any, queued: list[dict[str, Any]]) -> None:
        super().__init__(exp_key=getattr(real, "_exp_key", None), refresh=False)
        self._real = real
        self._trials = [*real.trials, *queued]
        self._dynamic_trials = self._trials
        self._ids = {doc.get("tid") for doc in self._trials}
        self.attachments = real.attachments

    def new_trial_docs(self, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        return self._real.new_trial_docs(*args, **kwargs)

    def refresh(self) -> None:  # a snapshot: nothing to read
        pass
