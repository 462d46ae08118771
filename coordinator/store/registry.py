"""The worker registry: one row per worker, ``last_seen`` on the database clock.

Dead workers are found through data (a row ALIVE whose ``last_seen`` is old), never by asking
processes; a worker that exits cleanly marks its row STOPPED with the reason.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from coordinator.states import WorkerStatus
from coordinator.store.connection import retrying
from coordinator.store.encoding import utcnow
from coordinator.store.handles import StorePart

#: ``last_seen`` further ahead of the server's clock than this is not a sign of life
FUTURE_SLACK_S = 5.0


class WorkerRegistry(StorePart):
    """Part of :class:`~coordinator.store.mongo.TrialStore`; see :mod:`coordinator.store.base`."""

    @retrying
    def worker_heartbeat(self, info: dict[str, Any], current_tid: int | None) -> None:
        """Upsert this worker's row in ``workers`` with ``last_seen`` in server time."""
        self.workers.update_one(
            {"_id": info["id"]},
            {
                "$set": {**info, "current_tid": current_tid, "state": WorkerStatus.ALIVE.value},
                "$currentDate": {"last_seen": True},
                "$setOnInsert": {"started": utcnow()},
            },
            upsert=True,
        )

    @retrying
    def worker_stopped(self, worker_id: str, reason: str) -> None:
        self.workers.update_one(
            {"_id": worker_id},
            {
                "$set": {
                    "state": WorkerStatus.STOPPED.value,
                    "current_tid": None,
                    "stop_reason": reason,
                },
                "$currentDate": {"last_seen": True},
            },
        )

    @retrying
    def list_workers(self, *, alive_only: bool = True) -> list[dict[str, Any]]:
        """Rows of the ``workers`` registry (all, or only those not marked stopped), newest
        ``last_seen`` first; staleness is the caller's call (compare with ``server_time``)."""
        query = {"state": WorkerStatus.ALIVE.value} if alive_only else {}
        return list(self.workers.find(query, sort=[("last_seen", -1)]))

    @retrying
    def live_workers(self, max_age_s: float, exp_key: str | None = None) -> list[dict[str, Any]]:
        """Workers that heartbeated in the last ``max_age_s`` seconds (server time), and not in
        the future; with ``exp_key``, only those serving that experiment or any experiment."""
        now = self.mongo.server_time()
        since = now - dt.timedelta(seconds=max_age_s)
        # a row stamped ahead of the server's clock (a hand edit, another program's clock) is
        # no proof of life: it would count as alive for ever
        until = now + dt.timedelta(seconds=FUTURE_SLACK_S)
        query: dict[str, Any] = {
            "state": WorkerStatus.ALIVE.value,
            "last_seen": {"$gte": since, "$lte": until},
        }
        if exp_key is not None:
            query["exp_key"] = {"$in": [None, exp_key]}
        return list(self.workers.find(query))
