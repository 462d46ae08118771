"""Reads for viewers (the web dashboard): lean trial documents, whole or changed since a stamp.

A viewer keeps an experiment's trials in memory and asks only for what changed since its last
read (``mtime`` on the database clock, the ``(exp_key, mtime)`` index), so an open page costs the
database one small indexed query per refresh. The projection leaves out what no viewer draws:
hyperopt's ``spec``, a Keras result's ``history`` (it repeats ``epochs``), the attempt history
and the traceback (the trial page reads the whole document with ``get_trial``); it keeps
``misc`` (small), which the rules that judge a document read.
Readers never write.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from coordinator.store.connection import retrying
from coordinator.store.handles import StorePart

#: fields a viewer's trial list leaves out (see the module docstring)
_VIEW_EXCLUDED = ("spec", "result.history", "attempt_history", "error.traceback")


class TrialViews(StorePart):
    """Part of :class:`~coordinator.store.mongo.TrialStore`; see :mod:`coordinator.store.base`."""

    @retrying
    def view_trials(self, exp_key: str, since: dt.datetime | None = None) -> list[dict[str, Any]]:
        """Lean trial documents of ``exp_key`` (with ``epochs`` and ``mtime``), any order: all
        of them, or with ``since`` only those whose ``mtime`` is at or after it (server time;
        an indexed read, O(matches))."""
        query: dict[str, Any] = {"exp_key": exp_key}
        if since is not None:
            query["mtime"] = {"$gte": since}
        return list(self.jobs.find(query, projection=dict.fromkeys(_VIEW_EXCLUDED, 0)))
