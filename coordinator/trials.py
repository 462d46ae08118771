"""hyperopt's ``MongoTrials`` on pymongo 4, with an incremental refresh.

``hyperopt.fmin(fn, space, trials=HyperfleetTrials(...))`` works as with stock ``MongoTrials``
and the object offers the whole Trials API (``trials``, ``results``, ``losses()``,
``statuses()``, ``best_trial``, ``argmin``).

Stock ``refresh()`` downloads every trial of the experiment on every poll (O(n) per poll, tens of
milliseconds at a few hundred trials). Here finished trials are cached: each refresh reads the
unfinished trials (at most the queue plus the running ones) and, by ``_id``, those trials of the
previous refresh's unfinished ones that have finished since (states only move forward). A full
refresh every ``FULL_REFRESH_EVERY_S`` also picks up what that cannot see (finished trials
inserted or edited by other programs). Counts of finished states come from the same cache, since
counting thousands of matches in the database is O(n) per call; counts of unfinished ones too when
asked within ``COUNTS_FROM_REFRESH_S`` of a refresh, as fmin does.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from hyperopt.mongoexp import MongoTrials

from coordinator import defaults
from coordinator.errors import ConfigError
from coordinator.states import TrialState
from coordinator.store import DocId, TrialStore, connect, utcnow

logger = logging.getLogger(__name__)

#: a full refresh every so often, as a safety net for the incremental one
FULL_REFRESH_EVERY_S = 60.0
#: trial ids reserved from the database counter at a time
TID_BLOCK = 32
#: how often queueing checks whether the search was cancelled
CANCEL_CHECK_S = 0.25
#: counts asked for this soon after a refresh come from it (fmin counts right after refreshing)
COUNTS_FROM_REFRESH_S = 0.01

_UNFINISHED = [int(TrialState.NEW), int(TrialState.RUNNING)]
_VISIBLE_FINISHED = [int(TrialState.DONE), int(TrialState.CANCEL)]


class HyperfleetTrials(MongoTrials):
    """``MongoTrials`` over a :class:`~coordinator.store.TrialStore`.

    ``arg`` is a ``TrialStore`` or a MongoDB URI (then ``db`` names the database). ``space_name``
    marks the trials this object inserts as belonging to a named search space, so untrusted
    workers may run them. ``on_poll`` is called (at most every ``poll_every_s``) from the polls
    that fmin makes while waiting, including its final wait: the coordinator reaps dead workers'
    trials and checks for cancellation there.
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
        store = arg if isinstance(arg, TrialStore) else connect(arg, db)
        self.space_name = space_name
        self.on_poll = on_poll
        self.poll_every_s = poll_every_s
        self._last_poll = 0.0
        self._fmin_cancelled = False
        self._tid_pool: list[int] = []
        #: a refresh asked for this soon after the previous one reuses it (0: never)
        self.refresh_reuse_s = 0.0
        self._reset_cache()
        super().__init__(store, exp_key=exp_key, refresh=refresh)

    @property
    def store(self) -> TrialStore:
        return self.handle

    def view(
        self, exp_key: str | None = None, cmd: Any = None, workdir: Any = None, refresh: bool = True
    ) -> HyperfleetTrials:
        return self.__class__(
            self.handle,
            exp_key=self._exp_key if exp_key is None else exp_key,
            space_name=self.space_name,
            refresh=refresh,
        )

    # -- refresh --------------------------------------------------------------------------------

    def _reset_cache(self) -> None:
        self._finished: dict[DocId, dict[str, Any]] = {}
        #: the finished trials sorted by tid, their hyperopt columns and counts by state: kept
        #: up to date as trials finish, so a refresh costs O(changes), not O(n) in Python
        self._fin: list[dict[str, Any]] = []
        self._fin_columns: tuple[list[Any], list[Any], list[Any]] = ([], [], [])
        self._fin_counts: Counter[int] = Counter()
        self._watched: set[DocId] = set()  #: ids that were NEW or RUNNING at the last refresh
        self._synced = False
        self._last_full = 0.0
        self._refreshed_at = 0.0

    def refresh_tids(self, tids: Iterable[int] | None) -> None:
        # ``tids`` narrows stock hyperopt's refresh; here any explicit request is a full refresh
        if tids is not None or time.monotonic() - self._last_full > FULL_REFRESH_EVERY_S:
            self._reset_cache()
        elif self._synced and time.monotonic() - self._refreshed_at < self.refresh_reuse_s:
            # fmin refreshes after inserting and again before its next suggestion, a millisecond
            # later: the second would read the same documents (the coordinator opts in)
            return
        store: TrialStore = self.handle

        # unfinished first: a trial that finishes between the two reads is then seen in one
        unfinished = store.unfinished_trials(self._exp_key)
        unfinished_ids = {doc["_id"] for doc in unfinished}
        if not self._synced:
            self._last_full = time.monotonic()
            finished = store.trials(self._exp_key, _VISIBLE_FINISHED)
            self._synced = True
        else:
            # states only move forward, so a watched trial missing from ``unfinished`` has
            # finished: fetch just those, by ``_id`` (an indexed read, unlike a state scan)
            gone = [i for i in self._watched if i not in unfinished_ids]
            finished = store.trials_by_ids(gone, _VISIBLE_FINISHED) if gone else []
        if finished:
            self._add_finished(finished)
        unfinished = [doc for doc in unfinished if doc["_id"] not in self._finished]
        unfinished.sort(key=lambda d: d["tid"])
        self._watched = {doc["_id"] for doc in unfinished}
        self._unfinished_states = [doc["state"] for doc in unfinished]
        self._refreshed_at = time.monotonic()
        specs, results, miscs = self._fin_columns
        if not unfinished or not self._fin or unfinished[0]["tid"] > self._fin[-1]["tid"]:
            # the usual case: queued and running trials are the newest, so lists concatenate
            self._trials = self._fin + unfinished
            self._specs = specs + [d["spec"] for d in unfinished]
            self._results = results + [d["result"] for d in unfinished]
            self._miscs = miscs + [d["misc"] for d in unfinished]
        else:
            docs = sorted(self._fin + unfinished, key=lambda d: d["tid"])
            self._trials = docs
            self._specs = [d["spec"] for d in docs]
            self._results = [d["result"] for d in docs]
            self._miscs = [d["misc"] for d in docs]

    def _add_finished(self, docs: list[dict[str, Any]]) -> None:
        docs = sorted(docs, key=lambda d: d["tid"])
        in_order = not self._fin or docs[0]["tid"] > self._fin[-1]["tid"]
        if in_order and not any(d["_id"] in self._finished for d in docs):
            self._fin.extend(docs)
            for column, key in zip(self._fin_columns, ("spec", "result", "misc"), strict=True):
                column.extend(d[key] for d in docs)
            for doc in docs:
                self._finished[doc["_id"]] = doc
                self._fin_counts[doc["state"]] += 1
            return
        for doc in docs:  # out of order or seen again: rebuild (rare)
            self._finished[doc["_id"]] = doc
        self._fin = sorted(self._finished.values(), key=lambda d: d["tid"])
        self._fin_columns = (
            [d["spec"] for d in self._fin],
            [d["result"] for d in self._fin],
            [d["misc"] for d in self._fin],
        )
        self._fin_counts = Counter(d["state"] for d in self._fin)

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
        return self.handle.cancel_requested(self._exp_key)

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
        ids = self.handle.insert_trials(docs)
        self._refreshed_at = 0.0  # the next refresh must read them: never reuse across an insert
        return ids

    def count_by_state_unsynced(self, arg: int | Iterable[int]) -> int:
        self._maybe_poll()
        states = [arg] if isinstance(arg, int) else list(arg)
        for state in states:
            TrialState(state)  # raises ValueError on an unknown state, as hyperopt does
        if not self._synced:
            return self.handle.count(self._exp_key, states)
        # finished trials as of the last refresh (fmin refreshes just before it counts them)
        cached = [s for s in states if s in _VISIBLE_FINISHED]
        n = sum(self._fin_counts[state] for state in cached)
        live = [s for s in states if s not in _VISIBLE_FINISHED]
        if live and time.monotonic() - self._refreshed_at < COUNTS_FROM_REFRESH_S:
            n += sum(1 for state in self._unfinished_states if state in live)
            live = [s for s in live if s not in _UNFINISHED]
        return n + (self.handle.count(self._exp_key, live) if live else 0)

    def state_counts(self) -> dict[TrialState, int]:
        """Trials by state as of the last refresh (ERROR, which refresh hides, is counted in the
        database): no O(n) count or aggregate in the database, unlike ``store.count_by_state``."""
        if not self._synced:
            return self.handle.count_by_state(self._exp_key)
        counts = dict.fromkeys(TrialState, 0)
        for state, n in self._fin_counts.items():
            counts[TrialState(state)] = n
        for state in self._unfinished_states:
            counts[TrialState(state)] += 1
        counts[TrialState.ERROR] = self.handle.count(self._exp_key, [int(TrialState.ERROR)])
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
        ids stay unique across the database, and unused ones are simply never seen."""
        if len(self._tid_pool) < n:
            self._tid_pool.extend(self.handle.allocate_tids(max(n, TID_BLOCK)))
        ids, self._tid_pool = self._tid_pool[:n], self._tid_pool[n:]
        return ids

    def delete_all(self, cond: dict[str, Any] | None = None) -> None:
        self.handle.delete_all(cond, exp_key=self._exp_key or None)
        self._reset_cache()
        self.refresh()


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
