"""hyperopt's ``MongoTrials`` on pymongo 4, with an incremental refresh.

``hyperopt.fmin(fn, space, trials=HyperfleetTrials(...))`` works as with stock ``MongoTrials``
and the object offers the whole Trials API (``trials``, ``results``, ``losses()``,
``statuses()``, ``best_trial``, ``argmin``).

Stock ``refresh()`` downloads every trial of the experiment on every poll (O(n) per poll, tens of
milliseconds at a few hundred trials). Here finished trials are cached: each refresh reads the
unfinished trials (at most the queue plus the running ones) and the finished trials whose ``mtime``
(server time, set by every write of the store) is newer than what was already seen.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from bson import ObjectId
from hyperopt.mongoexp import MongoTrials

from coordinator.states import TrialState
from coordinator.store import TrialStore, connect

logger = logging.getLogger(__name__)

#: finished trials re-read around the newest ``mtime`` seen, to cover writes that commit late
MTIME_SLACK = dt.timedelta(seconds=2)
#: a full refresh every so often, as a safety net for the incremental one
FULL_REFRESH_EVERY_S = 60.0

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
        db: str = "hyperfleet",
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
        self._finished: dict[ObjectId, dict[str, Any]] = {}
        self._recent_ids: set[ObjectId] = set()
        self._newest_mtime: dt.datetime | None = None
        self._last_full = 0.0

    def refresh_tids(self, tids: Iterable[int] | None) -> None:
        # ``tids`` narrows stock hyperopt's refresh; here any explicit request is a full refresh
        if tids is not None or time.monotonic() - self._last_full > FULL_REFRESH_EVERY_S:
            self._reset_cache()
        base: dict[str, Any] = {} if self._exp_key is None else {"exp_key": self._exp_key}
        store: TrialStore = self.handle

        if self._newest_mtime is None:
            self._last_full = time.monotonic()
            changed = store.find_trials({**base, "state": {"$in": _VISIBLE_FINISHED}})
        else:
            since = self._newest_mtime - MTIME_SLACK
            changed = store.find_trials(
                {
                    **base,
                    "state": {"$in": _VISIBLE_FINISHED},
                    "mtime": {"$gte": since},
                    "_id": {"$nin": list(self._recent_ids)},
                }
            )
        for doc in changed:
            self._finished[doc["_id"]] = doc
        self._advance_mtime(changed)

        unfinished = store.find_trials({**base, "state": {"$in": _UNFINISHED}})
        for doc in unfinished:
            # a trial can only be unfinished if it was never seen finished (states never go back)
            self._finished.pop(doc["_id"], None)
        docs = list(self._finished.values()) + unfinished
        docs.sort(key=lambda d: d["tid"])
        self._trials = docs
        self._specs = [d["spec"] for d in docs]
        self._results = [d["result"] for d in docs]
        self._miscs = [d["misc"] for d in docs]

    def _advance_mtime(self, changed: list[dict[str, Any]]) -> None:
        stamps = [d["mtime"] for d in changed if d.get("mtime") is not None]
        if not stamps and self._newest_mtime is not None:
            return
        newest = max(stamps) if stamps else dt.datetime(1970, 1, 1)
        if self._newest_mtime is not None:
            newest = max(newest, self._newest_mtime)
        self._newest_mtime = newest
        window = newest - MTIME_SLACK
        self._recent_ids = {
            _id
            for _id, d in self._finished.items()
            if d.get("mtime") is not None and d["mtime"] >= window
        }

    def refresh(self) -> None:
        self.refresh_tids(None)

    # -- writes and counts ----------------------------------------------------------------------

    def _insert_trial_docs(self, docs: list[dict[str, Any]]) -> list[ObjectId]:
        for doc in docs:
            doc.setdefault("attempt", 0)
            doc.setdefault("attempts", 0)
            if self.space_name is not None:
                doc["space"] = self.space_name
        return self.handle.insert_many(docs)

    def count_by_state_unsynced(self, arg: int | Iterable[int]) -> int:
        self._maybe_poll()
        states = [arg] if isinstance(arg, int) else list(arg)
        for state in states:
            TrialState(state)  # raises ValueError on an unknown state, as hyperopt does
        return self.handle.count(self._exp_key, states)

    def _maybe_poll(self) -> None:
        if self.on_poll is None:
            return
        now = time.monotonic()
        if now - self._last_poll >= self.poll_every_s:
            self._last_poll = now
            self.on_poll(self)

    def new_trial_ids(self, n: int) -> list[int]:
        return self.handle.allocate_tids(n)

    def delete_all(self, cond: dict[str, Any] | None = None) -> None:
        cond = dict(cond or {})
        if self._exp_key:
            cond["exp_key"] = self._exp_key
        self.handle.delete_all(cond)
        self._reset_cache()
        self.refresh()

    # -- convenience ----------------------------------------------------------------------------

    def done_trials(self) -> list[dict[str, Any]]:
        """DONE trials with ``status == 'ok'``, best first."""
        ok = [
            t
            for t in self.trials
            if t["state"] == TrialState.DONE and t["result"].get("status") == "ok"
        ]
        return sorted(ok, key=lambda t: t["result"]["loss"])


def open_trials(uri: str, exp_key: str, db: str = "hyperfleet") -> HyperfleetTrials:
    """Open one experiment's trials for reading (e.g. in a notebook)."""
    return HyperfleetTrials(connect(uri, db), exp_key=exp_key)
