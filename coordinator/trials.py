"""hyperopt's ``Trials``/``MongoTrials`` surface over the store: a thin adapter.

``hyperopt.fmin(fn, space, trials=HyperfleetTrials(...))`` works as with stock ``MongoTrials``
and the object offers the whole Trials API (``trials``, ``results``, ``losses()``,
``statuses()``, ``best_trial``, ``argmin``, attachments, ``delete_all``, ``view``);
``docs/hyperopt-compat.md`` lists the deliberate differences.

The trials are read through a :class:`~coordinator.trial_view.TrialView` (an incremental refresh:
O(changes) per read instead of stock's O(n), documents nobody can use skipped); writes go to the
store. hyperopt's ``MongoJobs`` surface is :class:`~coordinator.hyperopt_jobs.HyperoptJobs`.

``hyperopt.fmin(fn, space, trials=HyperfleetTrials(...))`` runs :meth:`HyperfleetTrials.fmin`
(hyperopt calls a Trials object's own ``fmin``): hyperfleet's own search loop
(:mod:`coordinator.loop`), the one ``hyperfleet search`` runs: dead workers' trials are reaped,
the poll adapts to the pace of the trials, the queue to the live workers, and a seeded rerun
continues its random stream.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterable, Iterator, MutableMapping
from typing import Any

import numpy as np
from hyperopt import base
from hyperopt.mongoexp import MongoTrials

from coordinator import defaults, rules
from coordinator.errors import ConfigError, StoreUnavailable
from coordinator.hyperopt_jobs import HyperoptJobs, store_from
from coordinator.states import TrialState
from coordinator.store import DocId, TrialStore, connect, utcnow
from coordinator.trial_view import TrialView

logger = logging.getLogger(__name__)


class _QuietRedomain(logging.Filter):
    """Drops hyperopt's "over-writing old domain trials attachment" WARNING: every resumed
    search and every rerun of a plain fmin replaces the pickled domain, as it should; the
    coordinator says "resuming" instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != "over-writing old domain trials attachment"


logging.getLogger("hyperopt.fmin").addFilter(_QuietRedomain())

#: trial ids reserved from the database counter at a time
TID_BLOCK = 32
#: how often queueing checks whether the search was cancelled (0: before every insert, so a
#: cancel is never followed by a trial this object queued)
CANCEL_CHECK_S = 0.0
#: counts asked for this soon after a read come from it (hyperopt counts right after refreshing)
COUNTS_FROM_REFRESH_S = 0.01

#: the experiment attachment that counts ``fmin`` runs (see :meth:`HyperfleetTrials.fmin`)
FMIN_RUNS = "hyperfleet.fmin_runs"


class HyperfleetTrials(MongoTrials):
    """hyperopt's ``Trials``/``MongoTrials`` surface over a :class:`~coordinator.store.TrialStore`.

    ``arg`` is a ``TrialStore``, a MongoDB URI (then ``db`` names the database) or hyperopt's
    ``mongo://host:port/db/jobs``. ``space_name`` marks the trials this object inserts as
    belonging to a named search space, so untrusted workers may run them (and, while a search
    runs, the view skips other spaces'). The trials themselves live in :attr:`cache`
    (:class:`~coordinator.trial_view.TrialView`); this class only presents them as hyperopt
    expects. ``queue_len``: trials :meth:`fmin` keeps queued (``None``: twice the live workers,
    eight times while trials are very short, at least fmin's ``max_queue_len``).
    """

    def __init__(
        self,
        arg: TrialStore | str,
        exp_key: str | None = None,
        *,
        db: str = defaults.DB_NAME,
        space_name: str | None = None,
        refresh: bool = True,
    ) -> None:
        store = store_from(arg, db)
        self.store = store
        self.space_name = space_name
        self.queue_len: int | None = None
        self.cache = TrialView(store, exp_key, space_name)
        self._fmin_cancelled = False
        self._cancel_checked = 0.0
        self._tid_pool: list[int] = []
        self._allocated_up_to = -1
        super().__init__(HyperoptJobs(store), exp_key=exp_key, refresh=refresh)

    def view(  # type: ignore[override]
        self, exp_key: str | None = None, cmd: Any = None, workdir: Any = None, refresh: bool = True
    ) -> HyperfleetTrials:
        return self.__class__(
            self.store,
            exp_key=self._exp_key if exp_key is None else exp_key,
            space_name=self.space_name,
            refresh=refresh,
        )

    # -- reads ----------------------------------------------------------------------------------

    def use_domain(self, domain: base.Domain) -> None:
        """Run a search of ``domain``: from now on the view also refuses documents whose
        parameters are not the domain's (its algorithm could not read them)."""
        self.cache.use_labels(frozenset(domain.params))

    @property
    def stored(self) -> int:
        """How many usable trials of the experiment the view holds, in every state."""
        return self.cache.stored

    def take_refused(self) -> list[tuple[dict[str, Any], str]]:
        return self.cache.take_refused()

    def refresh_tids(self, tids: Iterable[Any] | None) -> None:
        # ``tids`` narrows stock hyperopt's refresh; here any explicit request is a full read
        if tids is not None:
            self.cache.synced = False
        self.cache.pull()
        self._publish()

    def refresh(self) -> None:
        self.refresh_tids(None)

    def _publish(self) -> None:
        """The lists hyperopt reads (``trials``, ``specs``, ``results``, ``miscs``), rebuilt
        from the view when it changed."""
        if not self.cache.publish() and hasattr(self, "_trials"):
            return
        docs = self.cache.sorted
        self._trials = list(docs)
        self._specs = [d.get("spec") for d in docs]
        self._results = [d.get("result") for d in docs]
        self._miscs = [d.get("misc") for d in docs]

    def count_by_state_unsynced(self, arg: Any) -> int:
        """Trials of the experiment in state(s) ``arg`` as a refresh would see them now (ERROR
        included), from the view after reading what changed (reused within
        ``COUNTS_FROM_REFRESH_S``: hyperopt counts right after refreshing)."""
        states = [arg] if isinstance(arg, int) else list(arg)
        for state in states:
            TrialState(state)  # raises ValueError on an unknown state, as hyperopt does
        if (
            not self.cache.synced
            or time.monotonic() - self.cache.pulled_at >= COUNTS_FROM_REFRESH_S
        ):
            self.cache.pull()
        return self.cache.count(*states)

    def state_counts(self) -> dict[TrialState, int]:
        """Trials by state as of the last read: no O(n) count or aggregate in the database,
        unlike ``store.count_by_state``."""
        if not self.cache.synced:
            return self.store.count_by_state(self._exp_key)
        return self.cache.state_counts()

    def snapshot(self, docs: list[dict[str, Any]]) -> base.Trials:
        """An in-memory hyperopt ``Trials`` holding ``docs`` (e.g. the trials ended so far, for
        an ``early_stop_fn`` written against in-memory ``fmin``)."""
        snap = base.Trials(exp_key=self._exp_key, refresh=False)
        snap._dynamic_trials = list(docs)
        snap.attachments = self.attachments
        snap.refresh()
        return snap

    # -- writes ---------------------------------------------------------------------------------

    @property
    def cancelled(self) -> bool:
        """Whether this search was cancelled (``hyperfleet cancel``): nothing more is queued."""
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
        """Insert ``docs`` in one write; they join the cache at once (no read back)."""
        if self._cancel_requested():
            self.mark_cancelled()  # nothing new reaches workers
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
        self.cache.apply(docs)  # hyperopt's lists show them after the next refresh, as stock
        return ids

    def new_trial_ids(self, n: int) -> list[int]:
        """``n`` unused trial ids. They are reserved from the database's counter in blocks of
        ``TID_BLOCK`` (hyperopt asks for several and often uses one), so most calls cost nothing;
        ids stay unique across the database, and unused ones are simply never seen. They are
        also above every integer tid this object has read (e.g. warm-start documents from
        ``generate_trials_to_calculate``, numbered from 0), as in-memory ``Trials`` does."""
        floor = self.cache.max_int_tid
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
        object's ``fmin``): hyperfleet's search loop (:class:`~coordinator.loop.SearchLoop`, the
        one ``hyperfleet search`` runs) over this object, asynchronous as with stock
        ``MongoTrials`` (workers started with ``--trust-pickled`` evaluate ``fn``): expired
        leases are reaped, so fmin never waits on a dead worker; the poll adapts to the pace of
        the trials instead of stock's one second; the queue holds twice the live workers (eight
        times while trials are very short; at least ``max_queue_len``; set :attr:`queue_len` to
        fix it); a cancelled search stops queueing; a rerun with the same ``rstate`` seed
        continues its random stream (:func:`~coordinator.housekeeping.continue_stream`).
        Returns what ``fmin`` returns."""
        from hyperopt import tpe
        from hyperopt.fmin import space_eval

        from coordinator.housekeeping import Housekeeping, NoWorkerNotice, continue_stream
        from coordinator.loop import SearchLoop
        from coordinator.progress import SearchProgress

        if algo is None:
            algo = tpe.suggest
        if trials_save_file:
            logger.warning("fmin: trials_save_file is ignored: the trials are in MongoDB")
        domain = base.Domain(fn, space, pass_expr_memo_ctrl=pass_expr_memo_ctrl)
        self.use_domain(domain)
        self.cache.pull()  # for ``stored``; fmin counts the trials of the caller's last refresh
        runs = self._count_fmin_run()
        rstate = rstate or np.random.default_rng()
        stream = continue_stream(rstate, runs, self.stored) if runs else rstate
        self._store_domain(domain)
        house = Housekeeping(
            self.store, self._exp_key, queue_len=self.queue_len, min_queue=max_queue_len
        )
        pinned = f" --exp-key {self._exp_key}" if self._exp_key is not None else ""
        notice = NoWorkerNotice(
            self.store,
            self._exp_key,
            hint=f"`hyperfleet worker --trust-pickled{pinned}` on the same database "
            "(plain fmin's objective is pickled: only --trust-pickled workers run it)",
            pickled=self.space_name is None,
        )
        total = sys.maxsize if max_evals is None else max_evals
        progress = None
        if show_progressbar and max_evals is not None:  # a bar on stderr, as hyperopt's
            progress = SearchProgress(str(self._exp_key), total, bar=True)

        def on_tick(trials: HyperfleetTrials, counts: dict[TrialState, int]) -> None:
            notice.check()
            if progress is not None:
                best = rules.best_trial(trials.trials)
                progress.update(counts, None if best is None else best["result"]["loss"])

        loop = SearchLoop(
            self,
            domain,
            one_seed_per_id(algo, stream),
            stream,
            house,
            max_evals=total,
            timeout_s=timeout,
            loss_threshold=loss_threshold,
            early_stop_fn=early_stop_fn,
            on_tick=on_tick,
        )
        try:
            loop.run()
            if progress is not None:
                on_tick(self, self.state_counts())  # the bar ends where the search ended
        except StoreUnavailable as e:
            # a script's outage ends in the line that says what to do (it names pymongo's
            # error), not under pymongo's chained traceback of the last failed attempt
            raise e from None
        finally:
            if progress is not None:
                progress.close()
        if loop.cancelled:
            self._fmin_cancelled = True
        if return_argmin:
            if len(self.trials) == 0:
                raise Exception(  # hyperopt's own words and type
                    "There are no evaluation tasks, cannot return argmin of task losses."
                )
            return self.argmin
        if len(self) > 0:
            return space_eval(space, self.argmin)
        return None

    def _store_domain(self, domain: base.Domain) -> None:
        """The pickled domain as the experiment's ``FMinIter_Domain``, as ``FMinIter`` stores it
        (workers started with ``--trust-pickled`` unpickle and run it)."""
        from hyperopt.fmin import pickler

        self.attachments["FMinIter_Domain"] = pickler.dumps(domain)

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
        self.cache.reset()
        self.refresh()

    def trial_attachments(self, trial: dict[str, Any]) -> TrialAttachments:
        """A trial's attachments (GridFS), a dict-like view as stock ``MongoTrials`` offers;
        a missing name is a ``KeyError``."""
        return TrialAttachments(self.store, trial)

    @property
    def attachments(self) -> ExperimentAttachments:  # type: ignore[override]
        """The experiment's own files (``FMinIter_Domain``, fmin's run count), as stock
        ``MongoTrials.attachments`` offers them; every call rides out a server outage, and a
        replaced file is never missing for a moment."""
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
