"""One experiment's trials as the coordinator sees them, kept up to date at the cost of changes.

Every write to a trial stamps ``mtime`` with the database's clock (see :mod:`coordinator.store.
base`), so :meth:`TrialView.pull` reads only the trials of its experiment written since the newest
``mtime`` it has seen, minus ``REFRESH_OVERLAP_S`` (a write stamped just before the previous read
but committed just after it is still found); cost O(changes), whoever made them. Counts come
from the same cache. A full read every ``FULL_REFRESH_EVERY_S`` remains as a safety net for
writers that do not stamp ``mtime`` (e.g. a mongo-shell edit) and for trials deleted by other
processes.

Documents that cannot be used (:func:`coordinator.rules.trial_problem`: no ``misc``, no ``tid``,
a state ``"2"``, another search's parameters or space, ...) never reach the algorithm: the view,
the counts and the best trial skip them, each logged once; the housekeeping marks the search's
own queued or running ones ERROR (:meth:`TrialView.take_refused`).

The view imports neither hyperopt nor pymongo: it talks to the store contract only.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections import Counter
from collections.abc import Mapping
from typing import Any

from coordinator import rules
from coordinator.shown import shown
from coordinator.states import TrialState
from coordinator.store import Doc, DocId, TrialStoreBase, utcnow

logger = logging.getLogger(__name__)

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
#: after this long without any change read (running hyperfleet trials heartbeat every few
#: seconds, so this means nothing moves or only foreign writers do), the next read is a full one:
#: a write whose commit lagged its ``mtime`` by more than the overlap is found within seconds,
#: not at the next minute's full read, while a search waits for it
QUIET_FULL_REFRESH_S = 5.0

_EPOCH = dt.datetime(1970, 1, 1)
_UNFINISHED = (int(TrialState.NEW), int(TrialState.RUNNING))


def visible(doc: Doc) -> bool:
    """Whether hyperopt's ``Trials`` lists the trial: every state but ERROR, as stock
    ``MongoTrials`` (in-memory ``Trials`` also hides CANCEL)."""
    return doc.get("state") != int(TrialState.ERROR)


def _order(doc: Doc) -> tuple[int, Any]:
    return rules.tid_order(doc.get("tid"))


class TrialView:
    """The usable trials of ``exp_key`` (see the module docstring).

    ``space_name``: while a search of that named space runs (:meth:`use_labels` was called),
    documents of another space are refused too. :attr:`sorted` lists the visible trials in tid
    order (the lists hyperopt reads are built from it); :attr:`counts` counts every usable
    trial by state, ERROR included.
    """

    def __init__(
        self, store: TrialStoreBase, exp_key: str | None, space_name: str | None = None
    ) -> None:
        self.store = store
        self.exp_key = exp_key
        self.space_name = space_name
        #: the hyperparameter labels of the search being run (None: any document's)
        self._labels: frozenset[str] | None = None
        #: documents refused (by ``_id``): logged once; queued/running ones await quarantine
        self._refused: dict[DocId, str] = {}
        self._unkeyed_warned = False  #: a job with a sub-document _id was skipped
        self._to_quarantine: dict[DocId, tuple[Doc, str]] = {}
        self.reset()

    def reset(self) -> None:
        """Forget every trial read: the next :meth:`pull` reads them all."""
        #: every usable trial of the experiment read so far (ERROR ones too), by _id
        self.docs: dict[DocId, Doc] = {}
        self.counts: Counter[Any] = Counter()  #: states of ``docs``
        #: the visible trials in tid order and their positions: kept up to date as changes
        #: arrive, so a refresh costs O(changes) reads and no O(n log n) sort in Python
        self.sorted: list[Doc] = []
        self._pos: dict[DocId, int] = {}
        self._touched: dict[DocId, Doc] = {}  #: read but not yet in ``sorted``
        self._rebuild = True  #: ``sorted`` must be rebuilt from ``docs``
        self.max_int_tid = -1  #: the largest integer tid read (-1: none)
        self._watermark: dt.datetime | None = None  #: the newest ``mtime`` seen (server clock)
        self._server_offset: dt.timedelta | None = None  #: server clock - this one, roughly
        self.synced = False
        self._last_full = 0.0
        self._last_change = 0.0
        self.pulled_at = 0.0

    # -- reading --------------------------------------------------------------------------------

    def pull(self) -> None:
        """Bring :attr:`docs` and :attr:`counts` up to date: everything on the first call and
        every ``FULL_REFRESH_EVERY_S``, otherwise what was written since the watermark."""
        now = time.monotonic()
        quiet = min(now - self._last_change, now - self._last_full) > QUIET_FULL_REFRESH_S
        if not self.synced or quiet or now - self._last_full > FULL_REFRESH_EVERY_S:
            self.reset()
            self._server_offset = self.store.server_time() - utcnow()
            self._last_full = now
            docs = self.store.trials(self.exp_key)
            self.synced = True
        else:
            since = (self._watermark or _EPOCH) - dt.timedelta(seconds=REFRESH_OVERLAP_S)
            docs = self.store.changed_trials(self.exp_key, since)
        self.pulled_at = time.monotonic()
        if docs:
            self._last_change = self.pulled_at
        self.apply(docs)

    def apply(self, docs: list[Doc]) -> None:
        """Fold ``docs`` (read from the store, or just inserted by this process) into the view."""
        offset = self._server_offset or dt.timedelta(0)
        horizon = utcnow() + offset + dt.timedelta(seconds=FUTURE_SLACK_S)
        for doc in docs:
            mtime = doc.get("mtime")
            if isinstance(mtime, dt.datetime) and mtime <= horizon:
                self._watermark = mtime if self._watermark is None else max(self._watermark, mtime)
            if isinstance(doc.get("_id"), Mapping | list):  # junk no reader can key by
                if not self._unkeyed_warned:
                    logger.warning(
                        "search %r: skipping job documents whose _id is a %s, not an ObjectId "
                        "(written by something else than hyperfleet or hyperopt)",
                        self.exp_key,
                        type(doc.get("_id")).__name__,
                    )
                    self._unkeyed_warned = True
                continue
            old = self.docs.get(doc["_id"])
            if old is not None:
                if old.get("version") == doc.get("version") and old.get("mtime") == mtime:
                    continue  # re-read in the overlap window, unchanged
                self.counts[old.get("state")] -= 1
            problem = self._problem(doc)
            if problem is not None:
                self._refuse(doc, problem, was_read=old is not None)
                continue
            self.docs[doc["_id"]] = doc
            self.counts[doc.get("state")] += 1
            self._touched[doc["_id"]] = doc
            tid = doc.get("tid")
            if isinstance(tid, int) and not isinstance(tid, bool):
                self.max_int_tid = max(self.max_int_tid, tid)

    def publish(self) -> bool:
        """Fold the trials read since the last call into :attr:`sorted`; whether it changed."""
        if not self._touched and not self._rebuild:
            return False
        touched, self._touched = self._touched, {}
        new: list[Doc] = []
        rebuild, self._rebuild = self._rebuild, False
        for _id, doc in touched.items():
            pos = self._pos.get(_id)
            if pos is None:
                if visible(doc):
                    new.append(doc)
            elif visible(doc) and _order(doc) == _order(self.sorted[pos]):
                self.sorted[pos] = doc  # the usual change: a state or result, in place
            else:
                rebuild = True  # hidden now (ERROR) or its tid changed: rare
        new.sort(key=_order)
        if rebuild or (new and self.sorted and _order(new[0]) <= _order(self.sorted[-1])):
            self.sorted = sorted((d for d in self.docs.values() if visible(d)), key=_order)
            self._pos = {d["_id"]: i for i, d in enumerate(self.sorted)}
        else:  # the usual case: new trials have the newest tids
            for doc in new:
                self._pos[doc["_id"]] = len(self.sorted)
                self.sorted.append(doc)
        return True

    # -- what the view refuses ------------------------------------------------------------------

    def use_labels(self, labels: frozenset[str]) -> None:
        """Run a search whose parameters are ``labels``: from now on the view also refuses
        documents with other parameters (its algorithm could not read them)."""
        if labels != self._labels:
            self._labels = labels
            self.synced = False  # re-read everything under the new rule

    def _problem(self, doc: Doc) -> str | None:
        """Why this view cannot use ``doc`` (:func:`rules.trial_problem`; while it runs a search
        of a named space, another space's document too), or ``None``."""
        searching = self._labels is not None
        return rules.trial_problem(doc, self._labels, self.space_name if searching else None)

    def _refuse(self, doc: Doc, problem: str, *, was_read: bool) -> None:
        _id = doc["_id"]
        if was_read:  # usable before, refused now (e.g. rewritten by hand): out of the lists
            del self.docs[_id]
            self._touched.pop(_id, None)
            self._rebuild = True
        if self._refused.get(_id) != problem:
            logger.warning(
                "search %r: skipping job document %s (tid %s): %s",
                self.exp_key,
                shown(_id),
                shown(doc.get("tid")),
                problem,
            )
            self._refused[_id] = problem
            if doc.get("state") in _UNFINISHED:
                self._to_quarantine[_id] = (doc, problem)

    def take_refused(self) -> list[tuple[Doc, str]]:
        """Queued or running documents this view refused since the last call, with why: the
        housekeeping hands them to ``store.quarantine_trial`` (ERROR if the experiment is
        hyperfleet's, left alone otherwise), so no worker or count waits on them."""
        taken, self._to_quarantine = list(self._to_quarantine.values()), {}
        return taken

    # -- counts ---------------------------------------------------------------------------------

    @property
    def stored(self) -> int:
        """How many usable trials of the experiment the view holds, in every state."""
        return len(self.docs)

    def count(self, *states: TrialState | int) -> int:
        return sum(self.counts[int(s)] for s in set(states))

    def state_counts(self) -> dict[TrialState, int]:
        """Usable trials by state as of the last :meth:`pull`."""
        counts = dict.fromkeys(TrialState, 0)
        for state, n in self.counts.items():
            if state in TrialState._value2member_map_:
                counts[TrialState(state)] = n
        return counts
